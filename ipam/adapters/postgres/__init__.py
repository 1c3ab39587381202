"""Postgres: migrations, the exactly-once projection, partition ownership records and reads."""
