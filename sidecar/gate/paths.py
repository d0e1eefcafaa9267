"""The canonical form of a request path, so that the sidecar prices the route the upstream serves.

A proxy hands the sidecar the URI as the client sent it (nginx ``$request_uri``, Caddy and
Traefik ``X-Forwarded-Uri``, Envoy's ``:path``) and forwards the same raw URI to the upstream,
which decodes it before routing. Matching pricing globs on the raw text would let
``/%69nternal/x`` (the upstream's ``/internal/x``) or ``/v1/./images/a`` escape their rules.
:func:`canonical_path` maps every spelling of a path to one string, in the spirit of RFC 3986
section 6.2.2 (syntax-based normalisation) and section 5.2.4 (remove_dot_segments), and refuses
what has no single safe reading (:class:`InvalidPath`).

The canonical path is the decoded path the upstream routes on, with only four characters kept
escaped because decoding them would change the path's structure: ``%25`` (%), ``%3F`` (?),
``%23`` (#) and ``%3B`` (;), in upper-case hex. In detail:

- the query string (from the first ``?``) is dropped: pricing ignores it;
- percent-escapes are decoded: the unreserved characters of RFC 3986 section 2.3 (ALPHA DIGIT
  ``-._~``, section 6.2.2.2) and every other character too (``%3A`` is ``:``; UTF-8 sequences
  become their characters), because upstream frameworks decode them all before routing;
- ``;`` path parameters (RFC 3986 section 3.3) are removed from every segment, as Tomcat,
  Jetty and Spring do before routing (``/v1/images;x=1/a`` is ``/v1/images/a``); an upstream
  that keeps them sees a path that no longer routes to a cheaper rule's handler;
- ``.`` and ``..`` segments are removed (section 5.2.4), also when spelled ``%2e``; empty
  segments are dropped (``//`` is ``/``); a trailing ``/`` is kept (``/a/`` is not ``/a``);
- case is kept (RFC 3986 paths are case-sensitive; the pricing file can opt out).

Refused, each with a message naming the problem: an encoded ``/`` or ``\\`` (``%2F``, ``%5C``:
upstreams disagree on whether it separates segments), a raw ``\\`` or ``#``, a control
character (raw or encoded, including NUL), a path not starting with ``/``, a ``..`` above the
root, a dot segment with parameters (``..;x``: Tomcat climbs, others do not), a ``%`` not
followed by two hex digits, and anything that is not UTF-8 (a raw byte that aiohttp decoded
with surrogateescape, or escapes that do not form UTF-8, including overlong forms).

``canonical_path(canonical_path(p)) == canonical_path(p)`` for every accepted ``p``.
"""

from __future__ import annotations

import re

_HEX = frozenset("0123456789abcdefABCDEF")
# Kept escaped: decoding them would end the path (?), start a fragment (#), start a path
# parameter (;) or start a new escape (%).
_KEPT = {"%": "%25", "?": "%3F", "#": "%23", ";": "%3B"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidPath(ValueError):
    """The path cannot be canonicalised safely; the message says why (never echoes the path)."""


def canonical_path(target: str) -> str:
    """The canonical form of ``target`` (an origin-form request target: path and optional
    query) as described in this module's docstring; raises :class:`InvalidPath`."""
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath("the URI is not valid UTF-8") from None
    if _CONTROL.search(target):
        raise InvalidPath("the URI contains a control character")
    path = target.partition("?")[0]
    if not path.startswith("/"):
        raise InvalidPath("the path must start with /")
    if "\\" in path:
        raise InvalidPath("the path contains a backslash")
    if "#" in path:
        raise InvalidPath("the path contains a #")
    out: list[str] = []
    segment = ""
    for raw in path[1:].split("/"):
        name, params, _ = raw.partition(";")
        segment = _decode(name)
        if segment in (".", ".."):
            if params:
                raise InvalidPath("a dot segment with ;parameters (..;) is ambiguous")
            if segment == "..":
                if not out:
                    raise InvalidPath("the path climbs above the root (..)")
                out.pop()
        elif segment:
            out.append(segment)
    # A trailing slash survives (also after a final dot segment, as in RFC 3986 5.2.4).
    trailing = "/" if out and segment in ("", ".", "..") else ""
    return "/" + "/".join(out) + trailing


def _decode(raw: str) -> str:
    """One segment (without its parameters) with every escape decoded but the kept four."""
    if "%" not in raw:
        return raw
    out: list[str] = []
    pending = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] != "%":
            if pending:
                out.append(_text(pending))
                pending.clear()
            out.append(raw[i])
            i += 1
            continue
        hex_digits = raw[i + 1 : i + 3]
        if len(hex_digits) != 2 or not _HEX.issuperset(hex_digits):
            raise InvalidPath("a % that does not start a percent-escape (%XX)")
        pending.append(int(hex_digits, 16))
        i += 3
    if pending:
        out.append(_text(pending))
    return "".join(out)


def _text(escaped: bytearray) -> str:
    """A run of escaped bytes as text, refusing what would change the path's structure."""
    try:
        text = escaped.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPath("the path's percent-escapes are not UTF-8") from None
    if "/" in text:
        raise InvalidPath("the path contains an encoded slash (%2F)")
    if "\\" in text:
        raise InvalidPath("the path contains an encoded backslash (%5C)")
    if _CONTROL.search(text):
        raise InvalidPath("the path contains an encoded control character")
    return "".join(_KEPT.get(c, c) for c in text)
