"""`credit-sidecar packages` and `credit-sidecar billing` against a real `serve` process, as a
user runs them (Stripe is not configured here: packages and status work without it)."""

from __future__ import annotations

import json

from tests.cli.conftest import call, cli


def test_packages_put_and_list_through_the_admin_api(served: dict[str, str]) -> None:
    out = cli(
        served,
        "packages",
        "put",
        "starter",
        "--name",
        "Starter",
        "--credits",
        "1000",
        "--price",
        "500",
        "--stripe-price",
        "price_123",
        "--expiry-days",
        "30",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["credit_expiry_s"] == 30 * 86400
    listed = json.loads(cli(served, "packages", "list").stdout)
    assert [p["id"] for p in listed["packages"]] == ["starter"]
    bad = cli(served, "packages", "put", "x", "--name", "X", "--credits", "0", "--price", "1")
    assert bad.returncode != 0 and "credits" in bad.stderr


def test_billing_status_and_events_without_stripe(served: dict[str, str]) -> None:
    status = json.loads(cli(served, "billing", "status").stdout)
    assert status["stripe"] is False and status["events"] == {}
    assert json.loads(cli(served, "billing", "events", "--status", "dead").stdout) == {"events": []}
    missing = cli(served, "billing", "retry", "evt_nope")
    assert missing.returncode != 0 and "evt_nope" in missing.stderr
    code, body = call(
        served,
        "POST",
        "/v1/checkout",
        {
            "account": "acme",
            "package_id": "starter",
            "success_url": "https://a.test/ok",
            "cancel_url": "https://a.test/no",
        },
    )
    assert code == 503 and body["error"]["code"] == "billing_not_configured"
