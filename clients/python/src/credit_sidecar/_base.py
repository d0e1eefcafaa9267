"""What the sync and the async client share: configuration, the retry rule and its backoff,
turning an answer into a result or a typed error, and the compatibility check."""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from credit_sidecar import errors
from credit_sidecar._calls import Call
from credit_sidecar._wire import Answer, NoAnswer, encode
from credit_sidecar.models import CheckResult
from credit_sidecar.version import SUPPORTED_SIDECAR, __version__, parse, supports

T = TypeVar("T")
log = logging.getLogger("credit_sidecar")

FailurePolicy = Literal["fail_closed", "fail_open"]
RETRY_STATUSES = frozenset({502, 503, 504})
# what no HTTP header value may carry (RFC 9110 5.5: no controls but the tab)
_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Base:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 2.0,
        deadline: float = 5.0,
        max_attempts: int = 3,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
        failure_policy: FailurePolicy = "fail_closed",
        verify_sidecar: bool = True,
        supported_sidecar: tuple[str, str] = SUPPORTED_SIDECAR,
    ) -> None:
        if failure_policy not in ("fail_closed", "fail_open"):
            raise ValueError("failure_policy must be 'fail_closed' or 'fail_open'")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        url = urlsplit(base_url)
        if url.scheme.lower() not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, not {base_url!r}")
        if url.username is not None or url.password is not None:
            # the sidecar authenticates by the token; user:pass@ would be sent (or not) by
            # each HTTP library its own way
            raise ValueError("base_url must not carry credentials (user:pass@): pass the token")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.deadline = deadline
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.failure_policy: FailurePolicy = failure_policy
        self.verify_sidecar = verify_sidecar
        self.supported_sidecar = supported_sidecar
        self.headers = {
            "Authorization": f"Bearer {token}",
            "User-Agent": f"credit-sidecar-python/{__version__}",
        }
        self.sidecar_version: str | None = None
        self._operations: frozenset[tuple[str, str]] | None = None

    def _delay(self, attempt: int, remaining: float) -> float:
        """Exponential backoff with full jitter, never past the deadline."""
        cap = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return max(0.0, min(random.uniform(0, cap), remaining))

    def _request_args(self, call: Call[Any]) -> dict[str, Any]:
        headers = dict(self.headers)
        if call.reason is not None:
            headers["X-Audit-Reason"] = call.reason
        headers.update(call.headers)
        for name, value in headers.items():
            if _UNSENDABLE.search(value):
                # never sent, and never "unavailable" (fail_open would let it through): a
                # customer's API key or request id with a control character is refused
                raise errors.InvalidRequest(
                    f"{call.method} {call.template}: {name} has a control character",
                    status=400,
                    code="invalid_header",
                    field=name,
                )
        content = None
        if call.body is not None:
            content = encode(call.body)
            headers["Content-Type"] = "application/json"
        return {"headers": headers, "content": content, "params": call.query or None}

    @staticmethod
    def _retryable(exc: NoAnswer, call: Call[Any]) -> bool:
        return call.retry or exc.not_sent

    @staticmethod
    def _unavailable(exc: Exception, call: Call[Any]) -> errors.SidecarUnavailable:
        return errors.SidecarUnavailable(
            f"{call.method} {call.template}: {type(exc).__name__}: {exc}".rstrip(": "),
            code="sidecar_unavailable",
        )

    @staticmethod
    def _result(call: Call[T], response: Answer) -> T:
        body = json_body(response)
        if response.ok:
            try:
                if call.read_headers:
                    return call.parse({"body": body, "headers": response.headers})
                return call.parse(body)
            except (TypeError, ValueError, KeyError) as e:
                # a 200 that is not the sidecar's answer (an HTML page, no body: a wrong URL,
                # a proxy in between) says nothing about the call: the sidecar is unavailable
                raise errors.SidecarUnavailable(
                    f"{call.method} {call.template}: {response.status} without the "
                    f"sidecar's answer ({e})",
                    code="sidecar_unavailable",
                ) from e
        raise errors.from_response(response.status, body, response.header_dict())

    def _learn(self, spec: Mapping[str, Any]) -> None:
        """Checks the sidecar's version and remembers which operations it has."""
        info = spec.get("info")
        version = str(info.get("version", "")) if isinstance(info, dict) else ""
        low, below = self.supported_sidecar
        if version and parse(version) >= parse(below):
            # newer than this client knows: each call is still checked against the sidecar's
            # spec, and an app must not go down (fail_closed) because its sidecar was upgraded
            log.warning(
                "credit-sidecar %s is newer than this client was made for (<%s): "
                "upgrade credit-sidecar-client",
                version,
                below,
            )
        elif not supports(version, self.supported_sidecar):
            raise errors.IncompatibleSidecar(
                f"sidecar {version or '(unknown version)'} is not supported by "
                f"credit-sidecar-client "
                f"{__version__} (supported: >={low}, <{below})",
                code="incompatible_sidecar",
            )
        ops = set()
        paths = spec.get("paths")
        for path, item in paths.items() if isinstance(paths, dict) else []:
            for method in item if isinstance(item, dict) else []:
                ops.add((method.upper(), path))
        self.sidecar_version = version
        self._operations = frozenset(ops)

    def _require(self, call: Call[Any]) -> None:
        if self._operations is None or call.op == "openapi":
            return
        if (call.method, call.template) not in self._operations:
            raise errors.IncompatibleSidecar(
                f"sidecar {self.sidecar_version} has no {call.method} {call.template} "
                f"({call.op}): it is too old for this call; upgrade the sidecar",
                code="incompatible_sidecar",
            )

    def _open(
        self, op: str, exc: errors.SidecarUnavailable, account: str, cost: int
    ) -> CheckResult:
        """fail_open: the check is let through, uncharged, with a warning."""
        log.warning(
            "credit-sidecar unreachable, %s for %s let through uncharged (fail_open): %s",
            op,
            account,
            exc.message,
        )
        return CheckResult(account=account, cost=cost, charged=False, unchecked=True)


def json_body(response: Answer) -> Any:
    """The answer's JSON, or None when it has no body or not JSON."""
    try:
        return json.loads(response.content) if response.content else None
    except ValueError:
        return None
