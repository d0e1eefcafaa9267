"""The plan definitions suite (tests/test_plan_definitions.py), run unchanged against a Redis
Cluster: each shard's plans hash and outbox share its slot, so plan.lua runs there as on one
node."""

from tests.test_plan_definitions import *  # noqa: F403
