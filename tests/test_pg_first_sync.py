"""A first full sync into an empty PostgreSQL store builds the trigram search indexes once, at
its end, instead of keeping them up row by row (the cheaper way to fill an empty store); a
first sync stopped half-way leaves search answering (by scanning) and the next pass builds
them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from aiohttp.test_utils import TestServer

from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store import ListQuery, open_reader
from tests.fake_upstream import FakeRegistry
from tests.helpers import mirror_config, no_sleep, open_writer

SEARCH_INDEXES = {"served_search_name", "served_search_description"}


async def _indexes(dsn: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'served'")
        return {str(row[0]) for row in await cursor.fetchall()}


async def _pass(fake: FakeRegistry, tmp_path: Path, dsn: str) -> str:
    server = TestServer(fake.app())
    await server.start_server()
    config = mirror_config(
        tmp_path / "unused.db", str(server.make_url("")).rstrip("/"), storage_url=dsn
    )
    store = await open_writer(config.storage)
    try:
        engine = Engine(config, store, Metrics(), sleep=no_sleep)
        result = await engine.run("official", full=True)
        await engine.close()
    finally:
        await store.close()
        await server.close()
    return result.outcome


async def _search(dsn: str, term: str) -> list[tuple[Any, ...]]:
    reader = await open_reader(mirror_config(Path("unused.db"), storage_url=dsn).storage)
    try:
        return [
            tuple(row[:2])
            for row in await reader.list_servers(ListQuery("default", 100, search=term))
        ]
    finally:
        await reader.close()


async def test_a_first_sync_builds_the_search_indexes_at_its_end(
    tmp_path: Path, catalogue: list[dict[str, Any]], pg_dsn: str
) -> None:
    fake = FakeRegistry(json.loads(json.dumps(catalogue)))
    assert await _pass(fake, tmp_path, pg_dsn) == "ok"
    assert await _indexes(pg_dsn) >= SEARCH_INDEXES
    assert await _search(pg_dsn, "github")


async def test_a_first_sync_stopped_half_way_still_searches_and_the_next_pass_indexes(
    tmp_path: Path, catalogue: list[dict[str, Any]], pg_dsn: str
) -> None:
    fake = FakeRegistry(json.loads(json.dumps(catalogue)))
    fake.slow(0)  # the first page is served
    fake.fail(503, times=50)  # then the upstream is down for the rest of the pass
    assert await _pass(fake, tmp_path, pg_dsn) == "failed"
    # Part of the catalogue is stored and served; the indexes were set aside for the pass.
    assert not SEARCH_INDEXES & await _indexes(pg_dsn)
    found = await _search(pg_dsn, "server")
    assert found
    fake.faults.clear()
    assert await _pass(fake, tmp_path, pg_dsn) == "ok"
    assert await _indexes(pg_dsn) >= SEARCH_INDEXES
    # The same search answers the same first rows from the index as it did by scanning.
    assert (await _search(pg_dsn, "server"))[: len(found)] == found
