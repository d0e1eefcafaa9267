"""The data dir holds the SQL ledger (customer data), the embedded Redis's AOF and the tokens:
what the sidecar creates there is its owner's only, whatever the umask: directories 0700,
files 0600. Existing directories and files keep their modes (an operator's choice).

SQLite creates a database's ``-wal`` and ``-shm`` files with the database file's mode, so
creating that file 0600 first covers them; the embedded Redis runs with umask 077
(:data:`PRIVATE_UMASK`), so its AOF directory, AOF files and log are private too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Creates ``path`` and its missing parents with mode 0700; returns ``path``."""
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)  # exactly, whatever the umask
    return path


def private_file(path: Path) -> Path:
    """Creates ``path`` empty with mode 0600 unless it exists (in a private directory)."""
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path
