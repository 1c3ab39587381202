"""Servers for development and tests, started by ipam when none is configured: the local broker (Tansu)
and an embedded PostgreSQL.  Production runs on the platform's Apache Kafka and Postgres."""

from .broker import BrokerAddressInUse, LocalBroker, started_here
from .postgres import EmbeddedPostgres, PostgresAddressInUse, ThrowawayPostgres, client_binary, server_version
from .processes import free_port, wait_port

__all__ = ["BrokerAddressInUse", "LocalBroker", "EmbeddedPostgres", "PostgresAddressInUse", "ThrowawayPostgres",
           "client_binary", "server_version", "free_port", "wait_port", "started_here"]
