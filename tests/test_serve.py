"""`subregistry serve`: the API and the scheduler in one real process, stopped by signals."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import aiohttp

from sync.config import Config
from sync.engine import Engine
from tests.cli_helpers import run, write_config
from tests.fake_upstream import FakeRegistry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serve_syncs_serves_and_stops_cleanly_mid_pass(
    tmp_path: Path, fake_url: str, fake: FakeRegistry
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, fake_url, f"[api]\nport = {port}\nstop_grace = 10\n", before_upstreams=True
    )
    fake.page_delay = 0.1
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sync",
        "--config",
        str(config),
        "serve",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as client:
            count = 0
            for _ in range(200):
                await asyncio.sleep(0.05)
                try:
                    async with client.get(f"http://127.0.0.1:{port}/v0.1/servers?limit=100") as r:
                        count = (await r.json())["metadata"]["count"] if r.status == 200 else 0
                except aiohttp.ClientError:
                    continue
                if count:
                    break
            assert count == 100, "the scheduled pass should have served a first page by now"
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, err.decode()[-2000:]
    with sqlite3.connect(tmp_path / "mirror.db") as db:
        outcome, error = db.execute("SELECT outcome, error FROM passes").fetchone()
        cursor = db.execute("SELECT pass_cursor FROM upstreams").fetchone()[0]
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert (outcome, error) == ("interrupted", "daemon stopping; resumes next start")
    assert cursor is not None
    fake.page_delay = 0
    fake.requests.clear()
    code, out, _ = await run("--config", config, "sync")
    assert code == 0
    assert fake.requests[0]["cursor"] == cursor
    resumed = int(re.search(r"(\d+) inserted", out).group(1))  # type: ignore[union-attr]
    assert 0 < resumed < 2628
    with sqlite3.connect(tmp_path / "mirror.db") as db:
        assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 2628


async def test_one_pass_per_upstream_at_a_time(
    engine: Engine, config: Config, fake: FakeRegistry
) -> None:
    fake.page_delay = 0.02
    first, second = await asyncio.gather(engine.run("official"), engine.run("official"))
    assert sorted([first.outcome, second.outcome]) == ["ok", "skipped"]
    assert "already running" in (first.error or second.error or "")
