"""The single-node ledger suite (tests/test_ledger.py), run unchanged against a Redis Cluster:
every script's keys are in one slot, so the same calls give the same answers."""

from tests.test_ledger import *  # noqa: F403
