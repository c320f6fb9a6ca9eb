"""A minimal HTTP/1.1 keep-alive GET client on asyncio streams, for load generation on a 2-core machine.

httpx costs about as much CPU per request as the server's whole status handler, so a load generator
built on it measures itself. This client sends prebuilt request bytes and reads the status line,
the headers up to Content-Length and the body: a few tens of microseconds per request. It speaks
only what the benchmarks need (GET, `Content-Length` bodies, no chunked encoding, no TLS).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class LeanHttpError(RuntimeError):
    pass


class LeanConnection:
    """One keep-alive connection; `get(path)` -> (status, body). Not for concurrent use."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._requests: dict[str, bytes] = {}

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    def _request(self, path: str) -> bytes:
        raw = self._requests.get(path)
        if raw is None:
            raw = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._extra}\r\n".encode()
            self._requests[path] = raw
        return raw

    async def get(self, path: str) -> tuple[int, bytes]:
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(self._request(path))
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise LeanHttpError(f"bad status line {lines[0]!r}") from exc
        length = None
        for line in lines[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length is None:
            raise LeanHttpError("response without Content-Length")
        body = await self._reader.readexactly(length)
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None
