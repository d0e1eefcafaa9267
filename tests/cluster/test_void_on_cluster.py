"""The voids suite (tests/test_void.py), run unchanged against a Redis Cluster: a void's keys
(the idempotency and usage records) are in the account's slot, and its record read goes to it."""

from tests.test_void import *  # noqa: F403
