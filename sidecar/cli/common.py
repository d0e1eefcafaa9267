"""What the CLI commands share: settings loading with readable errors, and the admin client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import orjson
from pydantic import ValidationError

from sidecar.asciiint import parse_ascii_int
from sidecar.cli.adminclient import AdminClient, AdminError
from sidecar.runtime import logs
from sidecar.settings import Settings

if TYPE_CHECKING:
    from sidecar.redis.client import RedisClient

# Imports a command needs only for itself (SQLAlchemy, the embedded server, uvloop) happen in
# the helpers below: every CLI call would pay for them otherwise (see sidecar/cli/__init__.py).

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class AsciiInt(click.ParamType[int, Any]):
    """An integer option in ``[lo, hi]``, ASCII digits only: click's ``int`` and ``IntRange``
    call ``int()``, which also takes ``٣``, ``1_000`` and `` 5 ``."""

    name = "integer"

    def __init__(self, lo: int = -(2**63), hi: int = 2**63 - 1) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value  # a default
        try:
            return parse_ascii_int(str(value), self.lo, self.hi)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def run_until_signal(
    main: Callable[[asyncio.Event], Awaitable[None]], settings: Settings | None = None
) -> None:
    """Runs a long-lived command (``writer``, ``worker``) on uvloop, logging to stderr as
    ``settings`` say (``log_format``, ``log_level``), until SIGTERM or SIGINT sets the event
    it is given."""
    import uvloop

    if settings is not None:
        logs.configure(settings.log_format, settings.log_level)
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(run())


def load_settings(listen: str | None = None) -> Settings:
    """Settings from env and SIDECAR_CONFIG; a bad value exits 2 naming the variable."""
    try:
        return Settings(listen=listen) if listen else Settings()
    except ValidationError as e:
        for err in e.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            click.echo(f"config error: SIDECAR_{loc.upper()}: {err['msg']}", err=True)
        sys.exit(2)
    except (OSError, ValueError) as e:  # SIDECAR_CONFIG unreadable, not UTF-8, not TOML
        click.echo(f"config error: SIDECAR_CONFIG: {e}", err=True)
        sys.exit(2)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_sql(main: Coroutine[Any, Any, T], settings: Settings) -> T:
    """``asyncio.run`` for a command working on the SQL ledger: SQL unreachable, refusing the
    connection or the statement ends it in one line (exit 1) naming the ledger and the
    driver's reason, instead of a traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from sidecar.persistence.db import resolve_url

    try:
        return asyncio.run(main)
    except (SQLAlchemyError, OSError) as e:
        url = make_url(resolve_url(settings.database_url, settings.data_dir))
        cause = getattr(e, "orig", None) or e
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        fail(f"SQL ledger {url.render_as_string(hide_password=True)}: {reason}")


def admin_client(url: str | None) -> AdminClient:
    """A client of the running sidecar's admin API.

    The URL defaults to the sidecar's own listen address; the token comes from
    SIDECAR_ADMIN_TOKEN or the file `serve` generated in the data dir.
    """
    settings = load_settings()
    token = settings.existing_token("admin")
    if token is None:
        fail(
            "no admin token: set SIDECAR_ADMIN_TOKEN, or run where the sidecar keeps its data "
            f"(SIDECAR_DATA_DIR, now {settings.data_dir})",
            2,
        )
    if url is None:
        host, port = settings.host_port
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a bind-all address is reached on loopback
            host = "127.0.0.1"
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return AdminClient(url, token)


def run_admin(client: AdminClient, call: Callable[[AdminClient], Awaitable[T]]) -> T:
    """Run one admin call; API errors and an unreachable sidecar exit 1 with the reason."""

    async def go() -> T:
        async with client:
            return await call(client)

    try:
        return asyncio.run(go())
    except AdminError as e:
        fail(f"{e.status} {e.message}")


def echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings, *, decode_responses: bool = False
) -> AsyncIterator[RedisClient]:
    """The sidecar's Redis for a command that works on it directly.

    SIDECAR_REDIS_URL if set; else the embedded server of the data dir: the running
    `serve`'s socket, or, when no sidecar runs, a server this command starts and stops.
    """
    from sidecar.redis.client import connect
    from sidecar.redis.embedded import DataDirInUse, RedisServer, embedded_server

    server: RedisServer | None = None
    url = settings.redis_url
    if url is None:
        candidate = embedded_server(settings)
        try:
            await asyncio.to_thread(candidate.start)
            server = candidate
        except DataDirInUse:
            if candidate.unixsocket is None or not candidate.unixsocket.exists():
                fail("the running sidecar's Redis is not reachable: set SIDECAR_REDIS_URL", 2)
        url = candidate.url
    client = connect(url, decode_responses=decode_responses)
    try:
        yield client
    finally:
        await client.aclose()
        if server is not None:
            await asyncio.to_thread(server.stop)


url_option = click.option(
    "--url",
    envvar="SIDECAR_URL",
    help="the sidecar's base URL (SIDECAR_URL; default: its SIDECAR_LISTEN address)",
)
json_option = click.option("--json", "as_json", is_flag=True, help="print the API's JSON")


def rate_limit_options(what: str) -> Callable[[F], F]:
    """--rate-limit, --period-ms and --burst, for ``what`` ("the account", "this key")."""

    def add(f: F) -> F:
        f = click.option("--burst", type=AsciiInt(), help="bucket size (default: the rate limit)")(
            f
        )
        f = click.option(
            "--period-ms", type=AsciiInt(), default=1000, show_default=True, help="the rate period"
        )(f)
        return click.option(
            "--rate-limit", type=AsciiInt(), help=f"requests allowed per period for {what}"
        )(f)

    return add


def rate_limit_body(
    rate_limit: int | None, period_ms: int, burst: int | None
) -> dict[str, int] | None:
    """The API's ``rate_limit`` object from those options (None: no limit)."""
    if rate_limit is None:
        if burst is not None:
            raise click.UsageError("--burst needs --rate-limit")
        return None
    rl = {"requests": rate_limit, "period_ms": period_ms}
    if burst is not None:
        rl["burst"] = burst
    return rl
