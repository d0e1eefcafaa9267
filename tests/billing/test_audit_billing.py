"""The audit trail of the billing admin calls (docs/audit.md), with Stripe played by the local
fake: the billing profile, the auto top-up set and removed, each one entry naming the token
and saying before and after."""

from __future__ import annotations

from typing import Any

from sidecar.redis.client import RedisClient
from tests.billing.conftest import Rig
from tests.billing.test_topup import PM, arm
from tests.conftest import admin, outbox_entries


async def audits(redis: RedisClient) -> list[dict[str, Any]]:
    return [e for e in await outbox_entries(redis) if e.get("kind") == "audit"]


async def test_billing_changes_are_each_one_entry_with_before_and_after(
    rig: Rig, redis: RedisClient
) -> None:
    await rig.account("acme")
    await rig.package()
    r = await rig.client.put(
        "/v1/admin/accounts/acme/billing", json={"email": "ops@acme.test"}, headers=admin()
    )
    assert r.status == 200, await r.text()
    await arm(rig, "acme", threshold=100)
    r = await rig.client.delete(
        "/v1/admin/accounts/acme/auto-topup", headers=admin() | {"X-Audit-Reason": "card lost"}
    )
    assert r.status == 200, await r.text()
    trail = await audits(redis)
    by_action = {e["action"]: e for e in trail}
    assert [e["action"] for e in trail if e["action"] != "account.put"][-3:] == [
        "billing_profile.put",
        "auto_topup.put",
        "auto_topup.delete",
    ]
    put = by_action["auto_topup.put"]
    assert put["after"]["payment_method"] == PM and put["account"] == "acme"
    gone = by_action["auto_topup.delete"]
    assert gone["before"]["threshold"] == 100 and gone["reason"] == "card lost"
    assert all(e["token_id"] == "bootstrap:admin" for e in trail)
