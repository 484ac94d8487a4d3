"""Process faults: SIGKILL and SIGTERM mid-pass, a full disk, a read-only database file."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store.sqlite.reader import SqliteReader
from sync.store.sqlite.writer import SqliteStore
from tests.cli_helpers import free_port, run, spawn, write_config
from tests.fake_upstream import FakeRegistry
from tests.faults.conftest import check_truth
from tests.helpers import assert_mirrors, no_sleep, served


async def test_sigkill_mid_pass_resumes_and_ends_identical(
    tmp_path: Path, fake_url: str, fake: FakeRegistry
) -> None:
    """A pass killed with SIGKILL between pages resumes from its last committed page."""
    config = write_config(tmp_path, fake_url)
    fake.page_delay = 0.05
    process = await spawn("--config", config, "sync", quiet=True)
    db = tmp_path / "mirror.db"
    pages = 0
    for _ in range(500):
        await asyncio.sleep(0.02)
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    row = conn.execute("SELECT max(pages) FROM passes").fetchone()
                    pages = row[0] or 0 if row else 0
            except sqlite3.OperationalError:
                continue
        if pages >= 5:
            break
    process.send_signal(signal.SIGKILL)
    await process.wait()
    assert 5 <= pages < 27
    with sqlite3.connect(db) as conn:
        cursor = conn.execute("SELECT pass_cursor FROM upstreams").fetchone()[0]
    assert cursor is not None
    fake.requests.clear()
    fake.page_delay = 0
    code, _, err = await run("--config", config, "sync")
    assert code == 0, err
    assert fake.requests[0]["cursor"] == cursor
    reader = await SqliteReader.open(db)
    try:
        assert_mirrors(await served(reader), fake)
        history = await reader.passes("official")
        assert [p.outcome for p in history] == ["ok", "interrupted"]
    finally:
        await reader.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_serve_syncs_serves_and_stops_cleanly_mid_pass(
    tmp_path: Path, fake_url: str, fake: FakeRegistry
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, fake_url, f"[api]\nport = {port}\nstop_grace = 10\n", before_upstreams=True
    )
    fake.page_delay = 0.1
    process = await spawn("--config", config, "serve")
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
                # A page's last name waits for the next page (it may have more versions
                # there), so a full first list page shows once two pages are committed.
                if count == 100:
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: far too small for the 2,628-version mirror."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


async def test_disk_full_fails_the_pass_then_resumes(
    small_disk: Path, fake_url: str, fake: FakeRegistry, make_config: Any
) -> None:
    config = make_config({"name": "official", "url": fake_url})
    config = config.model_copy(
        update={"storage": config.storage.model_copy(update={"path": small_disk / "mirror.db"})}
    )
    store = await SqliteStore.open(config.storage.path)
    engine = Engine(config, store, Metrics(), sleep=no_sleep)
    try:
        result = await engine.run("official")
        assert result.outcome == "failed"
        assert "database or disk is full" in (result.error or "")
        assert 0 < result.counts.pages < 27
        assert await store.integrity_check() == "ok"
        remount(small_disk, "size=128m")
        resumed = await engine.run("official")
        assert resumed.outcome == "ok", resumed.error
        await check_truth(engine, fake)
    finally:
        await engine.close()
        await store.close()


async def test_read_only_database_is_a_clear_error(
    small_disk: Path, fake_url: str, fake: FakeRegistry
) -> None:
    remount(small_disk, "size=128m")
    config = write_config(small_disk.parent, fake_url)
    text = config.read_text().replace(
        str(small_disk.parent / "mirror.db"), str(small_disk / "mirror.db")
    )
    config.write_text(text)
    code, _, err = await run("--config", config, "sync")
    assert code == 0, err
    remount(small_disk, "ro")
    for command in ("sync", "serve"):
        code, out, err = await run("--config", config, command)
        assert code == 1, (command, out, err)
        assert "Traceback" not in err and "read-only" in err.lower(), err
    code, out, _ = await run("--config", config, "status")
    assert code == 0 and "versions held:   2628" in out
    remount(small_disk, "rw")
    with sqlite3.connect(small_disk / "mirror.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reader = await SqliteReader.open(small_disk / "mirror.db")
    try:
        assert_mirrors(await served(reader), fake)
    finally:
        await reader.close()


async def test_sigterm_while_the_upstream_hangs_stops_at_once(
    tmp_path: Path, fake_url: str, fake: FakeRegistry
) -> None:
    """A pass waiting on a silent upstream (or backing off) does not hold the stop."""
    port = free_port()
    config = write_config(
        tmp_path, fake_url, f"[api]\nport = {port}\nstop_grace = 60\n", before_upstreams=True
    )
    fake.slow(120.0)
    process = await spawn("--config", config, "serve")
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if fake.requests:
                    break
            async with client.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 20)
        waited = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, err.decode()[-2000:]
    assert waited < 30, f"stopping took {waited:.1f} s: it waited out stop_grace (60 s)"
    with sqlite3.connect(tmp_path / "mirror.db") as db:
        assert db.execute("SELECT outcome FROM passes").fetchone()[0] == "interrupted"
