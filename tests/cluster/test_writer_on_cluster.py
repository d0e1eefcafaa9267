"""The outbox writer suite (tests/persistence/test_writer.py) against a Redis Cluster, on
SQLite and PostgreSQL: the writer's reads, acknowledgements, claims, dead letters and trims are
all on keys of one shard, one slot."""

from tests.persistence.conftest import database_url, engine, pg_database  # noqa: F401
from tests.persistence.test_writer import *  # noqa: F403
