"""``python -m sidecar`` and the ``credit-sidecar`` command: the CLI (sidecar/cli/)."""

import sys

from sidecar.runtime.reload import hold_reloads


def main() -> None:
    # `serve` holds SIGHUP (a reload) from here, before the CLI's imports take their second:
    # until its handler is installed, the signal's default action would kill it.
    if sys.argv[1:2] == ["serve"]:
        hold_reloads()
    from sidecar.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
