"""Stripe's wire format as the fake reads and answers it: nested form decoding, the error
body, and typed access to parameters (Stripe refuses unknown parameters; values arrive as
strings and each endpoint converts the ones it knows).

https://docs.stripe.com/api/errors (error shape), https://docs.stripe.com/api/metadata
(metadata limits), https://docs.stripe.com/api/expanding_objects (``expand``)."""

from __future__ import annotations

import re
import secrets
import string
import time
from collections.abc import Iterable
from typing import Any, TypeAlias

FormValue: TypeAlias = str | list["FormValue"] | dict[str, "FormValue"]
"""A decoded form parameter: leaves stay strings (``"true"``, ``"2"``), as Stripe's wire has
them; each endpoint converts the ones it knows."""

Params: TypeAlias = dict[str, FormValue]
StripeObject: TypeAlias = dict[str, Any]

_ALNUM = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


def now() -> int:
    return int(time.time())


class FormDecodeError(ValueError):
    """A form body or query string that does not decode into nested parameters."""


_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def _split_key(key: str) -> list[str]:
    m = _KEY.match(key)
    if m is None:
        raise FormDecodeError(f"malformed parameter name {key!r}")
    segments = [m.group(1), *_SEGMENT.findall(m.group(2))]
    if "" in segments[:-1]:
        raise FormDecodeError(f"'[]' only at the end of a parameter name: {key!r}")
    return segments


def _listify(node: Any, name: str) -> FormValue:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return list(node)
    assert isinstance(node, dict)
    if node and all(k.isdigit() for k in node):
        indices = sorted(int(k) for k in node)
        if indices != list(range(len(indices))):
            raise FormDecodeError(f"{name}: list indices must be 0..n-1, got {indices}")
        return [_listify(node[str(i)], f"{name}[{i}]") for i in indices]
    return {k: _listify(v, f"{name}[{k}]") for k, v in node.items()}


def decode_form(pairs: Iterable[tuple[str, str]]) -> Params:
    """Stripe's nested form encoding to nested dicts and lists.

    ``a[b]=1`` is ``{"a": {"b": "1"}}``; a container whose keys are all the indices 0..n-1
    (``line_items[0][price]``) becomes a list; ``expand[]=x&expand[]=y`` a list too. Values stay
    strings. Raises ``FormDecodeError`` for malformed names, a name given twice, a name that is
    both a value and a container, and gaps in list indices.
    """
    root: dict[str, Any] = {}
    for key, value in pairs:
        segments = _split_key(key)
        node: Any = root
        for i, segment in enumerate(segments[:-1]):
            is_list = i == len(segments) - 2 and segments[-1] == ""
            child = node.setdefault(segment, [] if is_list else {})
            if not isinstance(child, list if is_list else dict):
                raise FormDecodeError(f"{key!r} conflicts with another parameter")
            node = child
        leaf = segments[-1]
        if leaf == "":
            assert isinstance(node, list)
            node.append(value)
        elif leaf in node:
            raise FormDecodeError(f"{key!r} is given more than once or conflicts with another")
        else:
            node[leaf] = value
    return {k: _listify(v, k) for k, v in root.items()}


class StripeError(Exception):
    """An error response in Stripe's shape: ``{"error": {"type", "message", ...}}``."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.error: dict[str, Any] = {"type": type_, "message": message}
        if code is not None:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.error["param"] = param
        self.error.update(extra or {})

    def body(self) -> dict[str, Any]:
        return {"error": self.error}


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, "invalid_request_error", message, code=code, param=param)


def missing(kind: str, id_: str, param: str, status: int = 400) -> StripeError:
    return StripeError(
        status,
        "invalid_request_error",
        f"No such {kind}: '{id_}'",
        code="resource_missing",
        param=param,
    )


def required(param: str) -> StripeError:
    return invalid(f"Missing required param: {param}.", param=param, code="parameter_missing")


def unexpected_state(message: str, param: str | None = None) -> StripeError:
    return invalid(message, param=param, code="payment_intent_unexpected_state")


def check_known(params: Params, known: frozenset[str], prefix: str | None = None) -> None:
    for name in params:
        if name not in known:
            full = f"{prefix}[{name}]" if prefix else name
            raise invalid(
                f"Received unknown parameter: {full}", param=full, code="parameter_unknown"
            )


def no_expand(params: Params) -> None:
    if params.get("expand"):
        raise invalid("fakestripe does not implement expand", param="expand")


def text(params: Params, name: str, *, param: str | None = None) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid string: {param or name}", param=param or name)
    return value


def integer(params: Params, name: str, *, param: str | None = None) -> int | None:
    value = text(params, name, param=param)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise invalid(f"Invalid integer: {value}", param=param or name) from None


def boolean(params: Params, name: str, *, param: str | None = None) -> bool | None:
    value = text(params, name, param=param)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise invalid(f"Invalid boolean: {value}", param=param or name)
    return value == "true"


def hash_param(params: Params, name: str, known: frozenset[str], prefix: str = "") -> Params:
    """A nested hash parameter (``{}`` when absent), its keys checked."""
    value = params.get(name, {})
    full = f"{prefix}[{name}]" if prefix else name
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid("Invalid hash", param=full)
    check_known(value, known, full)
    return value


def str_list(params: Params, name: str) -> list[str] | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid("Invalid array", param=name)
    return [str(v) for v in value]


def metadata(params: Params, name: str = "metadata") -> dict[str, str]:
    value = params.get(name, {})
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid("Invalid hash", param=name)
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise invalid(f"Metadata values must be strings: {name}[{k}]", param=f"{name}[{k}]")
        if len(k) > 40 or len(v) > 500:
            raise invalid(
                "Metadata keys are at most 40 characters and values at most 500",
                param=f"{name}[{k}]",
            )
        out[k] = v
    if len(out) > 50:
        raise invalid("Metadata has at most 50 keys", param=name)
    return out


def names(words: str) -> frozenset[str]:
    return frozenset(words.split())


def page(params: Params, items: list[StripeObject], url: str) -> StripeObject:
    """One page of a list endpoint (``limit``, ``starting_after``, ``ending_before``), items in
    the order given. https://docs.stripe.com/api/pagination"""
    limit = integer(params, "limit")
    limit = 10 if limit is None else limit
    if not 1 <= limit <= 100:
        raise invalid("limit must be between 1 and 100", param="limit")
    after, before = text(params, "starting_after"), text(params, "ending_before")
    if after is not None and before is not None:
        raise invalid(
            "You may only specify one of these parameters: ending_before, starting_after."
        )
    ids = [item["id"] for item in items]
    if after is not None:
        if after not in ids:
            raise missing("object", after, "starting_after")
        start = ids.index(after) + 1
        chunk, has_more = items[start : start + limit], start + limit < len(items)
    elif before is not None:
        if before not in ids:
            raise missing("object", before, "ending_before")
        end = ids.index(before)
        chunk, has_more = items[max(0, end - limit) : end], end - limit > 0
    else:
        chunk, has_more = items[:limit], limit < len(items)
    return {"object": "list", "data": chunk, "has_more": has_more, "url": url}
