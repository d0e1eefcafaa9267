"""A small asyncio client of the admin HTTP API, used by the CLI (and usable from scripts)."""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson


class AdminError(Exception):
    """The sidecar answered with an error, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


class AdminClient:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer of a 2xx; anything else raises AdminError with its reason."""
        assert self._session is not None, "use `async with AdminClient(...)`"
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._session.request(
                method, self.url + path, data=data, headers=headers
            ) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise AdminError(0, f"cannot reach the sidecar at {self.url}: {e}") from e
        try:
            decoded = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            decoded = raw.decode(errors="replace")
        if status >= 400:
            raise AdminError(status, _message(decoded))
        return decoded

    async def create_key(
        self,
        account: str,
        name: str = "",
        rate_limit: dict[str, int] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if rate_limit is not None:
            body["rate_limit"] = rate_limit
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        result: dict[str, Any] = await self.request(
            "POST", f"/v1/accounts/{_seg(account)}/keys", body
        )
        return result

    async def list_keys(self, account: str) -> dict[str, Any]:
        """The API's answer: ``{account, keys}``."""
        result: dict[str, Any] = await self.request("GET", f"/v1/accounts/{_seg(account)}/keys")
        return result

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("DELETE", f"/v1/keys/{_seg(key_id)}")
        return result


def _seg(value: str) -> str:
    """One path segment, percent-encoded so an id can never change the route."""
    return quote(value, safe="")


def _message(body: Any) -> str:
    """The sidecar's ``{"error": {"code", "message", "field"}}`` as one line."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return str(body)
    message = str(err.get("message"))
    field = err.get("field")
    if field and not message.startswith(str(field)):
        message = f"{field}: {message}"
    return f"{err.get('code')}: {message}"
