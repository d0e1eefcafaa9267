"""HTTP/1.1 over a plain TCP connection, byte for byte: what a hostile client sends and HTTP
libraries refuse to (raw non-UTF-8 bytes, backslashes, unnormalised or malformed paths)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


Headers = Mapping[str, bytes] | Iterable[tuple[str, bytes]]


async def send(port: int, method: bytes, target: bytes, headers: Headers = ()) -> Reply:
    """One request (``Connection: close``) to 127.0.0.1:``port``; header values as given
    (pairs may repeat a name)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name.encode() + b": " + value for name, value in pairs]
    lines += [b"Connection: close", b"", b""]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\r\n".join(lines))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return Reply(int(status_line.split()[1]), parsed, body)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2 :]
    return out
