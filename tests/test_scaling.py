"""A name with many versions costs what many names cost (issue #10, 14).

Work is counted, not timed: the SQLite virtual-machine instructions the writer runs for a
whole first pass, through the connection's progress handler. A per-page rebuild of every
stored version of a name that spans many pages grows with the square of its versions; a
name decided once, when complete, and pages looked up by key, grow linearly.
bench/versions.py measures the same two catalogues in seconds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store.sqlite.writer import SqliteStore
from tests.fake_upstream import OFFICIAL, FakeRegistry
from tests.helpers import mirror_config, no_sleep

N = 3000


def one_name(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [_clone(template, "io.github.scale/many", f"1.0.{i}", i) for i in range(N)]


def many_names(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [_clone(template, f"io.github.scale/s{i:05d}", "1.0.0", i) for i in range(N)]


def _clone(template: dict[str, Any], name: str, version: str, i: int) -> dict[str, Any]:
    item = copy.deepcopy(template)
    item["server"]["name"], item["server"]["version"] = name, version
    stamp = f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z"
    item["_meta"][OFFICIAL].update(publishedAt=stamp, updatedAt=stamp, isLatest=False)
    return item


async def writer_steps(items: list[dict[str, Any]], path: Path) -> int:
    fake = FakeRegistry(json.loads(json.dumps(items)))
    server = TestServer(fake.app())
    await server.start_server()
    store = await SqliteStore.open(path)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    try:
        await store._db.set_progress_handler(count, 1000)
        url = str(server.make_url("")).rstrip("/")
        engine = Engine(mirror_config(path, url), store, Metrics(), sleep=no_sleep)
        result = await engine.run("official")
        await engine.close()
        assert result.outcome == "ok", result.error
        assert result.counts.inserted == N
    finally:
        await store.close()
        await server.close()
    return steps


async def test_versions_of_one_name_cost_what_names_cost(
    tmp_path: Path, catalogue: list[dict[str, Any]]
) -> None:
    template = next(i for i in catalogue if i["server"]["name"] == "ai.exa/exa")
    names = await writer_steps(many_names(template), tmp_path / "names.db")
    versions = await writer_steps(one_name(template), tmp_path / "versions.db")
    ratio = versions / names
    assert ratio < 1.5, f"{versions} vs {names} thousand VM steps: {ratio:.1f}x"
