"""The ``credit-sidecar`` command line: one click group, one module per command family.

Commands are imported when they run (click's documented lazy-loading pattern): a command pays
for its own imports only (an admin API call needs no SQLAlchemy, Stripe or server code), which
keeps a CLI call well under a second of start-up."""

from __future__ import annotations

import importlib

import click

from sidecar import __version__

# name -> "module:attribute" of every command
COMMANDS = {
    "accounts": "sidecar.cli.accounts:accounts",
    "archive": "sidecar.cli.sql:archive_cmd",
    "audit": "sidecar.cli.audit:audit",
    "balance": "sidecar.cli.accounts:balance",
    "billing": "sidecar.cli.billing:billing",
    "config": "sidecar.cli.config:config",
    "dead-letters": "sidecar.cli.deadletters:dead_letters",
    "grants": "sidecar.cli.accounts:grants",
    "holds": "sidecar.cli.activity:holds",
    "keys": "sidecar.cli.apikeys:keys",
    "migrate": "sidecar.cli.sql:migrate_cmd",
    "outbox": "sidecar.cli.outbox:outbox",
    "packages": "sidecar.cli.billing:packages",
    "plans": "sidecar.cli.plans:plans",
    "rebuild": "sidecar.cli.sql:rebuild_cmd",
    "reconcile": "sidecar.cli.sql:reconcile_cmd",
    "refunds": "sidecar.cli.activity:refunds",
    "serve": "sidecar.cli.serve:serve",
    "tokens": "sidecar.cli.tokens:tokens",
    "transactions": "sidecar.cli.activity:transactions",
    "worker": "sidecar.cli.billing:worker",
    "writer": "sidecar.cli.sql:writer",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command) and command.name == cmd_name, target
        return command


@click.group(cls=LazyGroup)
@click.version_option(__version__)
def main() -> None:
    """credit-sidecar: prepaid credits enforced on every request."""
