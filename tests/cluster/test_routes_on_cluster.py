"""The HTTP API suite (tests/http/test_routes.py), run unchanged against a Redis Cluster."""

from tests.http.test_routes import *  # noqa: F403
