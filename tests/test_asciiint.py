"""Integers from outside text take ASCII digits only, in every parser: the shared helper, query
parameters, the listen address, command-line options (the trusted cost header is tested with
the other proxy input, tests/http/test_proxy_input.py)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from click.testing import CliRunner
from pydantic import ValidationError

from sidecar.asciiint import parse_ascii_int
from sidecar.cli import main
from sidecar.settings import Settings
from tests.conftest import admin

# Each of these is an integer to Python's int() (or isdigit()), none is ASCII digits.
NOT_ASCII_DIGITS = ["٣", "²", "\uff15", "1_0", " 5", "5 ", "+5", "5\n", "0x5", "5.0", "", "-"]


@pytest.mark.parametrize("text", NOT_ASCII_DIGITS)
def test_only_ascii_digits_parse(text: str) -> None:
    with pytest.raises(ValueError, match=r"must be an integer in \[0, 100\]"):
        parse_ascii_int(text, 0, 100)


def test_ascii_digits_parse_within_bounds() -> None:
    assert parse_ascii_int("42", 0, 100) == 42
    assert parse_ascii_int("007", 0, 100) == 7
    assert parse_ascii_int("-3", -5, 5) == -3
    for text in ("-3", "101", "1" * 21):
        with pytest.raises(ValueError):
            parse_ascii_int(text, 0, 100)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/admin/outbox/dead-letters?count={}",
        "/v1/admin/outbox/dead-letters?shard={}",
        "/v1/admin/billing/events?limit={}",
        "/v1/admin/accounts?limit={}",
    ],
)
async def test_integer_query_parameters_refuse_other_digits_naming_the_parameter(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    name = path.rsplit("?", 1)[1].split("=")[0]
    for text in ("٣", "1_0", "+5", "0"):
        if text == "0" and name == "shard":
            continue  # shard 0 exists
        r = await client.get(path.format(text), headers=admin())
        assert r.status == 422, (path, text)
        assert (await r.json())["error"]["field"] == name


def test_the_listen_port_takes_ascii_digits_only() -> None:
    assert Settings(listen="127.0.0.1:8080").host_port == ("127.0.0.1", 8080)
    for listen in ("127.0.0.1:٨٠٨٠", "127.0.0.1:²", "127.0.0.1:8_080", "127.0.0.1:0"):
        with pytest.raises(ValidationError, match="host:port"):
            Settings(listen=listen)


@pytest.mark.parametrize(
    "args",
    [
        ["transactions", "acme", "--limit", "٣"],
        ["transactions", "acme", "--before", "1_0"],
        ["grants", "add", "acme", "--id", "g", "--credits", "٣"],
        ["outbox", "dead-letters", "--count", "+5"],
    ],
)
def test_integer_options_refuse_other_digits(args: list[str]) -> None:
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 2, out.output
    assert "must be an integer in" in out.output
