"""Adapters: the domain's connection to Kafka and Postgres.  They depend on the domain, never the reverse."""
