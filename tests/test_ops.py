"""Operations: metrics after real passes, readiness with an injected clock, logs, progress."""

from __future__ import annotations

import asyncio
import os
import pty
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from sync import __version__
from sync.app import create_app
from sync.config import Config
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store.sqlite.writer import SqliteStore
from tests.cli_helpers import spawn, write_config
from tests.fake_upstream import FakeRegistry
from tests.helpers import no_sleep

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def scrape(client: TestClient[Any, Any]) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def ops_client(config: Config, metrics: Metrics, clock: Clock) -> TestClient[Any, Any]:
    client = TestClient(TestServer(create_app(config, metrics=metrics, sync=False, clock=clock)))
    await client.start_server()
    return client


class TestMetrics:
    async def test_series_move_with_real_passes(
        self, make_config: Callable[..., Config], fake_url: str, fake: FakeRegistry
    ) -> None:
        config = make_config(
            {"name": "official", "url": fake_url, "retries": 1, "failure_threshold": 2},
            filter={"exclude": ["ai.exa/*"]},
        )
        metrics, clock = Metrics(), Clock()
        store = await SqliteStore.open(config.storage.path)
        engine = Engine(config, store, metrics, sleep=no_sleep, clock=clock)
        fake.add_raw({"name": "bad name", "version": "1", "description": "poison"})
        try:
            assert (await engine.run("official")).outcome == "ok"
            client = await ops_client(config, metrics, clock)
            try:
                first = await scrape(client)
                fake.fail(503, times=4)
                clock.now += timedelta(seconds=30)
                assert (await engine.run("official")).outcome == "failed"
                assert (await engine.run("official")).outcome == "failed"
                await client.get("/v0.1/servers/ai.aliengiraffe%2Fspotdb/versions")
                await client.get("/v0/servers?limit=2")
                await client.get("/v0.1/servers/nobody%2Fhere/versions/1.0")
                clock.now += timedelta(seconds=30)  # past the gauges' 10 s reuse
                second = await scrape(client)
            finally:
                await client.close()
        finally:
            await engine.close()
            await store.close()

        s = "subregistry_"
        assert (
            value(first, f"{s}sync_runs_total", upstream="official", mode="full", outcome="ok") == 1
        )
        assert (
            value(first, f"{s}sync_entries_total", upstream="official", action="inserted") == 2628
        )
        assert (
            value(first, f"{s}sync_entries_total", upstream="official", action="quarantined") == 1
        )
        assert value(first, f"{s}upstream_requests_total", upstream="official", code="200") == 27
        assert value(first, f"{s}quarantined_entries", upstream="official") == 1
        exa = 6
        assert value(first, f"{s}served_versions", view="default", status="active") == 2628 - exa
        assert value(first, f"{s}served_servers", view="default") == 1054
        assert value(first, f"{s}rule_hits_total", view="default", rule="filter.exclude") == exa
        assert value(first, f"{s}build_info", version=__version__) == 1
        assert (
            value(first, f"{s}sync_duration_seconds_count", upstream="official", mode="full") == 1
        )
        success = value(first, f"{s}sync_last_success_timestamp_seconds", upstream="official")
        assert success > 0
        assert value(first, f"{s}upstream_circuit_open", upstream="official") == 0

        assert (
            value(
                second,
                f"{s}sync_runs_total",
                upstream="official",
                mode="incremental",
                outcome="failed",
            )
            == 2
        )
        assert value(second, f"{s}upstream_requests_total", upstream="official", code="503") == 4
        assert (
            value(second, f"{s}sync_last_success_timestamp_seconds", upstream="official") == success
        )
        assert value(second, f"{s}upstream_circuit_open", upstream="official") == 1
        assert (
            value(
                second,
                f"{s}http_requests_total",
                view="default",
                route="/v0.1/servers/{serverName}/versions",
                method="GET",
                status="200",
            )
            == 1
        )
        assert (
            value(
                second,
                f"{s}http_requests_total",
                view="default",
                route="/v0/servers",
                method="GET",
                status="200",
            )
            == 1
        )
        assert (
            value(
                second,
                f"{s}http_requests_total",
                view="default",
                route="/v0.1/servers/{serverName}/versions/{version}",
                method="GET",
                status="404",
            )
            == 1
        )
        assert (
            value(
                second,
                f"{s}http_request_duration_seconds_count",
                view="default",
                route="/v0/servers",
                method="GET",
                status="200",
            )
            == 1
        )


class TestReadiness:
    async def test_readyz_follows_staleness(
        self, make_config: Callable[..., Config], fake_url: str, fake: FakeRegistry
    ) -> None:
        # The strict mode: readiness follows staleness (the default is tests/test_ops_outages.py).
        config = make_config(
            {"name": "official", "url": fake_url, "interval": "10m"}, api={"readiness": "fresh"}
        )
        clock = Clock()
        store = await SqliteStore.open(config.storage.path)
        engine = Engine(config, store, Metrics(), sleep=no_sleep, clock=clock)
        client = await ops_client(config, Metrics(), clock)
        try:
            assert (await client.get("/healthz")).status == 200
            never = await client.get("/readyz")
            assert never.status == 503
            assert (await never.json())["upstreams"][0]["status"] == "never synced"

            await engine.run("official")
            fresh = await client.get("/readyz")
            assert fresh.status == 200, await fresh.text()

            clock.now += timedelta(minutes=31)  # default max_staleness: 3 x interval
            # An outage: every attempt of one pass (retries = 3). A 503 is never narrowed
            # into smaller pages (a 500 may be one entry the upstream cannot render).
            fake.fail(503, times=4)
            assert (await engine.run("official")).outcome == "failed"
            stale = await client.get("/readyz")
            body = await stale.json()
            assert stale.status == 503
            [upstream] = body["upstreams"]
            assert upstream["status"] == "stale" and upstream["stale_since"]
            assert upstream["failing_since"] and "503" in upstream["last_error"]

            assert (await engine.run("official", full=True)).outcome == "ok"
            assert (await client.get("/readyz")).status == 200
        finally:
            await client.close()
            await engine.close()
            await store.close()


class TestLogs:
    async def test_each_pass_binds_context_and_ends_with_one_summary(self, engine: Engine) -> None:
        with capture_logs() as events:
            await engine.run("official")
        started = [e for e in events if e["event"] == "sync.started"]
        finished = [e for e in events if e["event"] == "sync.finished"]
        assert len(started) == len(finished) == 1
        summary = finished[0]
        assert summary["pages"] == 27 and summary["inserted"] == 2628
        assert summary["checkpoint"] and summary["duration_s"] >= 0
        assert summary["outcome"] == "ok"

    async def test_progress_only_on_a_terminal(self, tmp_path: Path, fake_url: str) -> None:
        config = write_config(tmp_path, fake_url)
        leader, follower = pty.openpty()
        process = await spawn(
            "--config", str(config), "sync", stdout=asyncio.subprocess.PIPE, stderr=follower
        )
        os.close(follower)
        out, _ = await process.communicate()
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(leader)
        terminal = b"".join(chunks).decode()
        assert process.returncode == 0
        assert "official: 27 pages, 2628 entries" in terminal
        assert "\r" not in out.decode()
