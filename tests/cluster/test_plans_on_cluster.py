"""The plan boundary suite (tests/http/test_plan_boundaries.py), 150 concurrent checks, two
sidecars and the sweeper at a boundary, run unchanged against a Redis Cluster."""

from tests.http.test_plan_boundaries import *  # noqa: F403
