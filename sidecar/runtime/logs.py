"""Logging: one line per record on stderr, JSON or text, each carrying the id of the request
it was logged in; and the access log, which names no header and no query string.

- ``SIDECAR_LOG_FORMAT``: ``json`` (one object per line: ``ts``, ``level``, ``logger``,
  ``message``, ``request_id`` when in a request, ``exc`` with a traceback, and the access log's
  fields), ``text``, or ``auto`` (the default): text on a terminal, JSON otherwise (a
  container, a service manager, a pipe).
- ``SIDECAR_LOG_LEVEL``: ``debug``, ``info`` (default), ``warning``, ``error``. ``debug``
  is the sidecar's and aiohttp's; other libraries log from ``info`` up, and those whose
  records carry data (SQL statements with their parameters, Stripe requests) from
  ``warning`` up.
- The request id is the request's ``X-Request-Id`` (``SIDECAR_REQUEST_ID_HEADER``) when it is
  a valid id (1-128 of ``A-Za-z0-9._:-``), else a generated one; it is echoed in the response
  under the same header. A middleware puts it in a context variable, which each request's own
  task carries into everything it logs.
- Secrets stay out: the access log records method, path (without its query string), status,
  size, duration, remote address and request id, never a header (Authorization, X-API-Key,
  Stripe-Signature) or a body; a customer-portal link's path (``/portal/s/<id>.<secret>``:
  a link refused unspent still opens) by its session id only.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Literal

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest

from sidecar.ledger.units import iso_seconds

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LogFormat = Literal["auto", "json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Loggers that ``debug`` applies to; every other library logs from info up (their debug
# records carry data: aiosqlite logs each statement with its parameters).
OWN = ("sidecar", "aiohttp")
# Libraries whose info records carry data too: SQLAlchemy's engine logs every statement with
# its parameters (key hashes, webhook payloads), the Stripe library its requests. They log
# warnings and errors only, whatever the level.
QUIET = ("sqlalchemy", "stripe")

# Request ids need to be unique, not secret: no system call per id.
_ids = random.Random(int.from_bytes(os.urandom(16), "big"))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(16)))


def new_request_id() -> str:
    return f"{_ids.getrandbits(64):016x}"


def use_json(fmt: LogFormat, stream: object = None) -> bool:
    if fmt != "auto":
        return fmt == "json"
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    return not (callable(isatty) and isatty())


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Replaces the root logger's handlers with one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json(fmt, sys.stderr) else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    chosen = logging.getLevelName(level.upper())
    root.setLevel(max(chosen, logging.INFO))
    for name in OWN:
        logging.getLogger(name).setLevel(chosen)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(chosen, logging.WARNING))
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrors) for f in server.filters):
        server.addFilter(ClientErrors())


class ClientErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (a malformed chunk, a line too long) at ERROR
    with a traceback: the client's fault, not ours, and any client could fill the logs with
    them. Each becomes one INFO line naming the problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 500) < 500:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = (
                "refused a malformed request (%s): %s",
                (exc.code, exc.message),
            )
            record.exc_info = None
            record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the access log's fields (``record.http``) merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": iso_seconds(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        http = getattr(record, "http", None)
        if isinstance(http, dict):
            out.update(http)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with `` request_id=…`` appended inside a request. Control characters
    of the message are escaped (``\\n`` → ``\\x0a``): a client's path, decoded from ``%0A``,
    would otherwise start a line of its own, a forged log entry (the JSON lines escape it)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _CONTROL.sub(_escaped, record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = REQUEST_ID.get()
        return line if request_id is None else f"{line} request_id={request_id}"


# C0, DEL and C1 controls, and the Unicode line and paragraph separators: all break a line
# for some reader (str.splitlines() splits at \x85, \u2028 and \u2029 too).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_middleware(header: str) -> Middleware:
    """Sets :data:`REQUEST_ID` for the request (its own task: nothing to reset) and echoes
    it in the response. Outermost, so that error responses carry it too."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request.headers.get(header)
        if request_id is None or not VALID_ID.fullmatch(request_id):
            request_id = new_request_id()
        REQUEST_ID.set(request_id)
        response = await handler(request)
        if not response.prepared:
            response.headers[header] = request_id
        return response

    return middleware


# A portal link's path carries its secret (docs/portal.md): only the session id is logged.
_PORTAL_LINK = re.compile(r"^/portal/s/([^/.]*)[^/]*")


def loggable_path(request: BaseRequest) -> str:
    """The request's path as a log may show it: a portal link's secret masked."""
    return _PORTAL_LINK.sub(r"/portal/s/\1.***", request.path)


class AccessLogger(AbstractAccessLogger):
    """One record per request: ``GET /v1/accounts/acme/balance 200 0.84ms``, with the fields
    as ``record.http`` (the JSON formatter makes them keys). No headers, no query string:
    they can carry API keys."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        ms = round(time * 1000, 3)
        path = loggable_path(request)
        self.logger.info(
            "%s %s %s %.2fms",
            request.method,
            path,
            response.status,
            ms,
            extra={
                "http": {
                    "method": request.method,
                    "path": path,
                    "status": response.status,
                    "bytes": response.body_length,
                    "duration_ms": ms,
                    "remote": request.remote,
                }
            },
        )
