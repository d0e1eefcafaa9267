"""The ledger's account-settings calls (account.lua): create or replace an account's settings,
or change some of them in one atomic step. A base of :class:`sidecar.ledger.calls.Ledger`,
which supplies the script runner."""

from __future__ import annotations

from typing import Any

from redis.commands.core import AsyncScript

from sidecar.ledger import replies
from sidecar.ledger.arguments import (
    DEFAULT_PLAN,
    DEFAULT_PLAN_ARG,
    KEEP,
    KEEP_ARG,
    DefaultPlan,
    Keep,
    setting_arg,
)
from sidecar.ledger.results import AccountConfig, RateLimit, SpendLimit
from sidecar.lua import Scripts


class AccountCalls:
    """configure_account / update_account; the Ledger runs the script."""

    scripts: Scripts

    async def run_script(
        self,
        script: AsyncScript,
        account: str,
        extra_keys: list[str],
        args: list[str | int],
        txid: str | None = None,
        deadline_ms: int | None = None,
    ) -> Any:
        raise NotImplementedError

    async def configure_account(
        self,
        account: str,
        *,
        overdraft_limit: int = 0,
        low_balance_threshold: int | None = None,
        rate_limit: RateLimit | None = None,
        spend_limit: SpendLimit | None = None,
        plan: str | DefaultPlan | None = DEFAULT_PLAN,
        plan_anchor: int | None = None,
    ) -> bool:
        """Creates the account or replaces all its settings; True when it was created."""
        config = await self.put_account(
            account,
            overdraft_limit=overdraft_limit,
            low_balance_threshold=low_balance_threshold,
            rate_limit=rate_limit,
            spend_limit=spend_limit,
            plan=plan,
            plan_anchor=plan_anchor,
        )
        return config.created

    async def put_account(
        self,
        account: str,
        *,
        overdraft_limit: int = 0,
        low_balance_threshold: int | None = None,
        rate_limit: RateLimit | None = None,
        spend_limit: SpendLimit | None = None,
        plan: str | DefaultPlan | None = DEFAULT_PLAN,
        plan_anchor: int | None = None,
    ) -> AccountConfig:
        """Creates the account or replaces all its settings (``plan`` left out: the default
        plan for a new account, none for one that exists; ``plan_anchor`` None: unchanged
        while the plan is, else now). Returns every setting after the call."""
        reply = await self._account(
            account,
            "put",
            overdraft_limit,
            low_balance_threshold,
            rate_limit,
            spend_limit,
            plan,
            plan_anchor,
        )
        return replies.account_config(reply)

    async def update_account(
        self,
        account: str,
        *,
        overdraft_limit: int | Keep = KEEP,
        low_balance_threshold: int | Keep | None = KEEP,
        rate_limit: RateLimit | Keep | None = KEEP,
        spend_limit: SpendLimit | Keep | None = KEEP,
        plan: str | Keep | None = KEEP,
        plan_anchor: int | None = None,
    ) -> AccountConfig:
        """Changes only the settings given (None removes one) of an existing account, in one
        atomic step: a concurrent change of another setting is never undone. Returns every
        setting after the change."""
        reply = await self._account(
            account,
            "patch",
            overdraft_limit,
            low_balance_threshold,
            rate_limit,
            spend_limit,
            plan,
            plan_anchor,
        )
        return replies.account_config(reply)

    async def _account(
        self,
        account: str,
        mode: str,
        overdraft_limit: int | Keep,
        low_balance_threshold: int | Keep | None,
        rate_limit: RateLimit | Keep | None,
        spend_limit: SpendLimit | Keep | None,
        plan: str | Keep | DefaultPlan | None,
        plan_anchor: int | None,
    ) -> Any:
        rl: list[str | int]
        if isinstance(rate_limit, Keep):
            rl = [KEEP_ARG, "", ""]
        elif rate_limit is None:
            rl = ["", "", ""]
        else:
            rl = [rate_limit.requests, rate_limit.period_ms, rate_limit.burst]
        args: list[str | int] = [
            setting_arg(overdraft_limit),
            setting_arg(low_balance_threshold),
            *rl,
            spend_limit.spec() if isinstance(spend_limit, SpendLimit) else setting_arg(spend_limit),
            mode,
            DEFAULT_PLAN_ARG if isinstance(plan, DefaultPlan) else setting_arg(plan),
            "" if plan_anchor is None else plan_anchor,
        ]
        return await self.run_script(self.scripts.account, account, [], args)
