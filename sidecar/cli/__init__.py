"""The ``credit-sidecar`` command line: one click group, one module per command family."""

from __future__ import annotations

import click

from sidecar import __version__
from sidecar.cli.accounts import accounts, balance, grants
from sidecar.cli.activity import holds, refunds, transactions
from sidecar.cli.billing import billing, packages, worker
from sidecar.cli.config import config
from sidecar.cli.deadletters import dead_letters
from sidecar.cli.keys import keys
from sidecar.cli.outbox import outbox
from sidecar.cli.serve import serve
from sidecar.cli.sql import archive_cmd, migrate_cmd, rebuild_cmd, reconcile_cmd, writer


@click.group()
@click.version_option(__version__)
def main() -> None:
    """credit-sidecar: prepaid credits enforced on every request."""


main.add_command(serve)
main.add_command(keys)
main.add_command(outbox)
main.add_command(writer)
main.add_command(migrate_cmd)
main.add_command(reconcile_cmd)
main.add_command(rebuild_cmd)
main.add_command(archive_cmd)
main.add_command(packages)
main.add_command(billing)
main.add_command(worker)
main.add_command(accounts)
main.add_command(balance)
main.add_command(grants)
main.add_command(transactions)
main.add_command(holds)
main.add_command(refunds)
main.add_command(dead_letters)
main.add_command(config)
