"""The ``credit-sidecar`` command line: one click group, one module per command family."""

from __future__ import annotations

import click

from sidecar import __version__
from sidecar.cli.keys import keys
from sidecar.cli.serve import serve


@click.group()
@click.version_option(__version__)
def main() -> None:
    """credit-sidecar: prepaid credits enforced on every request."""


main.add_command(serve)
main.add_command(keys)
