"""The `subregistry` command as operators run it: a real process against a fake registry."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path

from sync.store import Reader, Store
from tests.cli_helpers import TOKEN, run, write_config
from tests.fake_upstream import FakeRegistry
from tests.helpers import assert_mirrors, served


class TestSync:
    async def test_sync_status_export(self, tmp_path: Path, fake_url: str) -> None:
        config = write_config(tmp_path, fake_url)
        code, out, err = await run("--config", config, "sync")
        assert code == 0, err
        assert out.startswith("official: ok full pass") and "2628 inserted" in out
        events = [json.loads(line) for line in err.splitlines()]
        summary = [e for e in events if e["event"] == "sync.finished"]
        assert summary[0]["inserted"] == 2628 and summary[0]["upstream"] == "official"

        code, out, err = await run("--config", config, "status", "--json")
        assert code == 0, err
        [upstream] = json.loads(out)["upstreams"]
        assert upstream["versions_held"] == 2628 and upstream["last_success"]
        assert upstream["headers"] == {"Authorization": "***"}
        assert upstream["recent_passes"][0]["inserted"] == 2628

        code, out, _ = await run("--config", config, "status")
        assert "versions held:   2628" in out

        target = tmp_path / "export.json"
        code, _, err = await run("--config", config, "export", "--output", target)
        assert code == 0, err
        exported = json.loads(target.read_text())
        assert exported["metadata"] == {"count": 2628}
        assert len(exported["servers"]) == 2628
        assert TOKEN not in (tmp_path / "export.json").read_text()

    async def test_failing_upstream_exits_1(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "http://127.0.0.1:9")
        code, out, err = await run("--config", config, "sync")
        assert code == 1
        assert out.startswith("official: failed")
        assert TOKEN not in out + err

    async def test_bad_configuration_exits_2_naming_the_key(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "http://127.0.0.1:9", "colour = 'blue'\n")
        code, _, err = await run("--config", config, "sync")
        assert code == 2 and "upstreams[0].colour" in err

    async def test_unknown_upstream_and_usage_exit_2(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "http://127.0.0.1:9")
        code, _, err = await run("--config", config, "sync", "--upstream", "nope")
        assert code == 2 and "no upstream named 'nope'" in err
        code, _, _ = await run("--config", config, "frobnicate")
        assert code == 2

    async def test_second_writer_is_refused(self, tmp_path: Path, fake_url: str) -> None:
        config = write_config(tmp_path, fake_url)
        holder = await Store.open(tmp_path / "mirror.db")
        try:
            code, _, err = await run("--config", config, "sync")
        finally:
            await holder.close()
        assert code == 1 and "in use by another subregistry process" in err


class TestCrash:
    async def test_sigkill_mid_pass_resumes_and_ends_identical(
        self, tmp_path: Path, fake_url: str, fake: FakeRegistry
    ) -> None:
        """A pass killed with SIGKILL between pages resumes from its last committed page."""
        config = write_config(tmp_path, fake_url)
        fake.page_delay = 0.05
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sync",
            "--config",
            str(config),
            "sync",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
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
        reader = await Reader.open(db)
        try:
            assert_mirrors(await served(reader), fake)
            history = await reader.passes("official")
            assert [p.outcome for p in history] == ["ok", "interrupted"]
        finally:
            await reader.close()
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
