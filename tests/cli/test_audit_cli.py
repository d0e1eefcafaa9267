"""`credit-sidecar audit list/verify` and the archive run's audit entry, against a real `serve`
(its writer chains the entries into SQL) as a user runs them."""

from __future__ import annotations

import json
import time

from tests.cli.conftest import cli


def entries(served: dict[str, str], *args: str) -> list[dict[str, object]]:
    out = cli(served, "audit", "list", "--json", *args)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["entries"])


def test_archive_runs_and_admin_changes_are_listed_and_the_chain_verifies(
    served: dict[str, str],
) -> None:
    out = cli(served, "archive", "--before", "400d", "--reason", "yearly clean-up")
    assert out.returncode == 0, out.stderr
    made = cli(served, "tokens", "create", "--name", "audited", "--scope", "read")
    assert made.returncode == 0, made.stderr
    deadline = time.monotonic() + 30
    while not entries(served, "--action", "token.create"):  # the writer's lag
        assert time.monotonic() < deadline, "the writer did not write the audit entries"
        time.sleep(0.2)
    assert entries(served, "--action", "archive.run", "--until", "2000-01-01T00:00:00Z") == []
    runs = entries(served, "--action", "archive.run", "--since", "2000-01-01T00:00:00Z")
    assert len(runs) == 1 and runs[0]["reason"] == "yearly clean-up"
    assert runs[0]["token_id"] == "cli" and "archive" in str(runs[0]["token_name"])
    table = cli(served, "audit", "list")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:4] == [
        "SEQ",
        "AT",
        "TOKEN",
        "ACTION",
    ]
    bad = cli(served, "audit", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr
    verified = cli(served, "audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout
