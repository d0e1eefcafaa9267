"""The proxy-facing decision: a request's canonical path, its price from the route rules, and
whether it may go ahead (shared by every proxy mode and /v1/check)."""
