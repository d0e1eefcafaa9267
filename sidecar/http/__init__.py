"""The HTTP API: app factory, routes, request schemas and error mapping."""
