"""The `static` export (issue #15): the read API as plain files. The tree of the real catalogue
is served by a plain static file server (python's http.server, a real process) and read by a
second mirror's real sync as its upstream, which converges to the same catalogue; a curated
view too. Hostile names never leave the tree, a re-export prunes only its own folder, and
`--check` names what differs."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from sync.config import Config, config_from_mapping
from sync.policy.catalogue import ServedVersion, ServerGroup, groups
from sync.policy.commands import policy_export_command
from sync.policy.export import ExportOptions
from sync.policy.formats import static
from sync.policy.sinks import TreeSink
from sync.store import open_reader
from tests.cli_helpers import free_port, run
from tests.fake_upstream import OFFICIAL
from tests.helpers import DEPRECATED, MULTI

CURATED = """
[[views]]
name = "curated"
base_path = "/teams/curated"
[views.filter]
include = ["ai.exa/*", "com.fenetresurciel.*", "io.github.kirbah/*"]
"""


def _toml(tmp_path: Path, db: Path, upstream: str, extra: str = "") -> Path:
    path = tmp_path / f"{db.stem}.toml"
    path.write_text(
        f'[storage]\npath = "{db}"\n[logging]\nformat = "json"\n'
        f'[[upstreams]]\nname = "official"\nurl = "{upstream}"\npage_delay = 0\nretries = 1\n'
        + extra
    )
    return path


async def _served(db: Path, view: str = "default") -> dict[tuple[str, str], tuple[str, str]]:
    """(name, version) -> (server text, served status), deleted rows included."""
    reader = await open_reader(config_from_mapping({"storage": {"path": str(db)}}).storage)
    try:
        return {
            (n, v): (server, json.loads(meta)[OFFICIAL]["status"])
            async for n, v, server, meta in reader.export(view)
        }
    finally:
        await reader.close()


def _admitted(
    rows: dict[tuple[str, str], tuple[str, str]], *, deprecated: bool
) -> dict[tuple[str, str], tuple[str, str]]:
    ok = {"active", "deprecated"} if deprecated else {"active"}
    return {k: v for k, v in rows.items() if v[1] in ok}


class StaticHost:
    """`python -m http.server` serving a folder on a loopback port: a plain file host."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> StaticHost:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(self.root),
            str(self.port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                try:
                    async with session.get(self.base + "/.nojekyll") as response:
                        if response.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("the static file server did not start")

    async def __aexit__(self, *_: object) -> None:
        assert self.process is not None
        self.process.terminate()
        await self.process.wait()


async def _converge(
    tmp_path: Path, source: Path, view: str, *flags: str, extra: str = ""
) -> tuple[dict[tuple[str, str], tuple[str, str]], dict[tuple[str, str], tuple[str, str]]]:
    """Export `view` of the mirror `source` as a static tree, serve it, sync a fresh mirror
    from it; return (what the view admits, what the second mirror serves)."""
    site = tmp_path / "site"
    config = _toml(tmp_path, source, "http://127.0.0.1:9", extra)
    if extra:  # the new view's rows are built by re-applying the rules, offline
        code, _, err = await run("--config", config, "reapply")
        assert code == 0, err
    code, out, err = await run(
        "--config", config, "policy", "export", "--format", "static", "--view", view,
        "--output", site, *flags,
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("wrote ") and out.endswith(f" to {site}\n"), out
    assert "Traceback" not in err
    async with StaticHost(site) as host:
        second = tmp_path / "second.db"
        code, _, err = await run("--config", _toml(tmp_path, second, host.base), "sync")
        assert code == 0, err
    expected = _admitted(await _served(source, view), deprecated="--include-deprecated" in flags)
    return expected, await _served(second)


@pytest.fixture
def source(tmp_path: Path, mirror_db: Path) -> Path:
    path = tmp_path / "source.db"
    shutil.copy(mirror_db, path)
    return path


async def test_a_static_tree_served_by_a_file_host_syncs_into_the_same_catalogue(
    tmp_path: Path, source: Path
) -> None:
    expected, mirrored = await _converge(tmp_path, source, "default")
    assert len(expected) > 2500
    assert mirrored == expected  # same keys, byte-identical server JSON, same status
    assert DEPRECATED not in mirrored  # deprecated only with the flag
    assert all(status == "active" for _, status in mirrored.values())


async def test_a_curated_view_with_deprecated_versions_converges_too(
    tmp_path: Path, source: Path
) -> None:
    expected, mirrored = await _converge(
        tmp_path, source, "curated", "--include-deprecated", extra=CURATED
    )
    everything = await _served(source)
    assert 0 < len({n for n, _ in expected}) < len({n for n, _ in everything})
    assert mirrored == expected
    assert mirrored[DEPRECATED][1] == "deprecated"
    deleted = [k for k, (_, status) in everything.items() if status == "deleted"]
    assert deleted and not set(deleted) & set(mirrored)  # a tombstone never makes a file


async def test_the_reads_vscode_makes_are_answered_by_the_served_tree(
    tmp_path: Path, source: Path
) -> None:
    config = config_from_mapping({"storage": {"path": str(source)}})
    site = tmp_path / "site"
    assert await _export(config, site) == 0
    async with StaticHost(site) as host, aiohttp.ClientSession() as session:
        # The probe: the host redirects to /v0.1/servers/ and answers with the list file.
        async with session.get(host.base + "/v0.1/servers?limit=1") as response:
            assert response.status == 200
            body = await response.json(content_type=None)
        assert isinstance(body["servers"], list) and body["servers"]
        assert body["metadata"] == {"count": len(body["servers"])}  # no nextCursor
        first = body["servers"][0]
        assert set(first) == {"server", "_meta"} and first["server"]["description"]
        ns, server = MULTI.split("/")
        for version in ("latest", None):
            path = f"/v0.1/servers/{ns}%2F{server}/versions" + (f"/{version}" if version else "")
            url = URL(host.base + path, encoded=True)
            # `latest` is a file: a 200, never a redirect (a later VS Code refuses one); the
            # versions list is a folder's index.html, reached like the list.
            async with session.get(url, allow_redirects=version is None) as response:
                assert response.status == 200, path
                body = await response.json(content_type=None)
            if version:
                assert body["server"]["name"] == MULTI
                assert body["_meta"][OFFICIAL]["isLatest"] is True
            else:
                assert {i["server"]["name"] for i in body["servers"]} == {MULTI}
                stamps = [i["_meta"][OFFICIAL]["publishedAt"] for i in body["servers"]]
                assert stamps == sorted(stamps, reverse=True)  # newest first, as the API


async def _export(config: Config, site: Path, *, check: Path | None = None) -> int:
    return await policy_export_command(
        config,
        "static",
        view="default",
        output=None if check else site,
        check=check,
        include_deprecated=False,
        registry_url=None,
        registry_only=False,
    )


def _row(name: str, version: str, *, status: str = "active", latest: bool = False) -> ServedVersion:
    server = {"name": name, "version": version, "description": "d"}
    meta = {OFFICIAL: {"status": status, "isLatest": latest, "publishedAt": "2025-01-01T00:00:00Z"}}
    return ServedVersion(
        name, version, status, latest, "2025-01-01T00:00:00Z", server,
        json.dumps(server), json.dumps(meta),
    )  # fmt: skip


async def _stream(*servers: ServerGroup) -> AsyncIterator[ServerGroup]:
    for group in servers:
        yield group


async def test_hostile_names_and_versions_never_leave_the_tree_nor_share_a_file(
    tmp_path: Path,
) -> None:
    hostile = [
        ("../evil", ["1.0.0"]),
        ("ns/..", ["1.0.0"]),
        ("a/b/c", ["1.0.0"]),
        ("index.html/x", ["1.0.0"]),  # its folder would be the list file
        ("noslash", ["1.0.0"]),
        ("ns/esc\x1b[31m", ["1.0.0"]),
        ("ns/ok", ["../../../etc/passwd", "..", "latest", "LATEST", "index.html", "1/2",
                   "x" * 300, "1.0.0", "1.0.0-RC1", "1.0.0-rc1", "a\\b"]),
        ("NS/OK", ["1.0.0"]),  # the same files as ns/ok on a case-insensitive disk
        ("ns/caf\u00e9", ["1"]),
        ("ns/cafe\u0301", ["1"]),  # the same name as the one before, decomposed (macOS)
    ]  # fmt: skip
    stream = _stream(
        *(ServerGroup(name, tuple(_row(name, v) for v in versions)) for name, versions in hostile)
    )
    out = tmp_path / "out"
    sink = TreeSink(out)
    result = await static.export(stream, ExportOptions(view="default"), sink)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    folder = "v0.1/servers/ns/ok/versions"
    assert files == {
        ".nojekyll",
        "v0.1/servers/index.html",
        f"{folder}/index.html",
        f"{folder}/1.0.0",
        f"{folder}/1.0.0-RC1",
        f"{folder}/latest",
        "v0.1/servers/ns/caf\u00e9/versions/index.html",
        "v0.1/servers/ns/caf\u00e9/versions/1",
        "v0.1/servers/ns/caf\u00e9/versions/latest",
    }
    assert {p.name for p in tmp_path.iterdir()} == {"out"}  # nothing written beside it
    assert result.servers == 2
    assert len(result.warnings) == 17, result.warnings
    assert all("is left out" in w for w in result.warnings)
    listed = json.loads((out / "v0.1/servers/index.html").read_bytes())
    assert [(i["server"]["name"], i["server"]["version"]) for i in listed["servers"]] == [
        ("ns/ok", "1.0.0"),
        ("ns/ok", "1.0.0-RC1"),
        ("ns/caf\u00e9", "1"),
    ]


async def test_deleted_versions_never_and_deprecated_ones_per_flag(tmp_path: Path) -> None:
    group = ServerGroup(
        "ns/s",
        (
            _row("ns/s", "1", status="deleted"),
            _row("ns/s", "2", status="deprecated", latest=True),
            _row("ns/s", "3"),
        ),
    )
    for flag, expected in ((False, {"3"}), (True, {"2", "3"})):
        out = tmp_path / str(flag)
        options = ExportOptions(view="default", include_deprecated=flag)
        await static.export(_stream(group), options, TreeSink(out))
        folder = out / "v0.1/servers/ns/s/versions"
        assert {p.name for p in folder.iterdir()} == {*expected, "index.html", "latest"}
        latest = json.loads((folder / "latest").read_bytes())["server"]["version"]
        assert latest == ("2" if flag else "3")


async def test_reexporting_prunes_only_its_own_folder_and_check_names_what_differs(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_from_mapping({"storage": {"path": str(source)}})
    site = tmp_path / "site"
    (site / "v0.1/servers/gone.example/x/versions").mkdir(parents=True)
    (site / "v0.1/servers/gone.example/x/versions/1.0.0").write_text("{}")
    (site / "index.html").write_text("<h1>our site</h1>")
    (site / "CNAME").write_text("registry.example.com")
    assert await _export(config, site) == 0
    assert not (site / "v0.1/servers/gone.example").exists()  # file and folders pruned
    assert (site / "index.html").read_text() == "<h1>our site</h1>"
    assert (site / "CNAME").exists()
    assert (site / "v0.1/servers/index.html").stat().st_mode & 0o044  # others may read it
    capsys.readouterr()

    assert await _export(config, site, check=site) == 0
    assert capsys.readouterr() == ("", "")  # current: silent

    ns, server = MULTI.split("/")
    folder = site / f"v0.1/servers/{ns}/{server}/versions"
    (folder / "latest").write_text("{}")
    (site / "v0.1/servers/index.html").unlink()
    (site / "v0.1/servers/extra").write_text("{}")
    (site / "about.html").write_text("not ours")  # outside v0.1: never reported
    assert await _export(config, site, check=site) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"subregistry: {site} is out of date: 3 files differ: ")
    assert "v0.1/servers/index.html (missing)" in err
    assert f"v0.1/servers/{ns}/{server}/versions/latest (changed)" in err
    assert "v0.1/servers/extra (not in the export)" in err


async def test_memory_holds_one_server_not_the_list(tmp_path: Path, source: Path) -> None:
    """The list file is streamed: exporting costs the catalogue stream plus one server's
    versions, never the list file's size on top (measured with tracemalloc)."""
    config = config_from_mapping({"storage": {"path": str(source)}})
    reader = await open_reader(config.storage, connections=1)
    try:
        tracemalloc.start()
        async for _ in groups(reader, "default"):
            pass
        _, streaming = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        site = tmp_path / "site"
        await static.export(groups(reader, "default"), ExportOptions("default"), TreeSink(site))
        _, exporting = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await reader.close()
    listed = (site / "v0.1/servers/index.html").stat().st_size
    print(f"static export peak {exporting} B, stream alone {streaming} B, list file {listed} B")
    assert exporting - streaming < listed
