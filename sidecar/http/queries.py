"""Query-parameter models of the HTTP routes (validated by the registry: a bad or unknown
parameter is a 422 naming it; a parameter given twice is refused). Bodies and path parameters
are in sidecar/http/schemas.py."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from sidecar.asciiint import parse_ascii_int
from sidecar.http.schemas import Id
from sidecar.ledger.units import MAX_TIMESTAMP_MS, parse_rfc3339
from sidecar.persistence.projection import TXN_TYPES

# -- query parameters ------------------------------------------------------------------------
# Each parameter's first value, a string; an empty one is absent. Errors name the parameter
# and say what it must be ("limit: must be an integer in [1, 1000]").


def _int_in(lo: int, hi: int) -> Callable[[object], object]:
    def parse(v: object) -> object:
        if not isinstance(v, str):
            return v
        try:
            return parse_ascii_int(v, lo, hi)
        except ValueError as e:
            raise PydanticCustomError("query_int", str(e)) from None

    return parse


def _one_of(choices: Collection[str]) -> Callable[[object], object]:
    message = f"must be one of {', '.join(sorted(choices))}"

    def parse(v: object) -> object:
        if v not in choices:
            raise PydanticCustomError("query_choice", message)
        return v

    return parse


# A query string decodes "+" to a space: "…T10:00:00+02:00" unencoded arrives as "… 02:00".
_SPACED_OFFSET = re.compile(r" ([0-9][0-9]:[0-9][0-9])$")


def _query_time(raw: object) -> object:
    """An RFC 3339 timestamp with an offset (or unix milliseconds) as unix milliseconds."""
    if not isinstance(raw, str):
        return raw
    if raw.isascii() and raw.isdigit() and len(raw) <= 16:
        ms = int(raw)
    else:
        try:
            ms = parse_rfc3339(_SPACED_OFFSET.sub(r"+\1", raw))
        except ValueError:  # MissingOffset included
            raise PydanticCustomError(
                "query_time",
                "must be an RFC 3339 timestamp with an offset (e.g. 2030-01-01T00:00:00Z) or "
                "unix milliseconds",
            ) from None
    if not 0 <= ms <= MAX_TIMESTAMP_MS:
        raise PydanticCustomError("query_time", "out of range")
    return ms


MAX_SEQ = 2**63 - 1
PageSize = Annotated[
    int,
    BeforeValidator(_int_in(1, 1000)),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 1000}),
]
Seq = Annotated[
    int,
    BeforeValidator(_int_in(1, MAX_SEQ)),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_SEQ}),
]
Shard = Annotated[
    int,
    BeforeValidator(_int_in(0, 2**31 - 1)),
    WithJsonSchema({"type": "integer", "minimum": 0}),
]
QueryTime = Annotated[
    int,
    BeforeValidator(_query_time),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 with an offset, or unix milliseconds",
        }
    ),
]
TxnType = Annotated[
    str,
    BeforeValidator(_one_of(TXN_TYPES)),
    WithJsonSchema({"type": "string", "enum": sorted(TXN_TYPES)}),
]
Interval = Annotated[
    Literal["hour", "day"],
    BeforeValidator(_one_of(("hour", "day"))),
    WithJsonSchema({"type": "string", "enum": ["hour", "day"]}),
]
UsageBy = Annotated[
    Literal["key", "route"],
    BeforeValidator(_one_of(("key", "route"))),
    WithJsonSchema({"type": "string", "enum": ["key", "route"]}),
]
Format = Annotated[
    Literal["json", "csv"],
    BeforeValidator(_one_of(("json", "csv"))),
    WithJsonSchema({"type": "string", "enum": ["json", "csv"]}),
]
EVENT_STATUSES = ("received", "processing", "retry", "processed", "ignored", "dead")
EventStatus = Annotated[
    str,
    BeforeValidator(_one_of(EVENT_STATUSES)),
    WithJsonSchema({"type": "string", "enum": list(EVENT_STATUSES)}),
]
Flag = Annotated[
    bool,
    BeforeValidator(lambda v: v == "true" if isinstance(v, str) else v),
    WithJsonSchema({"type": "boolean"}),
]


class Query(BaseModel):
    """Query parameters; unknown ones are refused by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LaxQuery(BaseModel):
    """Query parameters; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class NoQuery(Query):
    pass


class AccountsQuery(Query):
    limit: PageSize = Field(50, description="page size")
    after: Id | None = Field(None, description="the last account id of the previous page")
    prefix: Id | None = Field(None, description="only ids starting with this")


class TransactionsQuery(Query):
    limit: PageSize = Field(100, description="page size")
    before: Seq | None = Field(
        None, description="only transactions with a seq below this (the previous page's `next`)"
    )
    type: TxnType | None = Field(None, description="only this type")
    format: Format | None = Field(None, description="the format")


class UsageQuery(Query):
    interval: Interval = Field("hour", description="the bucket size")
    until: QueryTime | None = Field(
        None, description="end, exclusive (default: the current interval's end)"
    )
    since: QueryTime | None = Field(None, description="start (default: 7 days before `until`)")
    by: UsageBy | None = Field(
        None, description="also split each point by API key or by route (`groups`)"
    )


class DeadLettersQuery(LaxQuery):
    shard: Shard = Field(0, description="the shard")
    count: PageSize = Field(100, description="at most this many")


class PackagesQuery(LaxQuery):
    active: Flag = Field(False, description="only active packages")


class EventsQuery(LaxQuery):
    status: EventStatus | None = Field(None, description="only events in this state")
    limit: PageSize = Field(100, description="at most this many")


class AuditQueryParams(Query):
    account: Id | None = Field(None, description="only changes to this account")
    token_id: Annotated[str, StringConstraints(max_length=64, pattern=r"^[a-z0-9:]+$")] | None = (
        Field(None, description="only changes by this token (bootstrap:admin: SIDECAR_ADMIN_TOKEN)")
    )
    action: Annotated[str, StringConstraints(max_length=64, pattern=r"^[a-z_.]+$")] | None = Field(
        None, description="only this action (e.g. grant.create)"
    )
    since: QueryTime | None = Field(None, description="only changes at or after this")
    until: QueryTime | None = Field(None, description="only changes before this")
    before: Seq | None = Field(None, description="only entries with a seq below this (paging)")
    limit: PageSize = Field(50, description="page size")
