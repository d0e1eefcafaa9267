"""The client's version and the sidecar versions it speaks to.

``SUPPORTED_SIDECAR`` is a half-open range ``[lowest, below)`` of the sidecar's
``/openapi.json`` ``info.version``: a sidecar older than ``lowest`` fails every call with
:class:`~credit_sidecar.errors.IncompatibleSidecar`; one at ``below`` or newer is logged as a
warning and used (upgrading the sidecar first must not take the apps down). Besides the range,
each call checks that the sidecar's spec has its operation (method and path), so a sidecar too
old for one call fails that call, and nothing else.
"""

from __future__ import annotations

__version__ = "0.1.0"

SUPPORTED_SIDECAR: tuple[str, str] = ("0.1.0", "0.2.0")


def parse(version: str) -> tuple[int, ...]:
    """``"1.2.3"`` (a pre-release or local suffix ignored) as ``(1, 2, 3)``."""
    out: list[int] = []
    for part in version.split("+")[0].split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        out.append(int(digits or 0))
        if digits != part:
            break
    while len(out) < 3:
        out.append(0)
    return tuple(out)


def supports(version: str, supported: tuple[str, str] = SUPPORTED_SIDECAR) -> bool:
    """Whether a sidecar of ``version`` is within ``supported``."""
    lowest, below = supported
    return parse(lowest) <= parse(version) < parse(below)
