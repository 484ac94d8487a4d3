"""Comparing the mirror with the upstream's truth."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sync.config import Config, StorageConfig, config_from_mapping
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store import Reader, Store, open_store
from tests.fake_upstream import OFFICIAL, FakeRegistry

# A module (or class, or test) marked with this runs once per backend: its `backend` fixture,
# and every store-facing fixture built on it, is SQLite, then a fresh PostgreSQL database.
BOTH_BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

MULTI = "com.fenetresurciel.verylongmcp/mcp-server-template-nodejs"  # 72 versions
DEPRECATED = ("ai.exa/exa", "3.0.7")


@asynccontextmanager
async def serving(app: web.Application, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """`app` (a fake registry's, say) on a loopback port for the block, over TLS with `tls`;
    yields its base URL."""
    server = TestServer(app)
    await server.start_server(ssl=tls)
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def take_leadership(url: str, holder: str) -> int:
    """Make `holder` the leader of the database at `url`, as an election would (the row's
    epoch bumped, a lease long enough for any test); return the new epoch."""
    import psycopg  # noqa: PLC0415 - SQLite-only runs need no psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "UPDATE leadership SET epoch = epoch + 1, holder = %s, since = now(), "
            "expires_at = now() + interval '1 hour' WHERE id = 1 RETURNING epoch",
            (holder,),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def open_writer(storage: StorageConfig) -> Store:
    """The configured store's writer, leading if it is a PostgreSQL one."""
    store = await open_store(storage)
    if storage.url is not None:
        from sync.store.postgres.writer import PostgresStore  # noqa: PLC0415

        assert isinstance(store, PostgresStore)
        await store.lead(await take_leadership(storage.url, store.holder), store.holder)
    return store


async def no_sleep(_: float) -> None:
    """Retries and page delays pass instantly in tests."""


def mirror_config(
    path: Path, url: str = "http://127.0.0.1:9", *, storage_url: str | None = None, **api: Any
) -> Config:
    """A mirror of one upstream at `url`, stored at `path` (SQLite) or in the PostgreSQL
    database `storage_url`."""
    storage: dict[str, Any] = {"path": str(path)}
    if storage_url is not None:
        storage["url"] = storage_url
    return config_from_mapping(
        {
            "storage": storage,
            "api": api,
            "upstreams": [{"name": "official", "url": url, "page_delay": 0}],
        }
    )


async def build_mirror(
    path: Path, items: list[dict[str, Any]], *, storage_url: str | None = None
) -> FakeRegistry:
    """A mirror built by the real engine from `items`, with one deleted and one deprecated
    version, as the API tests expect (in the PostgreSQL database `storage_url` if given)."""
    fake = FakeRegistry(json.loads(json.dumps(items)))
    versions = sorted(v for n, v in fake.rows if n == MULTI)
    fake.set_status(MULTI, versions[0], "deleted")
    fake.set_status(*DEPRECATED, "deprecated", "superseded")
    server = TestServer(fake.app())
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    config = mirror_config(path, url, storage_url=storage_url)
    try:
        store = await open_writer(config.storage)
        try:
            engine = Engine(config, store, Metrics(), sleep=no_sleep)
            result = await engine.run("official")
            assert result.outcome == "ok", result.error
            await engine.close()
        finally:
            await store.close()
    finally:
        await server.close()
    return fake


async def served(reader: Reader, view: str = "default") -> dict[tuple[str, str], dict[str, Any]]:
    """Every served row (deleted included): key -> {"server": text, "meta": parsed _meta}."""
    return {
        (name, version): {"server": server, "meta": json.loads(meta)}
        async for name, version, server, meta in reader.export(view)
    }


def official(item: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = item["meta"][OFFICIAL]
    return value


def assert_mirrors(mirror: dict[tuple[str, str], dict[str, Any]], fake: FakeRegistry) -> None:
    """Same keys, byte-identical server JSON, same status and publication facts."""
    assert set(mirror) == set(fake.rows), (
        f"missing {sorted(set(fake.rows) - set(mirror))[:5]}, "
        f"extra {sorted(set(mirror) - set(fake.rows))[:5]}"
    )
    for key, row in fake.rows.items():
        item = mirror[key]
        assert item["server"] == row.server_text(), key
        facts = official(item)
        assert facts["status"] == row.official["status"], key
        assert facts["publishedAt"] == row.official["publishedAt"], key
        assert facts.get("statusMessage") == row.official.get("statusMessage"), key


def latest_by_name(mirror: dict[tuple[str, str], dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for (name, version), item in mirror.items():
        found.setdefault(name, [])
        if official(item)["isLatest"]:
            found[name].append(version)
    return found
