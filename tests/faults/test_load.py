"""Load: 200 concurrent API clients for 20 s while a full pass of the 250,000-version benchmark
catalogue writes. Slow (a minute or two): runs only with RUN_SLOW=1."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bench.catalogue import generate
from tests.cli_helpers import free_port

ROOT = Path(__file__).parent.parent.parent
VERSIONS = int(os.environ.get("LOAD_VERSIONS", "250000"))
CLIENTS, SECONDS = 200, 20.0

pytestmark = pytest.mark.skipif(not os.environ.get("RUN_SLOW"), reason="set RUN_SLOW=1")


async def _wait(url: str) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(1200):
            try:
                async with client.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


async def _run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sync",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_200_clients_while_a_full_pass_writes(tmp_path: Path) -> None:
    catalogue = generate(VERSIONS, ROOT / "bench" / "out" / f"catalogue-{VERSIONS}.jsonl")
    up_port, api_port = free_port(), free_port()
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "bench/upstream.py", str(catalogue), str(up_port), cwd=ROOT
    )
    config = tmp_path / "load.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "m.db"}"\n[api]\nport = {api_port}\n'
        f'[logging]\nformat = "json"\n[[upstreams]]\nname = "bench"\n'
        f'url = "http://127.0.0.1:{up_port}"\npage_delay = 0\n'
    )
    server: asyncio.subprocess.Process | None = None
    try:
        await _wait(f"http://127.0.0.1:{up_port}/_admin/stats")
        code, err = await _run("--config", str(config), "sync", "--full")
        assert code == 0, err[-2000:]
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sync",
            "--config",
            str(config),
            "serve",
            "--no-sync",
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{api_port}"
        await _wait(f"{base}/v0.1/health")
        names = [
            json.loads(line)["server"]["name"]
            for line in catalogue.open()
            if random.random() < 0.002
        ]
        urls = (
            ["/v0.1/servers?limit=100", "/v0.1/servers?version=latest&limit=50"]
            + [f"/v0.1/servers?search={n.split('/')[1][:8]}" for n in names[:100]]
            + [f"/v0.1/servers/{n.replace('/', '%2F')}/versions/latest" for n in names]
        )
        writer = asyncio.create_task(_run("--config", str(config), "sync", "--full"))
        latencies: list[float] = []
        errors: list[str] = []
        deadline = time.monotonic() + SECONDS

        async def client(session: aiohttp.ClientSession) -> None:
            while time.monotonic() < deadline:
                url = random.choice(urls)
                started = time.perf_counter()
                try:
                    async with session.get(base + url) as response:
                        await response.read()
                        if response.status != 200:
                            errors.append(f"{response.status} {url}")
                except aiohttp.ClientError as exc:
                    errors.append(f"{type(exc).__name__} {url}")
                latencies.append(time.perf_counter() - started)

        connector = aiohttp.TCPConnector(limit=CLIENTS)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
        code, writer_err = await writer
        assert code == 0, writer_err[-2000:]
    finally:
        if server is not None:
            server.terminate()
            _, server_err_bytes = await server.communicate()
        upstream.terminate()
        await upstream.wait()
    server_err = server_err_bytes.decode()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(
        f"\nload: {len(latencies)} requests in {SECONDS:.0f} s by {CLIENTS} clients while a "
        f"full pass wrote; p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {len(errors)}"
    )
    assert errors == []
    assert "database is locked" not in server_err + writer_err
    with sqlite3.connect(tmp_path / "m.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        served = dict(
            db.execute(
                "SELECT s.name || ':' || s.version, e.server FROM served s "
                "JOIN entries e ON e.id = s.entry_id"
            )
        )
    truth = {}
    for line in catalogue.open():
        server = json.loads(line)["server"]
        truth[f"{server['name']}:{server['version']}"] = server
    assert served.keys() == truth.keys()
    assert all(json.loads(text) == truth[key] for key, text in served.items())
