"""A forwarding HTTP proxy on a loopback port: `GET http://…` forwarding and `CONNECT` tunnels.

It records the head of every request it receives (so a test can tell what the proxy saw, and
that a tunnel showed it nothing but the target), asks for Basic credentials when given some,
and never forwards its own `Proxy-Authorization` to the origin.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from yarl import URL

_HOP_BY_HOP = frozenset({"proxy-authorization", "proxy-connection", "connection", "keep-alive"})
_HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased


class Proxy:
    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.seen: list[Seen] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The proxy's URL, with its credentials when it asks for some."""
        if self.credentials is None:
            return f"http://127.0.0.1:{self.port}"
        user, password = self.credentials
        url = URL.build(
            scheme="http", user=user, password=password, host="127.0.0.1", port=self.port
        )
        return str(url)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def _authorised(self, headers: dict[str, str]) -> bool:
        if self.credentials is None:
            return True
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()
        return headers.get("proxy-authorization") == f"Basic {expected}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request, *lines = head.split("\r\n")
        method, target, _ = request.split(" ", 2)
        pairs = [(k.strip(), v.strip()) for k, v in (x.split(":", 1) for x in lines if x)]
        headers = {k.lower(): v for k, v in pairs}
        self.seen.append(Seen(method, target, headers))
        if not self._authorised(headers):
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = await self._open(host, int(port), writer)
            if upstream is None:
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, upstream[1]), _pipe(upstream[0], writer))
            upstream[1].close()
            return
        url = URL(target)
        assert url.scheme == "http" and url.host, f"not a proxy request: {target}"
        upstream = await self._open(url.host, url.port or 80, writer)
        if upstream is None:
            return
        kept = "".join(f"{k}: {v}\r\n" for k, v in pairs if k.lower() not in _HOP_BY_HOP)
        upstream[1].write(
            f"{method} {url.raw_path_qs} HTTP/1.1\r\n{kept}Connection: close\r\n\r\n".encode(
                "latin-1"
            )
        )
        await _pipe(upstream[0], writer)
        upstream[1].close()

    async def _open(
        self, host: str, port: int, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection(host, port)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return None


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
