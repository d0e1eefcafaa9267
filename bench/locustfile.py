"""Locust users for credit-sidecar (or the seed baseline, ``bench/seed_app.py``), usable against
any deployment given its URL and tokens. Headless, e.g.::

    SIDECAR_SERVICE_TOKEN=$(cat .data/service_token) .venv/bin/locust -f bench/locustfile.py \\
        --headless -u 50 -r 50 -t 30s --host http://127.0.0.1:8080 CheckUser
    BENCH_KEYS_FILE=keys.txt .venv/bin/locust -f bench/locustfile.py \\
        --headless -u 50 -r 50 -t 30s --host http://127.0.0.1:8000 NginxUser

Users (name one or more on the command line; without a name all three run):

- ``CheckUser``: ``POST /v1/check`` with cost 1 and a unique idempotency key.
- ``NginxUser``: ``GET $BENCH_NGINX_PATH`` through nginx (``--host`` is nginx) with
  ``X-API-Key`` set to a key of the keys file.
- ``MixedUser``: mostly checks; holds then a settle or a release; balance reads; top-ups.

402 (insufficient credits) and 429 (rate limited) are expected answers and count as successes;
any other status outside the call's own success statuses is a failure.

Environment:

- ``SIDECAR_SERVICE_TOKEN``: bearer token of checks and holds.
- ``SIDECAR_ADMIN_TOKEN``: bearer token of balance reads and grants (``MixedUser``).
- ``BENCH_ACCOUNTS``: accounts ``acct-00000`` .. ``acct-<N-1>`` (default 1000).
- ``BENCH_ZIPF_S``: Zipf exponent over accounts and keys; rank 1 (``acct-00000``, the first
  line of the keys file) is the hottest (default 1.1; 0 = uniform).
- ``BENCH_KEYS_FILE``: ``account key`` per line, for ``NginxUser``.
- ``BENCH_NGINX_PATH``: the protected path ``NginxUser`` requests (default ``/``).
- ``BENCH_WAIT_S``: each user waits 0 .. this many seconds between tasks (default 0).
- ``BENCH_SEED_CREDITS``: at the start, with ``SIDECAR_ADMIN_TOKEN`` set, every account above
  is created (if new) and given this many credits once (grant id ``bench-seed``: a second run
  changes nothing; default 1000000; 0 = do not seed). Without the admin token the log says
  what is missing. ``NginxUser``'s keys are made with ``credit-sidecar keys create``: the log
  prints the command.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import random
import secrets
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, cast

from locust import FastHttpUser, between, events, task
from locust.runners import WorkerRunner

log = logging.getLogger(__name__)

SERVICE_TOKEN = os.environ.get("SIDECAR_SERVICE_TOKEN", "")
ADMIN_TOKEN = os.environ.get("SIDECAR_ADMIN_TOKEN", "")
ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "1000"))
ZIPF_S = float(os.environ.get("BENCH_ZIPF_S", "1.1"))
KEYS_FILE = os.environ.get("BENCH_KEYS_FILE", "")
NGINX_PATH = os.environ.get("BENCH_NGINX_PATH", "/")
WAIT_S = float(os.environ.get("BENCH_WAIT_S", "0"))
SEED_CREDITS = int(os.environ.get("BENCH_SEED_CREDITS", "1000000"))
EXPECTED = (402, 429)  # insufficient credits, rate limited: answers, not failures

_ids = itertools.count()
_run = secrets.token_hex(4)  # unique ids across locust processes and runs


def unique(prefix: str) -> str:
    return f"{prefix}-{_run}-{next(_ids)}"


class Zipf:
    """Draws indexes 0..n-1 with P(i) proportional to 1 / (i + 1) ** s."""

    def __init__(self, n: int, s: float) -> None:
        if n < 1:
            raise ValueError("a Zipf distribution needs at least one item")
        self.cdf = list(itertools.accumulate(1.0 / (k**s) for k in range(1, n + 1)))

    def draw(self, rng: random.Random) -> int:
        return min(bisect.bisect_right(self.cdf, rng.random() * self.cdf[-1]), len(self.cdf) - 1)


@cache
def accounts() -> tuple[list[str], Zipf]:
    return [f"acct-{i:05d}" for i in range(ACCOUNTS)], Zipf(ACCOUNTS, ZIPF_S)


@cache
def api_keys() -> tuple[list[str], Zipf]:
    if not KEYS_FILE:
        raise RuntimeError("NginxUser needs BENCH_KEYS_FILE (one 'account key' pair per line)")
    with open(KEYS_FILE) as f:
        keys = [line.split()[1] for line in f if len(line.split()) >= 2]
    if not keys:
        raise RuntimeError(f"no 'account key' lines in {KEYS_FILE}")
    return keys, Zipf(len(keys), ZIPF_S)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def judge(resp: Any, ok: tuple[int, ...]) -> bool:
    """Marks a ``catch_response`` response; True if the call did what was asked."""
    status = int(resp.status_code or 0)
    if status in ok:
        resp.success()
        return True
    if status in EXPECTED:
        resp.success()
    else:
        resp.failure(f"HTTP {status}: {(resp.text or '')[:200]}")
    return False


def _describe(environment: Any, **_kwargs: Any) -> None:
    log.info(
        "accounts=%d zipf_s=%s keys_file=%s service_token=%s admin_token=%s",
        ACCOUNTS,
        ZIPF_S,
        KEYS_FILE or "-",
        "set" if SERVICE_TOKEN else "MISSING",
        "set" if ADMIN_TOKEN else "MISSING",
    )
    if not KEYS_FILE:
        log.info(
            "NginxUser needs BENCH_KEYS_FILE: for i in $(seq -f '%%05g' 0 %d); do echo "
            '"acct-$i $(credit-sidecar keys create acct-$i)"; done > keys.txt',
            ACCOUNTS - 1,
        )
    if SEED_CREDITS and environment.host and not isinstance(environment.runner, WorkerRunner):
        seed(environment.host)


def seed(host: str) -> None:
    """Creates the accounts the users draw from, each with SEED_CREDITS once (idempotent)."""
    if not ADMIN_TOKEN:
        log.warning("not seeding %d accounts: SIDECAR_ADMIN_TOKEN is not set", ACCOUNTS)
        return

    def call(method: str, path: str, body: object = None) -> int:
        req = urllib.request.Request(  # noqa: S310 (the --host of this run)
            host.rstrip("/") + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={**bearer(ADMIN_TOKEN), "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code

    def one(account: str) -> None:
        if call("GET", f"/v1/accounts/{account}/balance") == 404:  # settings of others kept
            call("PUT", f"/v1/accounts/{account}", {})
        grant = {"grant_id": "bench-seed", "credits": SEED_CREDITS, "reason": "test"}
        status = call("POST", f"/v1/accounts/{account}/grants", grant)
        if status not in (200, 201):
            raise RuntimeError(f"seeding {account}: HTTP {status}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, accounts()[0]))
    log.info("seeded %d accounts with %d credits each (once)", ACCOUNTS, SEED_CREDITS)


cast(Any, events.test_start).add_listener(_describe)


class SidecarUser(FastHttpUser):
    abstract = True
    wait_time = between(0, WAIT_S)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.names, self.zipf = accounts()

    def account(self) -> str:
        return self.names[self.zipf.draw(self.rng)]

    def post(
        self, path: str, body: dict[str, Any], token: str, ok: tuple[int, ...], name: str
    ) -> bool:
        client = cast(Any, self.client)
        with client.post(
            path, json=body, headers=bearer(token), name=name, catch_response=True
        ) as resp:
            return judge(resp, ok)

    def check(self) -> None:
        body = {"account": self.account(), "cost": 1, "idempotency_key": unique("chk")}
        self.post("/v1/check", body, SERVICE_TOKEN, (200,), "/v1/check")


class CheckUser(SidecarUser):
    @task
    def check_task(self) -> None:
        self.check()


class NginxUser(SidecarUser):
    def on_start(self) -> None:
        super().on_start()
        self.keys, self.key_zipf = api_keys()

    @task
    def proxied(self) -> None:
        key = self.keys[self.key_zipf.draw(self.rng)]
        client = cast(Any, self.client)
        with client.get(
            NGINX_PATH, headers={"X-API-Key": key}, name=f"nginx {NGINX_PATH}", catch_response=True
        ) as resp:
            judge(resp, (200,))


class MixedUser(SidecarUser):
    @task(20)
    def check_task(self) -> None:
        self.check()

    @task(3)
    def hold_then_close(self) -> None:
        account, hold_id, amount = self.account(), unique("hold"), self.rng.randint(1, 5)
        body = {"account": account, "hold_id": hold_id, "amount": amount, "ttl_ms": 60_000}
        if not self.post("/v1/holds", body, SERVICE_TOKEN, (201,), "/v1/holds"):
            return
        if self.rng.random() < 0.5:
            settle = {"account": account, "amount": self.rng.randint(0, amount)}
            path, name = f"/v1/holds/{hold_id}/settle", "/v1/holds/[id]/settle"
            self.post(path, settle, SERVICE_TOKEN, (200,), name)
        else:
            path, name = f"/v1/holds/{hold_id}/release", "/v1/holds/[id]/release"
            self.post(path, {"account": account}, SERVICE_TOKEN, (200,), name)

    @task(3)
    def balance(self) -> None:
        client = cast(Any, self.client)
        with client.get(
            f"/v1/accounts/{self.account()}/balance",
            headers=bearer(ADMIN_TOKEN),
            name="/v1/accounts/[a]/balance",
            catch_response=True,
        ) as resp:
            judge(resp, (200,))

    @task(1)
    def top_up(self) -> None:
        body = {"grant_id": unique("topup"), "credits": 1000, "source": "purchase"}
        path = f"/v1/accounts/{self.account()}/grants"
        self.post(path, body, ADMIN_TOKEN, (201,), "/v1/accounts/[a]/grants")
