"""Integers from outside text (headers, query strings, settings, the command line): ASCII only.

Python's ``int()`` also accepts other scripts' digits (``int("٣") == 3``), ``_`` separators,
a ``+`` sign and surrounding whitespace, and ``str.isdigit()`` is true for ``²`` which
``int()`` then refuses. Every parser of external numbers goes through :func:`parse_ascii_int`
instead, so ``٣``, ``1_000``, `` 5`` and ``+5`` are refused the same way everywhere.
"""

from __future__ import annotations

import re

_SIGNED = re.compile(r"-?[0-9]{1,20}")
_UNSIGNED = re.compile(r"[0-9]{1,20}")


def parse_ascii_int(text: str, lo: int, hi: int) -> int:
    """``text`` as an integer in ``[lo, hi]``: ASCII digits with an optional ``-`` (only when
    ``lo`` is negative), nothing else; ValueError("must be an integer in [lo, hi]") otherwise."""
    pattern = _SIGNED if lo < 0 else _UNSIGNED
    if not pattern.fullmatch(text) or not lo <= int(text) <= hi:
        raise ValueError(f"must be an integer in [{lo}, {hi}]")
    return int(text)
