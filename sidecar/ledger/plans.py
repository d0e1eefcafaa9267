"""Plans (docs/plans.md): their definitions, kept in every shard's plans hash.

A check reads its account's plan in its own slot, so every shard holds a copy, written by
sidecar/lua/plan.lua one shard at a time: the other shards first, shard 0 last. Shard 0's copy
is the one reads see, and its call alone appends the outbox entry the SQL ledger mirrors
(kind=plan), so a plan is visible, and reaches SQL, once every shard has it. Every step is
idempotent: a call that failed part way is made again as a whole and converges.

Deleting a plan retires it on every shard first (``x:<plan>``: no change to it meanwhile, and no
account may join it), then adds up how many accounts are on it (``n:<plan>``, which account.lua
keeps per shard): with none it is deleted everywhere, else retired no more and the delete is
refused (PlanInUse, with the count).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Sequence
from typing import Any, Literal, cast

import orjson
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from sidecar.errors import PlanInUse, SidecarError, UnknownPlan
from sidecar.ledger.arguments import new_transaction_id
from sidecar.ledger.calls import Ledger
from sidecar.ledger.keyspace import KeySpace
from sidecar.ledger.redis_calls import store_call
from sidecar.ledger.results import Plan
from sidecar.redis.client import RedisClient
from sidecar.redis.client import text as _text

log = logging.getLogger(__name__)
Mode = Literal["put", "retire", "unretire", "delete"]


def plan_from_json(raw: bytes | str) -> Plan:
    """A definition as plan.lua stores it (``d:<plan>``), as its Plan."""
    return Plan.from_json(orjson.loads(raw))


def put_args(plan: Plan) -> list[str | int]:
    """plan.lua's put arguments (ARGV[8..13]) for ``plan``; the caller adds the stamp."""
    rl = plan.rate_limit
    return [
        plan.name,
        plan.allowance.spec(),
        f"{rl.requests}:{rl.period_ms}:{rl.burst}" if rl else "",
        plan.spend_limit.spec() if plan.spend_limit else "",
        "1" if plan.default else "0",
        plan.allowance.trigger,
    ]


async def run_plan_script(
    redis: RedisClient,
    script: AsyncScript,
    keys: KeySpace,
    shard: int,
    common: Sequence[str | int],
    mode: Mode,
    args: Sequence[str | int] = (),
    *,
    deadline_s: float,
    entry: bool = True,
) -> Any:
    """Runs plan.lua on ``shard``: ``common`` is the common five arguments (the plan id first);
    the outbox entry is appended on shard 0 only (and never without ``entry``: a rebuild's).
    Script errors as domain errors."""
    script_keys = [keys.plans(shard), keys.outbox(shard), keys.plan_stamps(shard)]
    argv = [*common, mode, "1" if entry and shard == 0 else "0", *args]

    async def invoke() -> Any:
        try:
            return await script(keys=script_keys, args=argv)
        except NoScriptError:  # flushed between the reload and the EVALSHA: EVAL cannot miss
            return await redis.eval(cast(str, script.script), 3, *script_keys, *argv)

    return await store_call(invoke(), deadline_s)


def put_stamp(now: int, txid: str) -> str:
    """A put's stamp, the same on every shard: when it was made (never before the stamps it
    follows), then its transaction id (a tie-break). Every shard keeps the put with the
    greatest, so two PUTs at once leave every shard with the same one (sidecar/lua/plan.lua)."""
    return f"{now:015d}:{txid}"


def last_to_first(keys: KeySpace) -> list[int]:
    """The shards in the order a change reaches them: shard 0 (the one read, and the one whose
    entry reaches SQL) last."""
    return list(range(keys.shards - 1, -1, -1))


class Plans:
    """Defines, reads and deletes plans (the admin API's ``/v1/plans``)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.redis = ledger.redis
        self.keys = ledger.keys

    async def _run(
        self,
        shard: int,
        plan_id: str,
        mode: Mode,
        args: Sequence[str | int] = (),
        *,
        now: int,
        txid: str,
    ) -> Any:
        ledger = self.ledger
        common: builtins.list[str | int] = [
            plan_id,
            now,
            txid,
            ledger.retention_ms,
            ledger.script_deadline(),
        ]
        return await run_plan_script(
            self.redis,
            ledger.scripts.plan,
            self.keys,
            shard,
            common,
            mode,
            args,
            deadline_s=ledger.deadline_s,
        )

    async def put(self, plan_id: str, plan: Plan) -> bool:
        """Defines ``plan_id`` or replaces its definition on every shard; True when it was
        created (it was not on shard 0). PlanBusy while it is being deleted."""
        now, txid = self.ledger.clock(), new_transaction_id()
        # after the stamps of the plan's and the default flag's last changes (shard 0 hears of
        # each last): a put made after another always stands
        last = await store_call(
            self.redis.hmget(self.keys.plan_stamps(0), [f"v:{plan_id}", "dv"]),
            self.ledger.deadline_s,
        )
        after = max((int(_text(v).split(":", 1)[0]) + 1 for v in last if v), default=0)
        args = [*put_args(plan), put_stamp(max(now, after), txid)]
        reply: Any = None
        for shard in last_to_first(self.keys):
            reply = await self._run(shard, plan_id, "put", args, now=now, txid=txid)
        return int(reply[0]) == 1

    async def get(self, plan_id: str) -> Plan:
        raw = await store_call(
            self.redis.hget(self.keys.plans(0), f"d:{plan_id}"), self.ledger.deadline_s
        )
        if raw is None:
            raise UnknownPlan(f"plan {plan_id} does not exist")
        return plan_from_json(raw)

    async def list(self) -> dict[str, Plan]:
        """Every plan, by id."""
        raw: dict[Any, Any] = await store_call(
            self.redis.hgetall(self.keys.plans(0)), self.ledger.deadline_s
        )
        found = {_text(k)[2:]: v for k, v in raw.items() if _text(k).startswith("d:")}
        return {p: plan_from_json(found[p]) for p in sorted(found)}

    async def accounts(self, plan_id: str) -> int:
        """How many accounts are on ``plan_id`` (on every shard)."""
        return (await self.accounts_on([plan_id]))[plan_id]

    async def accounts_on(self, plan_ids: Sequence[str]) -> dict[str, int]:
        """How many accounts are on each of ``plan_ids`` (on every shard): one read a shard."""
        totals = dict.fromkeys(plan_ids, 0)
        if not plan_ids:
            return totals
        fields = [f"n:{p}" for p in plan_ids]
        for shard in range(self.keys.shards):
            counts = await store_call(
                self.redis.hmget(self.keys.plans(shard), fields), self.ledger.deadline_s
            )
            for p, n in zip(plan_ids, counts, strict=True):
                totals[p] += int(n or 0)
        return totals

    async def remove(self, plan_id: str) -> None:
        """Deletes ``plan_id`` from every shard. UnknownPlan if no shard has it; PlanInUse
        (changing nothing) while accounts are on it; PlanBusy if a concurrent delete gave up
        meanwhile."""
        now, txid = self.ledger.clock(), new_transaction_id()
        order = last_to_first(self.keys)
        found, accounts = 0, 0
        retired: builtins.list[int] = []
        try:
            for shard in order:
                here, n = await self._run(shard, plan_id, "retire", now=now, txid=txid)
                if int(here):
                    retired.append(shard)
                found += int(here)
                accounts += int(n)
        except SidecarError:
            await self._unretire(plan_id, retired, now=now, txid=txid)
            raise
        if not found:
            raise UnknownPlan(f"plan {plan_id} does not exist")
        if accounts:
            await self._unretire(plan_id, retired, now=now, txid=txid)
            raise PlanInUse(
                f"plan {plan_id} is the plan of {accounts} account(s): move them to another "
                "plan (or none) first",
                accounts=accounts,
            )
        done: builtins.list[int] = []
        try:
            for shard in order:
                await self._run(shard, plan_id, "delete", now=now, txid=txid)
                done.append(shard)
        except SidecarError:
            # (shard 0 goes last: the plan is still visible, and a DELETE again finishes it)
            await self._unretire(plan_id, [s for s in retired if s not in done], now=now, txid=txid)
            raise

    async def _unretire(
        self, plan_id: str, shards: builtins.list[int], *, now: int, txid: str
    ) -> None:
        """Clears the delete's mark where it set it, as far as Redis answers: one left behind
        refuses changes to the plan (PlanBusy) until a DELETE is made again."""
        for shard in shards:
            try:
                await self._run(shard, plan_id, "unretire", now=now, txid=txid)
            except SidecarError as e:
                log.warning("plan %s: shard %d still marked by a delete: %s", plan_id, shard, e)
