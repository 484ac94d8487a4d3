"""Mirrors chain: a second mirror pulling from the first's API ends up identical."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from sync.app import create_app
from sync.config import config_from_mapping
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.serve.cache import ResponseCache
from sync.store import open_reader
from sync.store.sqlite.writer import SqliteStore
from tests.fake_upstream import FakeRegistry
from tests.helpers import BOTH_BACKENDS, no_sleep, official, open_writer, served


def _facts(mirror: dict[tuple[str, str], dict[str, Any]]) -> dict[Any, Any]:
    return {
        key: (item["server"], {k: v for k, v in official(item).items() if k != "updatedAt"})
        for key, item in mirror.items()
    }


# The second mirror is stored on each backend; the first is served by the app (SQLite).
@BOTH_BACKENDS
async def test_second_mirror_follows_the_first(
    tmp_path: Path, fake: FakeRegistry, fake_url: str, storage_section: dict[str, Any]
) -> None:
    def config(name: str, url: str) -> Any:
        storage = storage_section if name == "second" else {"path": str(tmp_path / "first.db")}
        return config_from_mapping(
            {
                "storage": storage,
                "upstreams": [{"name": "up", "url": url, "page_delay": 0, "overlap": 0}],
            }
        )

    first_config = config("first", fake_url)
    first_store = await SqliteStore.open(first_config.storage.path)
    first = Engine(first_config, first_store, Metrics(), sleep=no_sleep)
    assert (await first.run("up")).outcome == "ok"
    api = TestServer(create_app(first_config, sync=False))
    await api.start_server()
    second_config = config("second", str(api.make_url("")).rstrip("/"))
    second_store = await open_writer(second_config.storage)
    second = Engine(second_config, second_store, Metrics(), sleep=no_sleep)
    readers = [await open_reader(c.storage) for c in (first_config, second_config)]
    try:
        result = await second.run("up")
        assert (result.outcome, result.mode, result.counts.inserted) == ("ok", "full", 2628)
        assert _facts(await served(readers[1])) == _facts(await served(readers[0]))

        keys = sorted(fake.rows)
        fake.edit(*keys[5], description="edited upstream of the first mirror")
        fake.set_status(*keys[50], "deleted")
        fake.set_status(*keys[500], "deprecated", "moved")
        template = fake.rows[keys[700]].server
        fake.publish({**template, "version": "999.0.0"})
        assert (await first.run("up")).mode == "incremental"
        result = await second.run("up")
        assert (result.outcome, result.mode) == ("ok", "incremental")
        # Exactly the difference travels: 3 changed rows, 1 new, and the old latest's flip.
        assert result.counts.inserted == 1 and result.counts.updated == 4
        assert _facts(await served(readers[1])) == _facts(await served(readers[0]))
    finally:
        for reader in readers:
            await reader.close()
        await api.close()
        for engine, store in ((first, first_store), (second, second_store)):
            await engine.close()
            await store.close()


@asynccontextmanager
async def synced_mirror(tmp_path: Path, fake_url: str) -> AsyncIterator[tuple[Engine, TestServer]]:
    """A mirror after one full pass, and its API served from read-only connections."""
    config = config_from_mapping(
        {
            "storage": {"path": str(tmp_path / "m.db")},
            "upstreams": [{"name": "up", "url": fake_url, "page_delay": 0}],
        }
    )
    store = await SqliteStore.open(config.storage.path)
    engine = Engine(config, store, Metrics(), sleep=no_sleep)
    await engine.run("up")
    api = TestServer(create_app(config, sync=False))
    await api.start_server()
    try:
        yield engine, api
    finally:
        await api.close()
        await engine.close()
        await store.close()


async def test_reads_stay_responsive_while_a_pass_writes(
    tmp_path: Path, fake: FakeRegistry, fake_url: str
) -> None:
    """Readers use their own read-only WAL connections: a full pass never blocks them."""
    statuses: list[int] = []
    async with synced_mirror(tmp_path, fake_url) as (engine, api), aiohttp.ClientSession() as c:
        syncing = asyncio.create_task(engine.run("up", full=True))
        while not syncing.done():
            async with c.get(api.make_url("/v0.1/servers?limit=100")) as response:
                await response.read()
                statuses.append(response.status)
        assert (await syncing).outcome == "ok"
    # Many reads completed while the one pass was writing: they interleave, not queue.
    assert len(statuses) > 5 and set(statuses) == {200}


async def test_cached_pages_follow_every_commit(
    tmp_path: Path, fake: FakeRegistry, fake_url: str
) -> None:
    """Responses are reused only while the store is unchanged: the next read after a commit
    sees the commit."""
    name, version = min(fake.rows)
    path = f"/v0.1/servers/{name.replace('/', '%2F')}/versions/{version}"
    async with synced_mirror(tmp_path, fake_url) as (engine, api), aiohttp.ClientSession() as c:
        for round_ in range(3):
            async with c.get(api.make_url(path)) as response:
                first = await response.json()
            async with c.get(api.make_url(path)) as response:
                assert await response.json() == first  # served again, unchanged
            fake.edit(name, version, description=f"edit {round_}")
            await engine.run("up")
            async with c.get(api.make_url(path)) as response:
                assert (await response.json())["server"]["description"] == f"edit {round_}"


def test_response_cache_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "m.db").write_bytes(b"")
    cache = ResponseCache(tmp_path / "m.db", max_bytes=1000)
    assert cache.get("a") is None
    for key in "abcde":
        cache.put(key, b"x" * 300)
    assert [cache.get(k) is not None for k in "abcde"] == [False, False, True, True, True]
    assert cache.put("huge", b"y" * 2000).etag and cache.get("huge") is None
    (tmp_path / "m.db-wal").write_bytes(b"commit")
    assert cache.get("e") is None  # the store changed: everything is dropped


def test_a_body_read_before_a_commit_is_not_filed_under_the_new_state(tmp_path: Path) -> None:
    """A slow request reads the old content; the writer commits; another request sees the
    new state. The slow one's body must not be served for the new state."""
    database, wal = tmp_path / "m.db", tmp_path / "m.db-wal"
    database.write_bytes(b"db")
    wal.write_bytes(b"1")
    cache = ResponseCache(database, max_bytes=10_000)
    before = cache.state()
    assert cache.get("/a", before) is None  # a miss: the handler reads the old content
    wal.write_bytes(b"12")  # the writer commits
    assert cache.get("/b") is None  # another request sees the new state
    cache.put("/a", b"old", before)
    assert cache.get("/a") is None
    cache.put("/a", b"new", cache.state())
    found = cache.get("/a")
    assert found is not None and found.body == b"new"
