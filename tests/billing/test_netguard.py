"""Low-balance webhooks cannot reach the sidecar's own network (SSRF): non-public addresses
are refused when a URL is saved and, after DNS, when a webhook is sent; redirects are not
followed; a failed delivery's record names a category, never an address or port."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from sidecar.billing import notify
from sidecar.billing.netguard import GuardedResolver, RefusedAddress, webhook_session
from tests.billing.conftest import MakeRig, Rig
from tests.billing.webhooks import Endpoint, cross, finished, with_endpoint
from tests.conftest import admin

pytestmark = pytest.mark.sql_bystander  # its subject: where webhooks may connect

REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.9.9.9:8080/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://0177.0.0.1/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://localhost:8080/hook",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1%25eth0]/",
    "http://[fd12:3456::1]/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://[64:ff9b::a00:1]/",
    "http://[2002:7f00:1::]/",
    "http://user:pw@127.0.0.1/",
]


async def put_url(rig: Rig, url: str) -> tuple[int, Any]:
    r = await rig.client.put(
        "/v1/admin/accounts/acme/notifications", json={"url": url}, headers=admin()
    )
    return r.status, await r.json()


@pytest.mark.parametrize("url", REFUSED)
async def test_notification_urls_to_non_public_addresses_are_refused_when_saved(
    rig: Rig, url: str
) -> None:
    await rig.account("acme")
    status, body = await put_url(rig, url)
    assert status == 422, body
    assert body["error"]["field"] == "url"
    assert await rig.billing.notifications.endpoint("acme") is None


async def test_public_notification_urls_are_saved_and_private_ones_when_allowed(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    await rig.account("acme")
    for url in ("https://hooks.example.com/x", "http://8.8.8.8/", "http://[2606:4700::1111]/"):
        assert (await put_url(rig, url))[0] == 200, url
    allowing = await make_rig(notify_allow_private=True)
    for url in ("http://127.0.0.1:9/", "http://localhost/", "http://10.0.0.1/"):
        assert (await put_url(allowing, url))[0] == 200, url
    # Legacy spellings of an address stay refused: aiohttp would not deliver to them.
    assert (await put_url(allowing, "http://2130706433/"))[0] == 422


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_webhook_to_a_non_public_address_is_refused_when_sent(
    make_rig: MakeRig, host: str
) -> None:
    """An endpoint saved before (or while private addresses were allowed): ``localhost``
    resolves to 127.0.0.1, which the resolver refuses; a literal 127.0.0.1 is refused
    before any connection. Nothing reaches the endpoint."""
    rig = await make_rig(notify_max_attempts=1)
    async with Endpoint() as target:
        url = target.url().replace("127.0.0.1", host)
        await with_endpoint(rig, "acme", "https://hooks.example.com/x")
        await rig.billing.notifications.put_endpoint("acme", url, "whsec_x", rig.clock())
        await cross(rig, "acme")
        d = await finished(rig, "acme")
    assert (d["status"], d["last_error"]) == ("dead", "refused_address")
    assert target.received == []


class FixedResolver(AbstractResolver):
    """A DNS answer of our choosing (a rebinding attacker's): these addresses for any name."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": a,
                "port": port,
                "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_the_resolver_keeps_only_public_addresses() -> None:
    """The connection goes to an address the guard returned, never to one it dropped: a name
    answering a public and a private address is connected to the public one only; one
    answering only private ones (or ``localhost``, by the system's resolver) is refused."""
    mixed = GuardedResolver(FixedResolver("10.0.0.5", "93.184.216.34", "::ffff:127.0.0.1"))
    assert [r["host"] for r in await mixed.resolve("rebind.test", 443)] == ["93.184.216.34"]
    private = GuardedResolver(FixedResolver("127.0.0.1", "169.254.169.254", "fd00::1"))
    with pytest.raises(RefusedAddress):
        await private.resolve("rebind.test", 443)
    system = GuardedResolver()
    with pytest.raises(RefusedAddress):
        await system.resolve("localhost", 80)
    await system.close()


async def test_redirects_are_not_followed(make_rig: MakeRig) -> None:
    rig = await make_rig(notify_allow_private=True, notify_max_attempts=1)
    async with (
        Endpoint() as elsewhere,
        Endpoint(redirect_to=elsewhere.url("/internal")) as redirecting,
    ):
        await with_endpoint(rig, "acme", redirecting.url())
        await cross(rig, "acme")
        d = await finished(rig, "acme")
    assert (d["status"], d["last_error"]) == ("dead", "HTTP 307")
    assert len(redirecting.received) == 1 and elsewhere.received == []


async def test_a_failed_delivery_records_a_category_not_the_address_or_port(
    make_rig: MakeRig,
) -> None:
    """Connecting to a closed port: the record says ``connection_failed``, not the OS's
    error text (which names the address and port, and would map the network)."""
    rig = await make_rig(notify_allow_private=True, notify_max_attempts=1)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await with_endpoint(rig, "acme", f"http://127.0.0.1:{port}/hook")
    await cross(rig, "acme")
    d = await finished(rig, "acme")
    assert (d["status"], d["last_error"]) == ("dead", "connection_failed")
    assert str(port) not in d["last_error"] and "127.0.0.1" not in d["last_error"]


async def test_send_refuses_a_literal_private_address_without_connecting() -> None:
    """The check before each request (aiohttp skips the resolver for an address)."""
    async with Endpoint() as target:
        session = webhook_session(allow_private=False, limit=2)
        async with session:
            error = await notify.send(
                session, target.url(), b"{}", "whsec_x", timeout_s=5, allow_private=False
            )
    assert error == "refused_address" and target.received == []
