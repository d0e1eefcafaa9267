"""The sidecar's settings in one typed place: ``SIDECAR_*`` env vars and an optional TOML file.

The file is named by ``SIDECAR_CONFIG``; environment variables override it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sidecar.asciiint import parse_ascii_int
from sidecar.runtime.datadir import private_dir


class Settings(BaseSettings):
    """Everything the sidecar can be told. Defaults give a working single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="SIDECAR_", extra="forbid")

    listen: str = Field("127.0.0.1:8080", description="host:port the HTTP API binds to")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="HTTP worker processes of `serve` (SO_REUSEPORT), e.g. one per core",
    )
    reuse_port: bool = Field(
        False, description="bind with SO_REUSEPORT (set by `serve --workers` for its workers)"
    )
    background: bool = Field(
        True,
        description="run the expiry sweeper and the billing worker in this process (`serve "
        "--workers` runs them in one worker only)",
    )
    redis_url: str | None = Field(
        None, description="redis:// or unix:// URL; unset = start a private embedded server"
    )
    embedded_redis: bool = Field(
        False,
        description="the Redis at SIDECAR_REDIS_URL is `serve`'s embedded one (set by `serve "
        "--workers` for its workers): GET /healthz fails while it is down",
    )
    redis_deadline_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="how long a Redis call may take, retries included, before it fails (503, "
        "or the failure policy); keep the proxy's auth timeout above it. Redis refusing "
        "connections fails a call at once, whatever this is",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the SQL ledger; unset = SQLite file in the data dir"
    )
    database_pool_size: int = Field(
        5,
        ge=1,
        le=1000,
        description="PostgreSQL connections each engine keeps open (one engine per process: "
        "an HTTP worker's billing store, the writer); SQLite ignores it",
    )
    database_max_overflow: int = Field(
        5,
        ge=0,
        le=1000,
        description="PostgreSQL connections an engine may open beyond the pool size under "
        "load (closed again when returned); SQLite ignores it",
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin API; unset = generated into the data dir"
    )
    service_token: SecretStr | None = Field(
        None, description="Bearer token of the check API; unset = generated into the data dir"
    )
    data_dir: Path = Field(Path(".data"), description="embedded Redis data, SQLite file, tokens")
    shards: int = Field(1, ge=1, le=16384, description="outbox shards; fixed per deployment")
    retention_s: int = Field(
        86400,
        ge=1,
        le=10 * 366 * 86400,
        description="how long idempotency and usage (refund) records are kept",
    )
    hold_ttl_s: int = Field(900, ge=1, le=366 * 86400, description="default TTL of a hold")
    sweep_interval_s: float = Field(5.0, gt=0, description="period of the expiry sweep")
    redis_server_bin: str | None = Field(
        None, description="redis-server/valkey-server binary for the embedded server"
    )
    embedded_appendfsync: Literal["always", "everysec", "no"] = "everysec"
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="`serve` closes (408) a connection that has not sent a complete request "
        "head within this of connecting, or of its first byte after a response",
    )
    http_body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="`serve` closes (408) a connection whose request body has not arrived "
        "within this of its head",
    )
    http_keepalive_timeout_s: float = Field(
        75.0,
        gt=0,
        le=86400,
        description="`serve` closes a keep-alive connection idle for this long (keep it above "
        "the proxies' idle timeouts of their connections to the sidecar)",
    )
    http_max_connections: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="open connections per `serve` process; beyond it a new one replaces the "
        "one waiting longest for its request head, else the longest idle one, else is "
        "answered 503 and closed",
    )
    http_large_body_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        le=4 * 1024 * 1024 * 1024,
        description="`serve`: bytes of request bodies above 64 KiB (Stripe's webhooks) read at "
        "once per process; a body that would pass it is answered 503 with Retry-After before "
        "it is read (at least one body of the route's own bound is always let in)",
    )
    access_log: bool = Field(False, description="log every request (off: keeps the hot path lean)")
    pricing_file: Path | None = Field(
        None, description="TOML route-cost rules; unset = every route costs 1"
    )
    request_id_header: str = Field(
        "X-Request-Id", description="proxy header whose value is the idempotency key"
    )
    trust_cost_header: bool = Field(
        False, description="honour X-Credits-Cost from the proxy (only if the proxy is trusted)"
    )
    trust_dry_run_header: bool = Field(
        False,
        description="honour X-Credits-Dry-Run: 1 from the proxy: answer what the check would "
        "get, changing nothing (only if the proxy is trusted)",
    )
    failure_policy: Literal["fail_closed", "fail_open"] = Field(
        "fail_closed", description="proxy auth when Redis is unreachable: 503, or allow and count"
    )
    shadow: bool = Field(
        False,
        description="evaluate and record, but never deny a check (rollout): a refusal is let "
        "through uncharged, the proxy modes answer 200 with X-Credits-Shadow-Status, POST "
        "/v1/check answers allowed with charged: false and the refusal under `shadow`",
    )
    proxy_replay_window_s: int = Field(
        300,
        ge=1,
        le=10 * 366 * 86400,
        description="proxy modes: how long a request id answers a retry of the same request "
        "(key, method, URI, cost) as a replay, charged once; any other request with that id is "
        "a conflict (409). Capped at retention_s; refunds are unaffected. A check answered 503 "
        "whose reply was lost is voided only while its record lasts: keep this well above "
        "SIDECAR_REDIS_DEADLINE_S plus the Redis outages you expect",
    )
    redis_deadline_margin_ms: int = Field(
        500,
        ge=0,
        le=60_000,
        description="a script refuses a call this long before the caller gives up on it, so "
        "an answered 503 was never charged: covers clock skew between sidecar hosts and Redis "
        "plus a reply's way back (keep clocks NTP-synced)",
    )
    void_queue_max: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="checks answered 503 whose call may still have charged are voided once "
        "Redis answers again (refunded unless a retry got its 200); at most this many wait in "
        "memory per process (more are logged and dropped: those charges stay). A process that "
        "dies loses its pending voids",
    )
    writer: Literal["process", "inline", "off"] = Field(
        "process",
        description="the outbox → SQL writer of `serve`: a child process (own core), on the "
        "event loop, or off (run `credit-sidecar writer` yourself)",
    )
    writer_batch_size: int = Field(5000, ge=1, le=10000, description="outbox entries per SQL txn")
    writer_lease_ms: int = Field(
        10_000, ge=100, le=600_000, description="a dead writer's shards are taken over after this"
    )
    writer_linger_ms: int = Field(
        100,
        ge=0,
        le=10_000,
        description="once caught up, the writer waits this long for the next batch to gather "
        "(fewer, larger SQL commits: less CPU taken from the hot path; adds this to the lag)",
    )
    writer_max_attempts: int = Field(
        5, ge=1, le=1000, description="tries before an entry goes to the dead-letter stream"
    )

    stripe_api_key: SecretStr | None = Field(
        None, description="Stripe secret key (sk_...); unset = Checkout and auto top-up off"
    )
    stripe_api_base: str | None = Field(
        None, description="Stripe API base URL override (stripe-mock, tests); unset = Stripe"
    )
    stripe_webhook_secrets: SecretStr | None = Field(
        None,
        description="webhook endpoint secrets (whsec_...), comma-separated: several during "
        "a rotation; unset = the webhook endpoint refuses everything",
    )
    stripe_webhook_tolerance_s: int = Field(
        300, ge=1, le=86400, description="max age (and max future skew) of a webhook signature"
    )
    stripe_webhook_max_bytes: int = Field(
        5 * 1024 * 1024,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="the largest Stripe webhook body accepted (Stripe documents no limit; "
        "its events are usually a few KiB, some hundreds); larger ones get 413. Other routes "
        "take at most 64 KiB",
    )
    billing_worker: Literal["inline", "off"] = Field(
        "inline",
        description="the Stripe event / notification worker of `serve`: on its event loop, or "
        "off (run `credit-sidecar worker` yourself)",
    )
    refund_policy: Literal["revoke_unspent", "allow_negative", "flag"] = Field(
        "revoke_unspent",
        description="on a Stripe refund or dispute: take back the purchase's unspent credits, "
        "take back all of them (the balance may go negative), or only record it",
    )
    auto_topup_cooldown_s: int = Field(
        600, ge=0, le=366 * 86400, description="min time between two auto top-up charges"
    )
    auto_topup_max_failures: int = Field(
        3, ge=1, le=100, description="failed auto top-ups in a row before it is paused"
    )
    auto_topup_pending_timeout_s: int = Field(
        3600,
        ge=60,
        le=30 * 86400,
        description="an auto top-up charge still processing or awaiting action after this "
        "long is looked up at Stripe, canceled if it can be, and its slot freed",
    )
    auto_topup_action_url: str | None = Field(
        None,
        pattern=r"^https?://[!-~]+$",
        max_length=2048,
        description="where Stripe Checkout sends a customer back after paying the link an "
        "auto top-up that needs them (authentication) creates; unset = no link is made, the "
        "notification only says the customer must act",
    )
    stripe_invoices: bool = Field(
        False,
        description="Checkout creates an invoice for each purchase (invoice_creation; Stripe "
        "emails it, and charges its fee for invoices)",
    )
    stripe_automatic_tax: bool = Field(
        False,
        description="Checkout computes tax with Stripe Tax (automatic_tax; the customer's "
        "address is collected and saved); needs Stripe Tax set up in the dashboard",
    )
    notify_max_attempts: int = Field(
        8, ge=1, le=50, description="tries of a low-balance webhook before it is given up"
    )
    notify_timeout_s: float = Field(
        10.0, gt=0, le=120, description="time one low-balance webhook attempt may take"
    )
    notify_concurrency: int = Field(
        32, ge=1, le=1000, description="low-balance webhooks in flight at once (per worker)"
    )
    notify_per_endpoint: int = Field(
        2,
        ge=1,
        le=100,
        description="low-balance webhooks in flight at once to one endpoint URL (per worker): "
        "an endpoint that never answers holds at most this many slots",
    )
    notify_per_host: int = Field(
        8,
        ge=1,
        le=1000,
        description="low-balance webhooks in flight at once to one host, all its endpoints "
        "together (per worker): keep it below notify_concurrency so a host that never "
        "answers leaves slots for the others",
    )
    notify_allow_private: bool = Field(
        False,
        description="let low-balance webhooks reach loopback, private, link-local, CGNAT, "
        "multicast and reserved addresses (tests, on-premises endpoints); off = refused when "
        "the URL is saved and, after DNS, when it is sent",
    )
    billing_retention_s: int = Field(
        30 * 86400,
        ge=3600,
        le=10 * 366 * 86400,
        description="how long delivered and given-up low-balance webhooks and finished auto "
        "top-up trigger events are kept in SQL (the billing worker prunes them)",
    )
    event_max_attempts: int = Field(
        8, ge=1, le=100, description="tries of a Stripe event before it is a dead letter"
    )
    metrics_token: SecretStr | None = Field(
        None,
        min_length=16,
        description="bearer token GET /metrics requires; unset = /metrics is open",
    )
    ready_max_lag_s: float = Field(
        60.0,
        gt=0,
        description="GET /readyz: not ready while the writer's lag (the age of the oldest entry "
        "not yet in SQL; 0 when all is written) exceeds this, whatever SQL's state",
    )
    outbox_alert_entries: int = Field(
        100_000,
        ge=1,
        le=1_000_000_000,
        description="warn (log line, metric credit_sidecar_outbox_alert) when this many outbox "
        "entries are not yet in SQL (each holds Redis memory until written)",
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="log lines as JSON or text; auto = text on a terminal, else JSON"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the least severe log records written"
    )
    shutdown_drain_s: float = Field(
        5.0,
        ge=0,
        le=600,
        description="on SIGTERM, how long `serve` waits for the writer to write the outbox to "
        "SQL before stopping it (what is left is written at the next start)",
    )

    # -- the customer portal (docs/portal.md) --
    portal_url: str | None = Field(
        None,
        description="the portal's public base URL (e.g. https://billing.example.com): the "
        "start of every portal session's URL; unset = the scheme and host the session's "
        "request came to (right when the app calls the sidecar at the address its customers "
        "reach, wrong behind a proxy)",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
    )
    portal_link_ttl_s: int = Field(
        300, ge=10, le=3600, description="how long a portal session's link may be opened (once)"
    )
    portal_session_ttl_s: int = Field(
        3600,
        ge=60,
        le=7 * 86400,
        description="how long a portal session lasts once its link was opened",
    )
    portal_max_keys: int = Field(
        20,
        ge=0,
        le=1000,
        description="a customer may create API keys in the portal while the account has fewer "
        "active ones than this (0: never)",
    )
    portal_product_name: str = Field(
        "Credits", min_length=1, max_length=80, description="the name the portal shows"
    )
    portal_logo_url: str | None = Field(
        None,
        pattern=r"^https://[^\s]+$",
        description="an https URL of the logo the portal shows (its origin is allowed in the "
        "page's img-src)",
    )
    portal_accent_color: str = Field(
        "#2563eb", pattern=r"^#[0-9a-fA-F]{6}$", description="the portal's accent colour, #rrggbb"
    )
    portal_support_url: str | None = Field(
        None,
        pattern=r"^(https?://|mailto:)[^\s]+$",
        description="where the portal's Help link goes (https:// or mailto:)",
    )
    portal_frame_ancestors: str | None = Field(
        None,
        pattern=r"^(https?://[A-Za-z0-9*.-]+(:[0-9]+)?)( https?://[A-Za-z0-9*.-]+(:[0-9]+)?)*$",
        description="origins allowed to embed the portal in an iframe, space separated "
        "(https://app.example.com); unset = not framable. Set, the session cookie is "
        "SameSite=None; Secure; Partitioned so it is sent inside the cross-site frame",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("SIDECAR_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        try:
            parse_ascii_int(port, 1, 65535)
        except ValueError:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8080") from None
        if not sep or not host:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8080")
        return v

    @field_validator("admin_token", "service_token")
    @classmethod
    def _strong_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v

    @model_validator(mode="after")
    def _margin_within_deadline(self) -> Settings:
        if self.redis_deadline_margin_ms >= self.redis_deadline_s * 1000:
            raise ValueError(
                "SIDECAR_REDIS_DEADLINE_MARGIN_MS must be shorter than SIDECAR_REDIS_DEADLINE_S"
            )
        return self

    @model_validator(mode="after")
    def _distinct_tokens(self) -> Settings:
        if self.admin_token is not None and self.admin_token == self.service_token:
            raise ValueError("SIDECAR_ADMIN_TOKEN and SIDECAR_SERVICE_TOKEN must differ")
        return self

    @property
    def webhook_secrets(self) -> list[str]:
        if self.stripe_webhook_secrets is None:
            return []
        raw = self.stripe_webhook_secrets.get_secret_value()
        return [s.strip() for s in raw.split(",") if s.strip()]

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def existing_token(self, name: Literal["admin", "service"]) -> str | None:
        """The configured token, else the one kept in the data dir, else None (never creates)."""
        value = self.admin_token if name == "admin" else self.service_token
        if value is not None:
            return value.get_secret_value()
        path = self.data_dir / f"{name}_token"
        return path.read_text().strip() if path.exists() else None

    def token(self, name: Literal["admin", "service"]) -> str:
        """The configured token, or one generated once and kept (mode 0600) in the data dir."""
        existing = self.existing_token(name)
        if existing is not None:
            return existing
        path = self.data_dir / f"{name}_token"
        private_dir(self.data_dir)
        generated = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generated + "\n")
        return generated
