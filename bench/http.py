"""A lean HTTP/1.1 keep-alive client for load generation.

The load generator shares the machine's cores with what it measures, so it should spend as
little of them as it can: aiohttp's client costs about as much CPU per request as the
gateway's own answer. This one keeps one connection per worker, sends a request and reads
one response with a Content-Length (every server here sends one), and nothing else.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.host = b""

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        url = urlsplit(base_url)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, url.hostname, url.port)
        conn.host = url.netloc.encode()
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        after = head.split(b"content-length:", 1)[1]
        total = end + 4 + int(after.split(b"\r\n", 1)[0])
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        self.waiter.set_result((int(head[9:12]), body))

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: str = ""
    ) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(
            b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (method.encode(), path.encode(), self.host, len(body), headers.encode(), body)
        )
        return await self.waiter

    async def get_json(self, path: str) -> Any:
        _, body = await self.request("GET", path)
        return json.loads(body)

    async def post_json(self, path: str, payload: Any) -> Any:
        data = json.dumps(payload).encode()
        _, body = await self.request("POST", path, data, "Content-Type: application/json\r\n")
        return json.loads(body)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
