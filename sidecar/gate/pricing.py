"""Route costs: a TOML rules file maps method + path patterns to a cost and an optional rate limit.

The first matching rule wins; unmatched routes cost ``default_cost`` (1 unless the file
says otherwise, and ``"deny"`` refuses them). A cost of 0 means free but still
authenticated. Example::

    default_cost = 1
    case_insensitive = false   # true: patterns and paths compare lower-cased (casefold)
    [[route]]
    name = "images"
    methods = ["POST"]
    path = "/v1/images/*"
    cost = 10
    rate_limit = { requests = 5, period_ms = 1000 }

Patterns are shell-style globs (``*`` also crosses ``/``) matched against the request's
canonical path (sidecar/gate/paths.py), never the raw URI: without the query string, decoded
(``/%69mages`` is ``/images``, ``%3A`` is ``:``), with ``;`` parameters removed,
``.``/``..``/``//`` resolved, and ``%25``, ``%3F``, ``%23``, ``%3B`` kept escaped in upper
case. A trailing slash is kept, so ``/v1/status`` does not match ``/v1/status/``. Paths are
case-sensitive unless ``case_insensitive = true`` (for an upstream that routes
case-insensitively). A pattern that no canonical path can match (another percent-escape,
a ``;``, a backslash, ``//``, ``/./`` or ``/../``) is refused when the file is loaded, so a
``deny`` rule cannot silently match nothing.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, ValidationError

from sidecar.ledger.results import (
    RateLimit,
)
from sidecar.ledger.units import MAX_CREDITS

Cost = Annotated[StrictInt, Field(ge=0, le=MAX_CREDITS)] | Literal["deny"]


class _RateLimitFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    requests: Annotated[StrictInt, Field(ge=1, le=1_000_000_000)]
    period_ms: Annotated[StrictInt, Field(ge=1, le=366 * 86_400_000)] = 1000
    burst: Annotated[StrictInt, Field(ge=1, le=1_000_000_000)] | None = None


class _RouteFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
    path: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    methods: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{1,16}$")]] | None = None
    cost: Cost
    rate_limit: _RateLimitFile | None = None


class _PricingFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    default_cost: Cost = 1
    case_insensitive: bool = False
    route: list[_RouteFile] = []


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    path: str
    methods: frozenset[str] | None
    cost: int | None  # None: deny
    rate_limit: RateLimit | None

    def matches(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and fnmatchcase(path, self.path)


DEFAULT_RULE = Rule("default", "*", None, 1, None)


@dataclass(frozen=True, slots=True)
class Pricing:
    rules: tuple[Rule, ...] = ()
    default: Rule = DEFAULT_RULE
    case_insensitive: bool = False  # the rules' patterns are casefolded already

    def match(self, method: str, path: str) -> Rule:
        """The rule for ``path``, a canonical path (sidecar/gate/paths.py)."""
        path = path.split("?", 1)[0]
        if self.case_insensitive:
            path = path.casefold()
        method = method.upper()
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return self.default


class PricingError(ValueError):
    """The rules file is unreadable or invalid; the message names the problem."""


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_KEPT_ESCAPES = frozenset({"%25", "%3F", "%23", "%3B"})
_DOT_SEGMENT = re.compile(r"(?:^|/)\.{1,2}(?:/|$)")


def _pattern(raw: str, case_insensitive: bool) -> str:
    """The pattern as matched (escapes in upper case, casefolded if asked), or ValueError
    if no canonical path can match it."""
    pattern = _ESCAPE.sub(lambda m: m[0].upper(), raw)
    for escape in _ESCAPE.findall(pattern):
        if f"%{escape}" not in _KEPT_ESCAPES:
            raise ValueError(
                f"%{escape} never matches: paths are matched decoded, write the character "
                "itself (only %25, %3F, %23 and %3B stay escaped)"
            )
    for bad, why in (
        (";", "; parameters are removed from paths before matching"),
        ("\\", "paths with a backslash are refused"),
        ("//", "repeated slashes are merged"),
    ):
        if bad in pattern:
            raise ValueError(f"{bad!r} never matches: {why}")
    if _DOT_SEGMENT.search(pattern):
        raise ValueError("a . or .. segment never matches: dot segments are resolved")
    return pattern.casefold() if case_insensitive else pattern


def load_pricing(path: Path | None) -> Pricing:
    if path is None:
        return Pricing()
    try:
        parsed = _PricingFile.model_validate(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PricingError(f"{path}: {e}") from None
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise PricingError(f"{path}: {loc}: {err['msg']}") from None
    patterns = []
    for i, r in enumerate(parsed.route):
        try:
            patterns.append(_pattern(r.path, parsed.case_insensitive))
        except ValueError as e:
            raise PricingError(f"{path}: route.{i}.path: {e}") from None
    rules = tuple(
        Rule(
            name=r.name,
            path=pattern,
            methods=frozenset(m.upper() for m in r.methods) if r.methods else None,
            cost=None if r.cost == "deny" else r.cost,
            rate_limit=(
                RateLimit(
                    r.rate_limit.requests,
                    r.rate_limit.period_ms,
                    r.rate_limit.burst or r.rate_limit.requests,
                )
                if r.rate_limit
                else None
            ),
        )
        for r, pattern in zip(parsed.route, patterns, strict=True)
    )
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise PricingError(f"{path}: route names must be unique (they key the route's rate limit)")
    default_cost = None if parsed.default_cost == "deny" else parsed.default_cost
    return Pricing(rules, Rule("default", "*", None, default_cost, None), parsed.case_insensitive)
