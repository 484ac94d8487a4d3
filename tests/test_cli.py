"""The `subregistry` command as operators run it: a real process against a fake registry."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import pty
import re
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from sync import __version__
from sync.store.sqlite.writer import SqliteStore
from tests.cli_helpers import TOKEN, run, write_config
from tests.fake_upstream import FakeRegistry
from tests.helpers import serving


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
        holder = await SqliteStore.open(tmp_path / "mirror.db")
        try:
            code, _, err = await run("--config", config, "sync")
        finally:
            await holder.close()
        assert code == 1 and "in use by another subregistry process" in err


def _small_registry(catalogue: list[dict[str, Any]]) -> FakeRegistry:
    """300 versions (three pages), one deprecated and one deleted."""
    fake = FakeRegistry(json.loads(json.dumps(catalogue[:300])))
    keys = sorted(fake.rows)
    fake.set_status(*keys[10], "deprecated", "superseded")
    fake.set_status(*keys[20], "deleted")
    return fake


class TestStatus:
    async def test_served_counts_and_recent_passes(
        self, tmp_path: Path, catalogue: list[dict[str, Any]]
    ) -> None:
        fake = _small_registry(catalogue)
        async with serving(fake.app()) as url:
            config = write_config(tmp_path, url)
            for _ in range(2):
                code, _, err = await run("--config", config, "sync")
                assert code == 0, err
        by_status = Counter(row.official["status"] for row in fake.rows.values())
        servers = len({n for (n, _), r in fake.rows.items() if r.official["status"] != "deleted"})
        assert by_status == {"active": 298, "deprecated": 1, "deleted": 1}

        code, out, err = await run("--config", config, "status", "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["served"] == {"versions": dict(by_status), "servers": servers}
        [upstream] = report["upstreams"]
        assert [p["outcome"] for p in upstream["recent_passes"]] == ["ok", "ok"]
        assert upstream["pass_in_progress"] is False and upstream["resume_point"] is None

        code, out, err = await run("--config", config, "status")
        assert code == 0, err
        lines = out.splitlines()
        assert (
            lines[0]
            == f"served: 300 versions (298 active, 1 deprecated, 1 deleted), {servers} servers"
        )
        assert "  recent passes:" in lines
        passes = [line.split() for line in lines if line.startswith("    #")]
        assert [p[:3] for p in passes] == [["#2", "incremental", "ok"], ["#1", "full", "ok"]]
        assert "300 inserted" in lines[lines.index("  recent passes:") + 2]

    async def test_a_failed_pass_waiting_to_resume_is_not_in_progress(
        self, tmp_path: Path, catalogue: list[dict[str, Any]]
    ) -> None:
        fake = _small_registry(catalogue)

        async def first_page_answers(_: web.Request) -> None:
            return None

        fake.faults.append(first_page_answers)
        fake.fail(404, times=50)  # permanent: the pass fails at once
        async with serving(fake.app()) as url:
            config = write_config(tmp_path, url)
            code, out, _ = await run("--config", config, "sync")
        assert code == 1 and out.startswith("official: failed full pass")

        code, out, err = await run("--config", config, "status", "--json")
        assert code == 0, err
        [upstream] = json.loads(out)["upstreams"]
        assert upstream["recent_passes"][0]["outcome"] == "failed"
        assert upstream["pass_in_progress"] is False and upstream["running_pass"] is None
        resume = upstream["resume_point"]
        assert (resume["pass_id"], resume["mode"]) == (1, "full") and resume["cursor"]

        code, out, _ = await run("--config", config, "status")
        assert "  resume point:    pass #1 (full, started " in out
        assert "pass running" not in out

    async def test_a_running_pass_is_in_progress(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, "http://127.0.0.1:9")
        store = await SqliteStore.open(tmp_path / "mirror.db")
        try:
            async with store.transaction():
                await store.state("official")
                now = "2026-11-29T10:00:00Z"
                pass_id = await store.start_pass(
                    "official",
                    mode="full",
                    started=now,
                    since=None,
                    cursor=None,
                    sweep=None,
                    resumed_from=None,
                    now=now,
                )
            code, out, err = await run("--config", config, "status", "--json")
            assert code == 0, err
            [upstream] = json.loads(out)["upstreams"]
            assert upstream["pass_in_progress"] is True and upstream["running_pass"] == pass_id
            code, out, _ = await run("--config", config, "status")
            assert f"  pass running:    #{pass_id}\n" in out
        finally:
            await store.close()


def _screen(text: str) -> list[str]:
    """The lines a terminal shows for `text`: carriage return, erase to end of line, newline."""
    lines: list[str] = []
    line: list[str] = []
    col = 0
    for part in re.split(r"(\x1b\[K|\r|\n)", text):
        if part == "\x1b[K":
            del line[col:]
        elif part == "\r":
            col = 0
        elif part == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            line[col : col + len(part)] = part
            col += len(part)
    return [*lines, "".join(line)] if line else lines


async def _on_a_terminal(*args: str | Path) -> tuple[int, str]:
    """`python -m sync ARGS` with stdout and stderr on one pseudo-terminal, read as it runs."""
    leader, follower = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sync", *map(str, args), stdout=follower, stderr=follower
    )
    os.close(follower)

    def drain() -> bytes:
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child's side is closed
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    try:
        raw = await asyncio.to_thread(drain)
        return await process.wait(), raw.decode()
    finally:
        os.close(leader)


class TestProgress:
    async def test_every_line_after_the_progress_line_starts_clean(
        self, tmp_path: Path, catalogue: list[dict[str, Any]]
    ) -> None:
        async with serving(_small_registry(catalogue).app()) as url:
            config = write_config(tmp_path, url)
            code, raw = await _on_a_terminal("--config", config, "sync")
        assert code == 0, raw
        assert "\r\x1b[Kofficial: 3 pages, 300 entries" in raw  # the progress line was drawn
        screen = [line for line in _screen(raw) if line]
        assert screen[-1].startswith("official: ok full pass in ")
        assert ", 4 pages, 300 inserted, " in screen[-1]  # then the official empty page
        # Log events (JSON lines) and the summary each begin at the margin: no progress text
        # is left in front of them, and none is left on the screen.
        for line in screen[:-1]:
            assert line.startswith("{") and json.loads(line)["event"], line


class TestPackaging:
    PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"

    def test_the_version_is_written_once(self) -> None:
        project = tomllib.loads(self.PYPROJECT.read_text())
        assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
        dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
        assert dynamic == {"attr": "sync.__version__"}

    def test_installed_metadata_carries_that_version(self) -> None:
        assert importlib.metadata.version("mcp-subregistry") == __version__

    async def test_the_command_prints_it(self) -> None:
        code, out, _ = await run("--version")
        assert (code, out) == (0, f"subregistry {__version__}\n")

    def test_the_license_is_declared_as_pep_639_asks(self) -> None:
        project = tomllib.loads(self.PYPROJECT.read_text())
        assert project["project"]["license"] == "MIT"
        assert project["project"]["license-files"] == ["LICENSE"]
        license_text = (self.PYPROJECT.parent / "LICENSE").read_text()
        assert license_text.startswith("MIT License\n")
        # License expressions need setuptools 77; older ones reject the table-less form.
        assert "setuptools>=77" in project["build-system"]["requires"]
        assert not any(c.startswith("License ::") for c in project["project"]["classifiers"])
