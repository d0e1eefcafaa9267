"""The ledger's laws (tests/test_ledger_properties.py, hypothesis) against a Redis Cluster."""

from tests.test_ledger_properties import *  # noqa: F403
