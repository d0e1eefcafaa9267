"""The ledger's account-settings calls (account.lua): create or replace an account's settings,
or change some of them in one atomic step. A base of :class:`sidecar.ledger.calls.Ledger`,
which supplies the script runner."""

from __future__ import annotations

from typing import Any

from redis.commands.core import AsyncScript

from sidecar.ledger import replies
from sidecar.ledger.arguments import KEEP, KEEP_ARG, Keep, setting_arg
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
    ) -> bool:
        """Creates the account or replaces all its settings; True when it was created."""
        return replies.account(
            await self._account(
                account, "put", overdraft_limit, low_balance_threshold, rate_limit, spend_limit
            )
        )

    async def update_account(
        self,
        account: str,
        *,
        overdraft_limit: int | Keep = KEEP,
        low_balance_threshold: int | Keep | None = KEEP,
        rate_limit: RateLimit | Keep | None = KEEP,
        spend_limit: SpendLimit | Keep | None = KEEP,
    ) -> AccountConfig:
        """Changes only the settings given (None removes one) of an existing account, in one
        atomic step: a concurrent change of another setting is never undone. Returns every
        setting after the change."""
        reply = await self._account(
            account, "patch", overdraft_limit, low_balance_threshold, rate_limit, spend_limit
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
        ]
        return await self.run_script(self.scripts.account, account, [], args)
