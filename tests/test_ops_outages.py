"""Issue #11: serve last good data, and say so.

Readiness through a real app with an injected clock; outage metrics after real failing passes
against the fake upstream, and after a restart (a real `serve --no-sync` process over the same
file); the README's metrics table against a real scrape; a JSON log from a real `serve` process
that holds JSON lines only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from sync.app import create_app
from sync.config import Config, config_from_mapping
from sync.errors import ConfigError
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store.sqlite.writer import SqliteStore
from tests.cli_helpers import free_port, spawn, write_config
from tests.fake_upstream import FakeRegistry
from tests.helpers import mirror_config, no_sleep
from tests.test_ops import Clock, Samples, ops_client, scrape

README = Path(__file__).parent.parent / "README.md"
UPSTREAM = (("upstream", "official"),)


def gauge(samples: Samples, name: str) -> float:
    """The upstream's sample, which must be there (a missing series cannot fire an alert)."""
    key = (f"subregistry_sync_{name}", UPSTREAM)
    assert key in samples, f"no {key[0]} series"
    return samples[key]


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
        store = await SqliteStore.open(config.storage.path)
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


async def scrape_process(port: int) -> Samples:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            assert process.returncode is None, "serve exited"
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("serve never answered /healthz")


async def stop(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    return err.decode() if err else ""


class TestOutageMetrics:
    async def test_a_never_synced_upstream_has_series_that_a_restart_keeps(
        self,
        make_config: Callable[..., Config],
        fake_url: str,
        fake: FakeRegistry,
        tmp_path: Path,
    ) -> None:
        config = make_config(
            {
                "name": "official",
                "url": fake_url,
                "interval": "10m",
                "retries": 0,
                "failure_threshold": 2,
            }
        )
        clock = Clock()
        store = await SqliteStore.open(config.storage.path)
        engine = Engine(config, store, Metrics(), sleep=no_sleep, clock=clock)
        client = await ops_client(config, Metrics(), clock)
        try:
            # Before any pass: every series exists, and says "never".
            start = await scrape(client)
            assert gauge(start, "last_success_timestamp_seconds") == 0
            assert gauge(start, "last_attempt_timestamp_seconds") == 0
            assert gauge(start, "consecutive_failures") == 0
            assert gauge(start, "failing_since_timestamp_seconds") == 0
            assert gauge(start, "max_staleness_seconds") == 1800

            # Day one with a bad token: every pass is refused.
            fake.fail(401, body='{"title":"Unauthorized"}', times=2)
            first = clock.now
            assert (await engine.run("official")).outcome == "failed"
            clock.now += timedelta(minutes=1)
            second = clock.now
            assert (await engine.run("official")).outcome == "failed"
            # The circuit is open now: the next scheduled pass is skipped, and still ends.
            clock.now += timedelta(minutes=1)
            skipped = clock.now
            assert (await engine.run("official")).outcome == "skipped"
            clock.now += timedelta(seconds=30)  # past the gauges' 10 s reuse
            failing = await scrape(client)
        finally:
            await client.close()
            await engine.close()
            await store.close()
        assert second > first
        assert gauge(failing, "last_success_timestamp_seconds") == 0
        assert gauge(failing, "consecutive_failures") == 2
        assert gauge(failing, "failing_since_timestamp_seconds") == pytest.approx(
            first.timestamp(), abs=1e-3
        )
        assert gauge(failing, "last_attempt_timestamp_seconds") == pytest.approx(
            skipped.timestamp(), abs=1e-3
        )

        # A restart: another process, which has run no pass, exports the same values.
        port = free_port()
        process_config = write_config(
            tmp_path, fake_url, f"[api]\nport = {port}\n", before_upstreams=True
        )
        process = await spawn("--config", process_config, "serve", "--no-sync")
        try:
            await wait_listening(port, process)
            restarted = await scrape_process(port)
        finally:
            await stop(process)
        for name in (
            "last_success_timestamp_seconds",
            "consecutive_failures",
            "failing_since_timestamp_seconds",
            "last_attempt_timestamp_seconds",
        ):
            assert gauge(restarted, name) == gauge(failing, name), name
        # Its counters are its own, and start from nothing.
        assert not any(name == "subregistry_sync_runs_total" for name, _ in restarted)

        # Recovery, once the circuit lets a pass through: the failure gauges drop to 0.
        store = await SqliteStore.open(config.storage.path)
        engine = Engine(config, store, Metrics(), sleep=no_sleep, clock=clock)
        client = await ops_client(config, Metrics(), clock)
        try:
            clock.now += timedelta(minutes=11)
            recovered_at = clock.now
            assert (await engine.run("official")).outcome == "ok"
            recovered = await scrape(client)
        finally:
            await client.close()
            await engine.close()
            await store.close()
        success = gauge(recovered, "last_success_timestamp_seconds")
        assert success >= recovered_at.timestamp() - 1e-3
        assert gauge(recovered, "consecutive_failures") == 0
        assert gauge(recovered, "failing_since_timestamp_seconds") == 0
        assert gauge(recovered, "last_attempt_timestamp_seconds") == success


def documented_metrics() -> dict[str, set[str]]:
    """The README's metrics table: each metric name with its documented label names."""
    section = README.read_text().split("## Operations", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        labels = set() if cells[1] == "–" else {lab.strip() for lab in cells[1].split(",")}
        for name in re.findall(r"`([a-z_*]+)`", cells[0]):
            documented[name] = labels
    return documented


class TestExportedSeries:
    async def test_every_documented_label_exists_and_methods_are_bounded(
        self, make_config: Callable[..., Config], fake_url: str
    ) -> None:
        config = make_config(
            {"name": "official", "url": fake_url}, filter={"exclude": ["ai.exa/*"]}
        )
        metrics, clock = Metrics(), Clock()
        store = await SqliteStore.open(config.storage.path)
        engine = Engine(config, store, metrics, sleep=no_sleep, clock=clock)
        try:
            assert (await engine.run("official")).outcome == "ok"
            client = await ops_client(config, metrics, clock)
            try:
                await client.get("/v0.1/servers?limit=1")
                await client.post("/v0.1/servers")
                for method in ("FOO", "BAR", "PROPFIND"):
                    await client.request(method, "/v0.1/servers")
                response = await client.get("/metrics")
                text = await response.text()
            finally:
                await client.close()
        finally:
            await engine.close()
            await store.close()

        families = {f.name: f for f in text_string_to_metric_families(text)}
        documented = documented_metrics()
        assert len(documented) >= 19
        for name, labels in documented.items():
            if name.endswith("*"):
                prefix = name[:-1]
                assert any(f.startswith(prefix) for f in families), name
                continue
            family = families.get(name) or families.get(name.removesuffix("_total"))
            assert family is not None and family.samples, f"{name} is not exported"
            for sample in family.samples:
                assert set(sample.labels) - {"le"} == labels, (name, sample)
        for standard in ("process_cpu_seconds", "process_open_fds", "python_gc_collections"):
            assert standard in families, standard

        # Arbitrary method tokens are one label value, not one series each.
        methods = {
            s.labels["method"]
            for name in ("subregistry_http_requests", "subregistry_http_request_duration_seconds")
            for s in families[name].samples
        }
        assert methods == {"GET", "POST", "other"}


class TestJsonLogs:
    async def test_a_json_log_holds_json_lines_only(self, tmp_path: Path, mirror_db: Path) -> None:
        """Errors aiohttp logs itself (a request it cannot parse) and a handler that raises
        (a store that stopped answering) both arrive as JSON, tracebacks included."""
        path = tmp_path / "mirror.db"
        shutil.copy(mirror_db, path)
        port = free_port()
        config = write_config(
            tmp_path, "http://127.0.0.1:9", f"[api]\nport = {port}\n", before_upstreams=True
        )
        process = await spawn("--config", config, "serve", "--no-sync")
        try:
            await wait_listening(port, process)
            for request in (
                b"GET /v0.1/ping HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nBad Header\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                await writer.drain()
                # aiohttp answers 400 and closes the connection.
                assert b" 400 " in await asyncio.wait_for(reader.read(), 10)
                writer.close()
            wrong = tmp_path / "wrong.db"
            with sqlite3.connect(wrong) as db:
                db.execute("CREATE TABLE unrelated (x)")
            os.replace(wrong, path)
            async with aiohttp.ClientSession() as session:
                status = 200
                for _ in range(200):
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        status = response.status
                    if status != 200:
                        break
                    await asyncio.sleep(0.05)
                assert status == 503
                async with session.get(f"http://127.0.0.1:{port}/v0.1/servers") as response:
                    assert response.status == 500
        finally:
            err = await stop(process)
        lines = [line for line in err.splitlines() if line.strip()]
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}\n{err[-3000:]}")
        parse_errors = [e for e in events if e.get("logger") == "aiohttp.server"]
        assert len(parse_errors) >= 2, err[-3000:]
        for event in parse_errors:
            assert event["level"] == "error" and event["timestamp"]
            assert event["exception"][0]["exc_type"] == "BadHttpMessage"
        [raised] = [e for e in events if e["event"] == "http.error"]
        assert raised["exception"][0]["exc_type"] == "OperationalError"
        assert raised["request_id"] and raised["path"] == "/v0.1/servers"
