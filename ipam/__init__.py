"""ipam: event-sourced MAC and IP address management for KubeVirt virtual machines."""

__version__ = "0.1.0"
