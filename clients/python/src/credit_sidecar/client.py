"""The clients' public module: :class:`Client` (sync, in sync_client.py) and :class:`AsyncClient`
(async_client.py), on httpx, with the same calls; :class:`Holding` and ``shielded`` (holding.py).

Every call: the compatibility check on first use (``/openapi.json``), then up to
``max_attempts`` attempts, each within ``timeout`` seconds and all within ``deadline``; an
attempt is repeated only after a connection error, a timeout or a 502/503/504, and only when
that is safe (the call's idempotency key, reused, makes a repeat a replay; a call without one
is repeated only if its request never left). A 4xx is never repeated.
"""

from credit_sidecar.async_client import AsyncClient
from credit_sidecar.holding import Holding, shielded
from credit_sidecar.sync_client import Client

__all__ = ["AsyncClient", "Client", "Holding", "shielded"]
