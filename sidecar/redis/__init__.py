"""Talking to Redis: the client the sidecar builds, the lean hot-path connection, the
auto-pipeline, the circuit breaker, and the private redis-server child of ``make run`` and the
tests. No ledger logic: that is sidecar/ledger/."""
