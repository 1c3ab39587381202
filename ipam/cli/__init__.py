"""The ``ipam`` command: run the service, operate it, and drive the REST API (``main``)."""

from . import operations, reservations, resources  # noqa: F401 (each adds its commands to main)
from .base import main

__all__ = ["main"]
