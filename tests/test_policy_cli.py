"""`subregistry policy export` as a real process (issue #15): same view → same bytes; `--check`
exits 0 silently while the file is current and 1 with one line once a server is published
upstream and synced; every misuse or failure is one `subregistry:` line, never a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli_helpers import run, write_config
from tests.fake_upstream import FakeRegistry


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` but the mirror's own database files."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("mirror.db")
    }


@pytest.fixture
async def synced(tmp_path: Path, fake_url: str) -> Path:
    """A mirror of the real catalogue, synced by a real `subregistry sync`; its config."""
    config = write_config(tmp_path, fake_url)
    code, _, err = await run("--config", config, "sync")
    assert code == 0, err
    return config


def _export(config: Path, fmt: str, *args: str | Path) -> tuple[str | Path, ...]:
    return ("--config", config, "policy", "export", "--format", fmt, *args)


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("subregistry: "), err
    return err


async def test_exports_are_deterministic_and_warnings_go_to_stderr(
    tmp_path: Path, synced: Path
) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for target in (first, second):
        code, out, err = await run(*_export(synced, "kiro", "--output", target))
        assert code == 0, err
        assert re.fullmatch(
            rf"wrote (\d+) servers \(\1 entries\) to {re.escape(str(target))}\n", out
        )
        assert "Traceback" not in err
        assert all(line.startswith("subregistry: warning: '") for line in err.splitlines())
    assert first.read_bytes() == second.read_bytes()
    code, out, _ = await run(*_export(synced, "kiro"))  # standard output: the bytes alone
    assert code == 0 and out.encode() == first.read_bytes()
    trees = []
    for site in (tmp_path / "s1", tmp_path / "s2"):
        code, _, err = await run(*_export(synced, "static", "--output", site))
        assert code == 0, err
        trees.append(_tree(site))
    assert trees[0] == trees[1] and len(trees[0]) > 4000


async def test_check_is_silent_while_current_and_names_what_a_sync_changed(
    tmp_path: Path, synced: Path, fake: FakeRegistry
) -> None:
    kiro_file, site = tmp_path / "kiro.json", tmp_path / "site"
    for fmt, target in (("kiro", kiro_file), ("static", site)):
        code, _, err = await run(*_export(synced, fmt, "--output", target))
        assert code == 0, err
        code, out, err = await run(*_export(synced, fmt, "--check", target))
        assert (code, out, err) == (0, "", "")

    fake.publish(
        {
            "name": "io.github.example/added",
            "version": "1.0.0",
            "description": "Published after the export",
            "remotes": [{"type": "streamable-http", "url": "https://added.example.com/mcp"}],
        }
    )
    code, _, err = await run("--config", synced, "sync")
    assert code == 0, err

    code, out, err = await run(*_export(synced, "kiro", "--check", kiro_file))
    assert (code, out) == (1, "")
    assert _one_line(err) == (
        f"subregistry: {kiro_file} is out of date: its content differs from the export\n"
    )
    code, out, err = await run(*_export(synced, "static", "--check", site))
    assert (code, out) == (1, "")
    _one_line(err)
    folder = "v0.1/servers/io.github.example/added/versions"
    assert err.startswith(f"subregistry: {site} is out of date: 4 files differ: ")
    for path in ("v0.1/servers/index.html (changed)", f"{folder}/1.0.0 (missing)"):
        assert path in err
    code, _, err = await run(*_export(synced, "kiro", "--check", tmp_path / "absent.json"))
    assert code == 1
    assert _one_line(err).endswith("absent.json is out of date: it does not exist\n")
    code, _, err = await run(*_export(synced, "kiro", "--check", tmp_path))
    assert code == 1
    assert _one_line(err) == f"subregistry: {tmp_path} is out of date: it is a folder, not a file\n"


async def test_misuse_and_unwritable_outputs_are_one_line(tmp_path: Path, synced: Path) -> None:
    code, out, err = await run(*_export(synced, "kiro", "--view", "nope"))
    assert (code, out) == (2, "")  # like every command's unknown --view
    assert _one_line(err) == "subregistry: no view named 'nope' (configured: default)\n"

    code, out, err = await run(*_export(synced, "static"))
    assert (code, out) == (1, "")
    assert "--output DIR" in _one_line(err)

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases = [
        ("kiro", blocker / "kiro.json"),  # its folder is a file
        ("kiro", tmp_path),  # a folder where the file goes
        ("static", blocker),  # a file where the folder goes
        ("static", blocker / "site"),
    ]
    before = _tree(tmp_path)
    for fmt, target in cases:
        code, out, err = await run(*_export(synced, fmt, "--output", target))
        assert (code, out) == (1, ""), target
        assert _one_line(err).startswith(f"subregistry: cannot write {target}: "), err
    assert _tree(tmp_path) == before  # nothing half-written, no temporary file left behind


@pytest.mark.parametrize("fmt", ["github", "vscode", "claude-code", "cline", "kiro"])
async def test_every_file_format_runs_through_the_command(
    tmp_path: Path, synced: Path, fmt: str
) -> None:
    """Each `--format` the CLI offers reaches its exporter and writes JSON, then checks as
    current (a name the CLI accepts but no module answers would be a traceback here)."""
    target = tmp_path / f"{fmt}.json"
    code, out, err = await run(*_export(synced, fmt, "--output", target))
    assert code == 0, err
    assert "Traceback" not in err and out.startswith("wrote ")
    assert isinstance(json.loads(target.read_text(encoding="utf-8")), dict)
    code, out, err = await run(*_export(synced, fmt, "--check", target))
    assert (code, out, err) == (0, "", "")
