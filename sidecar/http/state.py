"""Typed ``web.AppKey``s for what the app factory puts on the application."""

from __future__ import annotations

from aiohttp import web

from sidecar.billing.context import Billing
from sidecar.billing.worker import BillingWorker
from sidecar.gate.decision import Gate
from sidecar.ledger.apikeys import ApiKeys
from sidecar.ledger.audit import AuditLog
from sidecar.ledger.calls import (
    Ledger,
)
from sidecar.ledger.plans import Plans
from sidecar.ledger.portal import PortalSessions
from sidecar.ledger.token_cache import TokenCache
from sidecar.ledger.tokens import Tokens
from sidecar.persistence.writer import OutboxWriter
from sidecar.redis.client import RedisClient
from sidecar.runtime.writer_runner import WriterProcess
from sidecar.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
LEDGER = web.AppKey("ledger", Ledger)
API_KEYS = web.AppKey("api_keys", ApiKeys)
PLANS = web.AppKey("plans", Plans)
GATE = web.AppKey("gate", Gate)
TOKENS = web.AppKey("tokens", Tokens)
TOKEN_CACHE = web.AppKey("token_cache", TokenCache)
AUDIT = web.AppKey("audit", AuditLog)
PORTAL_SESSIONS = web.AppKey("portal_sessions", PortalSessions)
WRITER = web.AppKey("writer", OutboxWriter)
REDIS_URL = web.AppKey("redis_url", str)
# When the Redis is this `serve`'s embedded one (its process, or its supervisor's): a client
# of it that does not retry, for GET /healthz (the ledger's would ride out a restart).
EMBEDDED_REDIS: web.AppKey[RedisClient] = web.AppKey("embedded_redis")
WRITER_PROCESS = web.AppKey("writer_process", WriterProcess)
BILLING = web.AppKey("billing", Billing)
BILLING_WORKER = web.AppKey("billing_worker", BillingWorker)
