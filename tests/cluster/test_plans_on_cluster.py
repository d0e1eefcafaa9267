"""The plans suite (tests/test_plans.py), run unchanged against a Redis Cluster: each shard's
plans hash and outbox share its slot, so plan.lua runs there as on one node."""

from tests.test_plans import *  # noqa: F403
