"""The pure domain: address arithmetic, commands, events and the deciders.

Nothing in this package performs I/O or knows about Kafka, Postgres or HTTP; the
import-linter contract in pyproject.toml enforces that.
"""
