"""Route costs: a TOML rules file maps method + path patterns to a cost and an optional rate limit.

The first matching rule wins; unmatched routes cost ``default_cost`` (1 unless the file
says otherwise, and ``"deny"`` refuses them). A cost of 0 means free but still
authenticated. Paths match with shell-style globs (``*`` also crosses ``/``), without the
query string. Example::

    default_cost = 1
    [[route]]
    name = "images"
    methods = ["POST"]
    path = "/v1/images/*"
    cost = 10
    rate_limit = { requests = 5, period_ms = 1000 }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, ValidationError

from sidecar.ledger import MAX_CREDITS, RateLimit

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

    def match(self, method: str, path: str) -> Rule:
        path = path.split("?", 1)[0]
        method = method.upper()
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return self.default


class PricingError(ValueError):
    """The rules file is unreadable or invalid; the message names the problem."""


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
    rules = tuple(
        Rule(
            name=r.name,
            path=r.path,
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
        for r in parsed.route
    )
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise PricingError(f"{path}: route names must be unique (they key the route's rate limit)")
    default_cost = None if parsed.default_cost == "deny" else parsed.default_cost
    return Pricing(rules, Rule("default", "*", None, default_cost, None))
