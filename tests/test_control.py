"""Acting on a running daemon (issue #11): `sync` and `reapply` through the daemon that holds
the store, and SIGHUP reloading the configuration. Real `serve` processes, real signals, the
real control socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli_helpers import free_port, run, spawn, write_config
from tests.fake_upstream import FakeRegistry
from tests.helpers import DEPRECATED

OVERRIDE = (
    f'[[override]]\nname = "{DEPRECATED[0]}"\nstatus = "deprecated"\n'
    'status_message = "blocked by review"\n'
)


class Daemon:
    def __init__(self, process: asyncio.subprocess.Process, port: int, config: Path) -> None:
        self.process, self.port, self.config = process, port, config
        self.base = f"http://127.0.0.1:{port}"

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base + path, params=params) as response,
        ):
            return response.status, await response.json()

    async def synced(self) -> None:
        """Until the first scheduled pass has completed."""
        for _ in range(300):
            await asyncio.sleep(0.05)
            try:
                _, body = await self.get("/readyz")
            except aiohttp.ClientError:
                continue
            if all(u.get("last_success") for u in body.get("upstreams", [])):
                return
        raise AssertionError("the daemon's first pass did not complete")


@pytest.fixture
async def daemon(tmp_path: Path, fake_url: str) -> AsyncIterator[Daemon]:
    port = free_port()
    config = write_config(tmp_path, fake_url, f"[api]\nport = {port}\n", before_upstreams=True)
    process = await spawn("--config", config, "serve")
    running = Daemon(process, port, config)
    try:
        await running.synced()
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.communicate(), 30)


class TestThroughTheDaemon:
    async def test_sync_while_serve_runs_asks_the_daemon(
        self, daemon: Daemon, fake: FakeRegistry, tmp_path: Path
    ) -> None:
        """Same summary line and exit code as a direct pass; the daemon did the work."""
        before = len(fake.requests)
        fake.publish(
            {"name": "io.github.ops/new-server", "version": "1.0.0", "description": "fresh"}
        )
        code, out, err = await run("--config", daemon.config, "sync")
        assert code == 0, err
        [line] = out.splitlines()
        assert line.startswith("official: ok") and "1 inserted" in line
        assert "updated_since" in fake.requests[before]
        status, body = await daemon.get("/v0.1/servers/io.github.ops%2Fnew-server/versions/latest")
        assert status == 200 and body["server"]["version"] == "1.0.0"
        socket = tmp_path / "mirror.db.sock"
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600

    async def test_a_failing_pass_through_the_daemon_exits_1(
        self, daemon: Daemon, fake: FakeRegistry
    ) -> None:
        fake.fail(503, times=10)
        code, out, _ = await run("--config", daemon.config, "sync", "--full")
        assert code == 1
        assert out.startswith("official: failed")

    async def test_an_upstream_the_daemon_does_not_know_is_a_usage_error(
        self, daemon: Daemon, tmp_path: Path
    ) -> None:
        """The daemon decides by the configuration it runs (the file changed, no SIGHUP)."""
        private = tmp_path / "private.json"
        private.write_text("[]")
        daemon.config.write_text(
            daemon.config.read_text() + f'[[upstreams]]\nname = "later"\npath = "{private}"\n'
        )
        code, out, err = await run("--config", daemon.config, "sync", "--upstream", "later")
        assert code == 2 and out == ""
        assert err.startswith("subregistry: ") and "later" in err and len(err.splitlines()) == 1

    async def test_reapply_while_serve_runs(self, daemon: Daemon) -> None:
        code, out, err = await run("--config", daemon.config, "reapply")
        assert code == 0, err
        assert out.startswith("reapplied rules to 1055 servers")

    async def test_no_socket_is_left_after_a_stop(self, daemon: Daemon, tmp_path: Path) -> None:
        assert (tmp_path / "mirror.db.sock").is_socket()
        daemon.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.process.communicate(), 30)
        assert daemon.process.returncode == 0
        assert not (tmp_path / "mirror.db.sock").exists()
        code, out, err = await run("--config", daemon.config, "sync")
        assert code == 0, err  # direct mode again
        assert out.startswith("official: ok")

    async def test_the_socket_answers_nothing_but_its_requests(
        self, daemon: Daemon, tmp_path: Path
    ) -> None:
        """Only its owner may connect, and a malformed request is a 400, not a traceback."""
        socket = tmp_path / "mirror.db.sock"
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        connector = aiohttp.UnixConnector(path=str(socket))
        async with aiohttp.ClientSession(connector=connector) as session:
            for body in (b"not json", b"[1]", b'{"upstream": 5}'):
                async with session.post("http://subregistry/sync", data=body) as response:
                    assert response.status == 400
            async with session.get("http://subregistry/v0.1/servers") as response:
                assert response.status in (404, 405)
        assert daemon.process.returncode is None


class TestReload:
    async def test_sighup_applies_new_rules_without_dropping_connections(
        self, daemon: Daemon
    ) -> None:
        name, version = DEPRECATED
        path = f"/v0.1/servers/{name.replace('/', '%2F')}/versions/{version}"
        async with aiohttp.ClientSession() as session:
            async with session.get(daemon.base + path) as response:
                first = await response.json()
            daemon.config.write_text(daemon.config.read_text() + OVERRIDE)
            daemon.process.send_signal(signal.SIGHUP)
            meta: dict[str, Any] = {}
            for _ in range(200):
                await asyncio.sleep(0.05)
                # The same keep-alive connection carries on across the reload.
                async with session.get(daemon.base + path) as response:
                    meta = (await response.json())["_meta"]
                if meta["io.github.mcp-subregistry"].get("decision"):
                    break
        assert first["_meta"]["io.modelcontextprotocol.registry/official"]["status"] == "active"
        assert meta["io.modelcontextprotocol.registry/official"]["status"] == "deprecated"
        assert meta["io.github.mcp-subregistry"]["decision"]["rule"] == "override[0]"
        assert meta["io.modelcontextprotocol.registry/official"]["statusMessage"] == (
            "blocked by review"
        )
        assert daemon.process.returncode is None

    async def test_a_bad_new_config_is_refused_and_the_old_one_kept(
        self, daemon: Daemon, fake: FakeRegistry
    ) -> None:
        good = daemon.config.read_text()
        daemon.config.write_text(good.replace(f"port = {daemon.port}", "port = 'eighty'"))
        daemon.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(1)
        status, _ = await daemon.get("/v0.1/servers", limit="1")
        assert status == 200 and daemon.process.returncode is None
        daemon.config.write_text(good)
        daemon.process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(daemon.process.communicate(), 30)
        events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        [refused] = [e for e in events if e["event"] == "config.reload_refused"]
        assert "port" in refused["error"]

    async def test_a_new_upstream_on_reload_is_synced(self, daemon: Daemon, tmp_path: Path) -> None:
        private = tmp_path / "private.json"
        private.write_text(
            json.dumps([{"name": "com.example/internal", "version": "2.0.0", "description": "x"}])
        )
        private_block = f'[[upstreams]]\nname = "private"\npath = "{private}"\n\n'
        with_private = daemon.config.read_text().replace(
            "[[upstreams]]", private_block + "[[upstreams]]", 1
        )
        daemon.config.write_text(with_private)
        daemon.process.send_signal(signal.SIGHUP)
        for _ in range(200):
            await asyncio.sleep(0.05)
            status, _ = await daemon.get("/v0.1/servers/com.example%2Finternal/versions/latest")
            if status == 200:
                break
        assert status == 200
        assert os.path.exists(tmp_path / "mirror.db.sock")
        # Readiness and the metrics speak of the upstreams now configured.
        _, ready = await daemon.get("/readyz")
        assert [u["upstream"] for u in ready["upstreams"]] == ["private", "official"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(daemon.base + "/metrics") as response,
        ):
            assert 'upstream="private"' in await response.text()
        # Removed again: its series go, so no alert fires on for an upstream that is gone.
        daemon.config.write_text(with_private.replace(private_block, ""))
        daemon.process.send_signal(signal.SIGHUP)
        for _ in range(200):
            await asyncio.sleep(0.1)
            _, ready = await daemon.get("/readyz")
            if len(ready["upstreams"]) == 1:
                break
        await asyncio.sleep(10.5)  # gauges are refreshed at most every 10 s
        async with (
            aiohttp.ClientSession() as session,
            session.get(daemon.base + "/metrics") as response,
        ):
            text = await response.text()
        for gauge in ("sync_consecutive_failures", "quarantined_entries"):
            assert f'subregistry_{gauge}{{upstream="official"}}' in text
            assert f'subregistry_{gauge}{{upstream="private"}}' not in text
