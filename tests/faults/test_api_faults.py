"""Bad and oversized requests, and a broken store, never leak internals or crash the API."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from sync.app import create_app
from sync.serve.api import READER
from tests.helpers import mirror_config


async def _client(tmp_path: Path, mirror_db: Path) -> TestClient[Any, Any]:
    path = tmp_path / "mirror.db"
    shutil.copy(mirror_db, path)
    client = TestClient(TestServer(create_app(mirror_config(path), sync=False)))
    await client.start_server()
    return client


async def _raw(client: TestClient[Any, Any], request: bytes) -> bytes:
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    return answer


async def test_oversized_request_line_and_headers(tmp_path: Path, mirror_db: Path) -> None:
    client = await _client(tmp_path, mirror_db)
    try:
        line = await _raw(
            client, b"GET /v0.1/servers?search=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        header = await _raw(
            client, b"GET /v0.1/servers HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n"
        )
        ok = await client.get("/v0.1/servers?limit=1")
    finally:
        await client.close()
    for answer in (line, header):
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]
        assert b"Traceback" not in answer
    assert ok.status == 200  # the server shrugged them off


async def test_store_failure_is_a_plain_500(tmp_path: Path, mirror_db: Path) -> None:
    client = await _client(tmp_path, mirror_db)
    try:
        await client.app[READER].close()
        response = await client.get("/v0.1/servers")
        body = await response.text()
        ready = await client.get("/readyz")
    finally:
        await client.close()
    assert response.status == 500
    assert response.content_type == "application/problem+json"
    for leak in ("Traceback", str(tmp_path), "/sync/", "sqlite", "aiosqlite"):
        assert leak not in body, leak
    assert ready.status == 503
