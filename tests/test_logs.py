"""Logs: JSON (or text) lines on stderr, each request's lines carrying its request id (the
client's X-Request-Id when valid, else generated; echoed in the response), and no secret in
them: tokens, API keys, Stripe keys and webhook secrets stay out, access log on."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sidecar.runtime import logs
from tests.ports import free_port

ADMIN = "admin-secret-token-a1b2c3d4e5"
SERVICE = "service-secret-token-f6g7h8i9"
WEBHOOK_SECRET = "whsec_logtest_9f8e7d6c5b4a"
STRIPE_KEY = "sk_test_logtest_0a1b2c3d4e5f"
METRICS_TOKEN = "metrics-secret-token-j0k1l2"
WRONG = "wrong-secret-token-zz99yy88"


def request(
    listen: str, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://{listen}{path}", data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return int(r.status), _json(r.read(), r.headers), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, _json(e.read(), e.headers), dict(e.headers)


def _json(raw: bytes, headers: Any) -> dict[str, Any]:
    if headers.get("Content-Type", "").startswith("application/json"):
        out: dict[str, Any] = json.loads(raw)
        return out
    return {}


def bearer(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **more}


def signed(payload: bytes, secret: str) -> str:
    ts = int(time.time())
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


def test_no_secret_reaches_the_logs_and_each_line_carries_its_request_id(
    tmp_path: Path,
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env |= {
        "SIDECAR_DATA_DIR": str(tmp_path),
        "SIDECAR_LISTEN": listen,
        "SIDECAR_ADMIN_TOKEN": ADMIN,
        "SIDECAR_SERVICE_TOKEN": SERVICE,
        "SIDECAR_STRIPE_API_KEY": STRIPE_KEY,
        "SIDECAR_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        "SIDECAR_METRICS_TOKEN": METRICS_TOKEN,
        "SIDECAR_ACCESS_LOG": "true",
        "SIDECAR_LOG_FORMAT": "json",
        "SIDECAR_LOG_LEVEL": "debug",
        "SIDECAR_WRITER": "inline",
    }
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve"], env=env, stderr=err, stdout=err
        )
        try:
            deadline = time.monotonic() + 60  # generous: a busy CI machine
            while time.monotonic() < deadline:
                try:
                    if request(listen, "GET", "/healthz")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.05)
            secrets = exercise(listen)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    text = stderr.read_text()
    for name, secret in secrets.items():
        assert secret not in text, f"{name} leaked into the logs"
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "aiohttp.access"]
    mine = [line for line in access if line.get("request_id") == "trace-check-1"]
    assert [(line["method"], line["path"], line["status"]) for line in mine] == [
        ("POST", "/v1/check", 200)
    ]
    envoy = [line for line in access if line["path"].startswith("/auth/envoy")]
    assert envoy and all("?" not in line["path"] for line in envoy)
    assert all(len(line["request_id"]) > 0 for line in access)


def exercise(listen: str) -> dict[str, str]:
    """Requests that carry every kind of secret; returns the secrets to look for."""
    status, _, _ = request(listen, "PUT", "/v1/accounts/acme", {}, bearer(ADMIN))
    assert status == 201
    grant = {"grant_id": "g", "credits": 100, "reason": "test"}
    assert request(listen, "POST", "/v1/accounts/acme/grants", grant, bearer(ADMIN))[0] == 201
    status, created, _ = request(listen, "POST", "/v1/accounts/acme/keys", {}, bearer(ADMIN))
    key = created["key"]
    check = {"account": "acme", "cost": 1, "idempotency_key": "k1"}
    status, _, headers = request(
        listen, "POST", "/v1/check", check, bearer(SERVICE, **{"X-Request-Id": "trace-check-1"})
    )
    assert status == 200 and headers["X-Request-Id"] == "trace-check-1"
    # An invalid id is replaced by a generated one.
    status, _, headers = request(listen, "GET", "/healthz", None, {"X-Request-Id": "bad id!"})
    assert headers["X-Request-Id"] != "bad id!" and len(headers["X-Request-Id"]) == 16
    assert request(listen, "POST", "/v1/check", check, bearer(WRONG))[0] == 401
    nginx = {"Authorization": f"Bearer {key}", "X-Original-URI": f"/v1/x?api_key={key}"}
    assert request(listen, "GET", "/auth/nginx", None, nginx)[0] == 200
    assert request(listen, "GET", "/auth/forward", None, {"X-API-Key": key})[0] == 200
    envoy = {"X-API-Key": key}  # the original query carries it too
    assert request(listen, "GET", f"/auth/envoy/v1/y?api_key={key}", None, envoy)[0] == 200
    assert request(listen, "GET", "/auth/nginx", None, {"X-API-Key": WRONG})[0] == 401
    payload = json.dumps(
        {
            "id": "evt_log_1",
            "type": "customer.created",
            "data": {"object": {"id": "cus_1", "object": "customer"}},
        }
    ).encode()
    signature = signed(payload, WEBHOOK_SECRET)
    webhook = {"Stripe-Signature": signature, "Content-Type": "application/json"}
    assert request(listen, "POST", "/webhooks/stripe", payload, webhook)[0] == 200
    wrong = {"Stripe-Signature": signed(payload, "whsec_other_secret_1234")}
    assert request(listen, "POST", "/webhooks/stripe", payload, wrong)[0] == 400
    assert request(listen, "GET", "/metrics", None, bearer(METRICS_TOKEN))[0] == 200
    assert request(listen, "GET", "/metrics", None, bearer(WRONG))[0] == 401
    return {
        "admin token": ADMIN,
        "service token": SERVICE,
        "API key": key,
        "wrong token": WRONG,
        "webhook secret": WEBHOOK_SECRET,
        "webhook signature": signature.partition("v1=")[2],
        "Stripe API key": STRIPE_KEY,
        "metrics token": METRICS_TOKEN,
    }


def record(message: str, **extra: Any) -> logging.LogRecord:
    r = logging.LogRecord("sidecar.test", logging.WARNING, __file__, 1, message, (), None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_json_lines_carry_the_request_id_set_in_the_context() -> None:
    fmt = logs.JsonFormatter()
    line = json.loads(fmt.format(record("outside")))
    assert line["message"] == "outside" and "request_id" not in line
    assert line["level"] == "warning" and line["ts"].endswith("Z")
    token = logs.REQUEST_ID.set("abc-1")
    try:
        line = json.loads(fmt.format(record("inside", http={"status": 200})))
        assert line["request_id"] == "abc-1" and line["status"] == 200
        assert logs.TextFormatter().format(record("inside")).endswith(" request_id=abc-1")
    finally:
        logs.REQUEST_ID.reset(token)


def test_auto_format_is_text_on_a_terminal_and_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.use_json("auto", Tty()) is False
    assert logs.use_json("auto", io.StringIO()) is True
    assert logs.use_json("text", io.StringIO()) is False
    assert logs.use_json("json", Tty()) is True


def test_a_text_line_cannot_be_split_by_a_clients_control_characters() -> None:
    """A path decoded from %0A (the access log's) would forge a line of its own."""
    forged = "GET /v1/a\n2026-01-01 ERROR sidecar: forged\r\x1b[2J 200"
    line = logs.TextFormatter().format(record(forged))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    for breaker in ("\x85", "\u2028", "\u2029"):  # lines to str.splitlines() too
        assert len(logs.TextFormatter().format(record(f"a{breaker}b")).splitlines()) == 1
    assert "/v1/a\\x0a2026-01-01 ERROR sidecar: forged\\x0d\\x1b[2J 200" in line
    try:
        raise ValueError("boom")
    except ValueError:
        r = record("failed")
        r.exc_info = sys.exc_info()
    assert "\nValueError: boom" in logs.TextFormatter().format(r)  # tracebacks keep their lines


def test_a_request_aiohttp_cannot_parse_is_one_info_line_not_an_error_with_a_traceback() -> None:
    """Any client could fill the logs with malformed chunks, each an ERROR and a traceback."""
    from aiohttp.http_exceptions import BadHttpMessage

    guard = logs.ClientErrors()  # what logs.configure puts on the aiohttp.server logger
    try:
        raise BadHttpMessage("Not enough data to satisfy transfer length header.")
    except BadHttpMessage:
        r = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "Error handling request from %s",
            ("127.0.0.1",),
            sys.exc_info(),
        )
    assert guard.filter(r)
    line = logs.TextFormatter().format(r)
    assert r.levelname == "INFO" and "\n" not in line and "Traceback" not in line
    assert "refused a malformed request (400): Not enough data" in line
    try:
        raise RuntimeError("ours")
    except RuntimeError:
        mine = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "Error handling request",
            (),
            sys.exc_info(),
        )
    assert guard.filter(mine) and mine.levelname == "ERROR" and mine.exc_info is not None
