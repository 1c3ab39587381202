"""The CNI IPAM plugin ``ipam-cni`` (see ``plugin``), and how the DaemonSet puts it on a node.

Everything the plugin imports is in the standard library (an import-linter contract keeps it so),
because it runs on the node from a zipapp, not in ipam's image."""

from .plugin import main

__all__ = ["main"]
