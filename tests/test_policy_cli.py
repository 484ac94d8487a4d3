"""`subregistry policy export` as a real process (issue #15): same view → same bytes; `--check`
exits 0 silently while the file is current and 1 with one line once a server is published
upstream and synced; every misuse or failure is one `subregistry:` line, never a traceback."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.cli_helpers import run, write_config
from tests.fake_upstream import FakeRegistry
from tests.helpers import MULTI


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


async def test_static_never_writes_walks_or_prunes_through_a_symbolic_link(
    tmp_path: Path, synced: Path
) -> None:
    """A link planted in the output (a namespace folder, or `v0.1` itself) is refused with one
    line naming it; nothing is written into, or removed from, what it points to."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    ns = MULTI.split("/")[0]
    linked_namespace, linked_base = tmp_path / "site1", tmp_path / "site2"
    (linked_namespace / "v0.1/servers").mkdir(parents=True)
    (linked_namespace / f"v0.1/servers/{ns}").symlink_to(victim)
    (linked_base / "v0.1/servers/gone.example").mkdir(parents=True)
    (linked_base / "v0.1/servers/gone.example/old").write_text("{}")
    shutil.move(linked_base / "v0.1", victim / "v0.1")
    (linked_base / "v0.1").symlink_to(victim / "v0.1")
    before = _tree(victim)
    for site, link in ((linked_namespace, f"v0.1/servers/{ns}"), (linked_base, "v0.1")):
        code, out, err = await run(*_export(synced, "static", "--output", site))
        assert (code, out) == (1, ""), err
        assert _one_line(err) == (
            f"subregistry: cannot write {site}: {link} is a symbolic link, which the export "
            "never writes through\n"
        )
        assert (site / link).is_symlink()
        code, out, err = await run(*_export(synced, "static", "--check", site))
        assert (code, out) == (1, "")
        assert f"{link} (a symbolic link)" in _one_line(err)
    assert _tree(victim) == before  # nothing written, nothing pruned

    # A link the export does not write through is pruned as a file: the link goes, not its target.
    site = tmp_path / "site3"
    code, _, err = await run(*_export(synced, "static", "--output", site))
    assert code == 0, err
    (site / "v0.1/servers/extra").symlink_to(victim)
    code, _, err = await run(*_export(synced, "static", "--output", site))
    assert code == 0, err
    assert not (site / "v0.1/servers/extra").is_symlink()
    assert _tree(victim) == before


async def test_check_and_prune_agree_on_hidden_files_and_a_file_is_not_a_folder(
    tmp_path: Path, synced: Path
) -> None:
    """A file an earlier export left is stale for `--check` exactly when a re-export prunes
    it, whatever its name (`.1` is a version); only a sink's own file in progress is skipped."""
    site = tmp_path / "site"
    code, _, err = await run(*_export(synced, "static", "--output", site))
    assert code == 0, err
    ns, server = MULTI.split("/")
    folder = site / f"v0.1/servers/{ns}/{server}/versions"
    (folder / ".1").write_text("{}")  # a removed version named `.1`
    in_progress = folder / ".subregistry-0123456789abcdef.tmp"
    in_progress.write_text("{}")
    code, out, err = await run(*_export(synced, "static", "--check", site))
    assert (code, out) == (1, "")
    assert _one_line(err) == (
        f"subregistry: {site} is out of date: 1 file differs: "
        f"v0.1/servers/{ns}/{server}/versions/.1 (not in the export)\n"
    )
    code, _, err = await run(*_export(synced, "static", "--output", site))
    assert code == 0, err
    assert not (folder / ".1").exists() and in_progress.exists()
    code, _, err = await run(*_export(synced, "static", "--check", site))
    assert (code, err) == (0, "")

    not_a_folder = tmp_path / "site.txt"
    not_a_folder.write_text("a file")
    code, out, err = await run(*_export(synced, "static", "--check", not_a_folder))
    assert (code, out) == (1, "")
    assert _one_line(err) == (
        f"subregistry: {not_a_folder} is out of date: it is a file, not a folder\n"
    )
