"""Issue #11: serve last good data, and say so.

Readiness through a real app with an injected clock.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sync.app import create_app
from sync.config import Config, config_from_mapping
from sync.engine import Engine
from sync.errors import ConfigError
from sync.metrics import Metrics
from sync.store import Store
from tests.fake_upstream import FakeRegistry
from tests.helpers import mirror_config, no_sleep
from tests.test_ops import Clock, ops_client


async def ready(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    body: dict[str, Any] = await response.json()
    return response.status, body


class TestReadiness:
    async def test_an_outage_keeps_the_only_replica_in_service_and_says_so(
        self, make_config: Callable[..., Config], fake_url: str, fake: FakeRegistry
    ) -> None:
        config = make_config({"name": "official", "url": fake_url, "interval": "10m"})
        assert config.api.readiness == "serve"
        strict = config.model_copy(
            update={"api": config.api.model_copy(update={"readiness": "fresh"})}
        )
        clock = Clock()
        store = await Store.open(config.storage.path)
        engine = Engine(config, store, Metrics(), sleep=no_sleep, clock=clock)
        client = await ops_client(config, Metrics(), clock)
        strict_client = await ops_client(strict, Metrics(), clock)
        try:
            # An air-gapped start: the first pass fails (every attempt: retries = 3).
            fake.fail(503, times=4)
            assert (await engine.run("official")).outcome == "failed"
            status, body = await ready(client)
            assert status == 200, body
            assert body["ready"] is True and body["readiness"] == "serve"
            assert body["store"] == "ok" and body["fresh"] is False
            [upstream] = body["upstreams"]
            assert upstream["status"] == "never synced"
            assert upstream["consecutive_failures"] == 1 and upstream["failing_since"]
            assert "503" in upstream["last_error"]
            assert (await strict_client.get("/readyz")).status == 503

            assert (await engine.run("official")).outcome == "ok"
            status, body = await ready(client)
            assert status == 200 and body["fresh"] is True
            assert body["upstreams"][0]["status"] == "fresh"
            assert "failing_since" not in body["upstreams"][0]

            # An outage past max_staleness (3 x interval): stale, failing, still serving.
            clock.now += timedelta(minutes=31)
            fake.fail(503, times=4)
            assert (await engine.run("official")).outcome == "failed"
            status, body = await ready(client)
            assert status == 200, body
            [upstream] = body["upstreams"]
            assert upstream["status"] == "stale" and upstream["stale_since"]
            assert upstream["consecutive_failures"] == 1 and body["fresh"] is False
            listed = await client.get("/v0.1/servers?limit=1")
            assert listed.status == 200 and (await listed.json())["servers"]
            status, body = await ready(strict_client)
            assert status == 503 and body["upstreams"][0]["status"] == "stale"
        finally:
            await strict_client.close()
            await client.close()
            await engine.close()
            await store.close()

    def test_a_readiness_mode_is_one_of_two(self) -> None:
        with pytest.raises(
            ConfigError, match=r"api\.readiness: Input should be 'serve' or 'fresh'"
        ):
            config_from_mapping({"api": {"readiness": "always"}})

    async def test_a_store_that_cannot_answer_is_not_ready(
        self, tmp_path: Path, mirror_db: Path
    ) -> None:
        path = tmp_path / "mirror.db"
        shutil.copy(mirror_db, path)
        client = TestClient(TestServer(create_app(mirror_config(path), sync=False)))
        await client.start_server()
        try:
            assert (await client.get("/readyz")).status == 200
            # A wrong restore: an SQLite file that opens, but holds no mirror. The replica
            # follows the path to it, and then every query fails.
            wrong = tmp_path / "wrong.db"
            with sqlite3.connect(wrong) as db:
                db.execute("CREATE TABLE unrelated (x)")
            os.replace(wrong, path)
            status, body = 200, {}
            for _ in range(200):
                status, body = await ready(client)
                if status != 200:
                    break
                await asyncio.sleep(0.05)
            assert status == 503, body
            assert body["ready"] is False and body["store"].startswith("unavailable")
            assert (await client.get("/healthz")).status == 200
        finally:
            await client.close()
