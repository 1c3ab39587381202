"""Roles: the long-running parts of the service (allocator, projector, API), composed by ipam.service."""
