"""The spending-limit suite (tests/http/test_spend_limits.py), 200 concurrent checks against
one limit included, run unchanged against a Redis Cluster."""

from tests.http.test_spend_limits import *  # noqa: F403
