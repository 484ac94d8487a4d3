"""The `kiro` export (issue #15): the single-file catalogue Kiro and Amazon Q read, checked
against the JSON schema Kiro publishes (tests/data/policy/kiro.schema.json), over the real
catalogue and a curated view; aliases are injective and documented in the file."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sync.config import config_from_mapping
from sync.policy.catalogue import ServedVersion, ServerGroup, groups
from sync.policy.export import ExportOptions, ExportResult
from sync.policy.formats import kiro
from sync.policy.sinks import FileSink
from sync.store import open_reader
from tests.cli_helpers import run
from tests.fake_upstream import OFFICIAL

SCHEMA = json.loads((Path(__file__).parent / "data/policy/kiro.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)

# The documented example, verbatim (https://kiro.dev/docs/cli/mcp/governance/).
DOCUMENTED = {
    "servers": [
        {"server": {"name": "my-remote-server", "title": "My server",
                    "description": "My server description", "version": "1.0.0",
                    "remotes": [{"type": "streamable-http", "url": "https://acme.com/my-server",
                                 "headers": [{"name": "X-My-Header", "value": "SomeValue"}]}]}},
        {"server": {"name": "my-local-server", "title": "My server",
                    "description": "My server description", "version": "1.0.0",
                    "packages": [{"registryType": "npm", "registryBaseUrl": "https://npm.acme.com",
                                  "identifier": "@acme/my-server", "transport": {"type": "stdio"},
                                  "runtimeArguments": [{"type": "positional", "value": "-q"}],
                                  "packageArguments": [{"type": "positional", "value": "start"}],
                                  "environmentVariables": [{"name": "ENV_VAR",
                                                            "value": "ENV_VAR_VALUE"}]}]}},
    ]
}  # fmt: skip


def _errors(document: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(document)]


async def _export(
    stream: AsyncIterator[ServerGroup], *, deprecated: bool = False
) -> tuple[dict[str, Any], ExportResult, bytes]:
    sink = FileSink(None)
    options = ExportOptions(view="default", include_deprecated=deprecated)
    result = await kiro.export(stream, options, sink)
    assert sink.data is not None
    return json.loads(sink.data), result, sink.data


async def _stream(*servers: ServerGroup) -> AsyncIterator[ServerGroup]:
    for group in servers:
        yield group


def _group(name: str, version: str = "1.0.0", **server: Any) -> ServerGroup:
    body = {"name": name, "version": version, "description": "d", **server}
    meta = {OFFICIAL: {"status": "active", "isLatest": True, "publishedAt": "2025-01-01T00:00:00Z"}}
    row = ServedVersion(
        name, version, "active", True, "2025-01-01T00:00:00Z", body,
        json.dumps(body), json.dumps(meta),
    )  # fmt: skip
    return ServerGroup(name, (row,))


def test_the_schema_accepts_the_documented_example_and_refuses_a_registry_name() -> None:
    assert _errors(DOCUMENTED) == []
    bad = json.loads(json.dumps(DOCUMENTED))
    bad["servers"][0]["server"]["name"] = "io.github.acme/weather"
    bad["servers"][1]["server"]["packages"] *= 2
    assert len(_errors(bad)) == 2


def _check_file(document: dict[str, Any]) -> list[str]:
    """Schema-valid, names unique, every alias documented twice and mapping back."""
    assert _errors(document) == []
    names = [e["server"]["name"] for e in document["servers"]]
    assert len(names) == len(set(names))
    aliases = document["_meta"][kiro.META]["aliases"]
    documented = {
        e["server"]["name"]: e["_meta"][kiro.META]["registryName"]
        for e in document["servers"]
        if "_meta" in e
    }
    assert documented == aliases
    for alias, name in aliases.items():
        assert kiro.alias(name) == alias
        assert alias.replace("_", "/", 1) == name  # the first `_` is where the `/` was
    return names


@pytest.fixture
def source(tmp_path: Path, mirror_db: Path) -> Path:
    path = tmp_path / "source.db"
    shutil.copy(mirror_db, path)
    return path


async def test_the_real_catalogue_becomes_a_valid_kiro_file(source: Path) -> None:
    reader = await open_reader(config_from_mapping({"storage": {"path": str(source)}}).storage)
    try:
        document, result, data = await _export(groups(reader, "default"))
        again = await _export(groups(reader, "default"))
        admitted = [
            g.name
            async for g in groups(reader, "default")
            if g.current(include_deprecated=False) is not None
        ]
    finally:
        await reader.close()
    assert again[2] == data  # deterministic
    assert data.endswith(b"}\n")
    names = _check_file(document)
    assert result.servers == len(names) > 900
    left_out = [w for w in result.warnings if " is left out" in w]
    assert len(names) + len(left_out) == len(admitted)  # each admitted server: in, or said why
    assert all(w.startswith("'") and w.endswith(".") for w in result.warnings)
    for entry in document["servers"]:
        assert (
            len(entry["server"].get("remotes", [])) + len(entry["server"].get("packages", [])) == 1
        )


def test_aliases_are_injective_over_the_catalogue(catalogue: list[dict[str, Any]]) -> None:
    names = {item["server"]["name"] for item in catalogue}
    aliases = {kiro.alias(n) for n in names}
    assert None not in aliases
    assert len(aliases) == len(names)


async def test_look_alike_names_never_share_an_alias() -> None:
    document, result, _ = await _export(
        _stream(
            _group("a-b/c", remotes=[{"type": "sse", "url": "https://x/1"}]),
            _group("a.b/c", remotes=[{"type": "sse", "url": "https://x/2"}]),
            _group("a.b_c", remotes=[{"type": "sse", "url": "https://x/3"}]),  # not a registry name
            _group("a/b-c", remotes=[{"type": "sse", "url": "https://x/4"}]),
            _group("x_y/z", remotes=[{"type": "sse", "url": "https://x/5"}]),  # `_` in namespace
            _group("x/y/z", remotes=[{"type": "sse", "url": "https://x/6"}]),
            _group("ok", remotes=[{"type": "sse", "url": "https://x/7"}]),  # too short for Kiro
        )
    )
    names = _check_file(document)
    assert names == ["a-b_c", "a.b_c", "a_b-c"]
    assert result.warnings == [
        "'a.b_c' '1.0.0' is left out: its Kiro name 'a.b_c' is already 'a.b/c''s.",
        "'x_y/z' '1.0.0' is left out: its name cannot be made a Kiro name.",
        "'x/y/z' '1.0.0' is left out: its name cannot be made a Kiro name.",
        "'ok' '1.0.0' is left out: its name cannot be made a Kiro name.",
    ]


async def test_one_launch_is_chosen_deterministically_and_what_is_dropped_is_said() -> None:
    npm_named = {
        "registryType": "npm", "identifier": "@a/named", "version": "1.0.0",
        "transport": {"type": "stdio"},
        "packageArguments": [{"type": "named", "name": "--port", "value": "8080"},
                             {"type": "positional", "value": "serve"},
                             {"type": "positional", "valueHint": "path"}],
        "environmentVariables": [{"name": "TOKEN", "isSecret": True},
                                 {"name": "MODE", "value": "fast"},
                                 {"name": "URL", "value": "https://{host}/"}],
    }  # fmt: skip
    pypi = {"registryType": "pypi", "identifier": "clean", "transport": {"type": "stdio"}}
    templated = {"type": "streamable-http", "url": "https://{tenant}.example.com/mcp"}
    document, result, _ = await _export(
        _stream(
            _group("ns/both", packages=[npm_named, pypi], remotes=[templated]),
            _group("ns/lossy", description="x" * 150, title="t" * 101, packages=[npm_named]),
            _group("ns/none", packages=[{"registryType": "mcpb", "identifier": "https://x/a.mcpb",
                                         "transport": {"type": "stdio"}}],
                   remotes=[templated]),
            _group("ns/empty", description=""),
            _group("ns/bare", description="", remotes=[{"type": "sse", "url": "https://b/"}]),
        )
    )  # fmt: skip
    _check_file(document)
    both, lossy, bare = (e["server"] for e in document["servers"])
    assert bare["description"] == "ns/bare"
    assert both["packages"] == [
        {"registryType": "pypi", "identifier": "clean", "transport": {"type": "stdio"}}
    ]  # the one that loses nothing, over the first one
    assert lossy["packages"][0]["packageArguments"] == [{"type": "positional", "value": "serve"}]
    assert lossy["packages"][0]["environmentVariables"] == [
        {"name": "TOKEN"}, {"name": "MODE", "value": "fast"}, {"name": "URL"}
    ]  # fmt: skip
    assert lossy["description"] == "x" * 99 + "…" and len(lossy["title"]) == 100
    assert result.warnings == [
        "'ns/both' '1.0.0': Kiro takes one remote or one package; kept the pypi package clean, "
        "left out the npm package @a/named, the remote https://{tenant}.example.com/mcp "
        "(a templated URL).",
        "'ns/lossy' '1.0.0': Kiro takes positional arguments with a value only; dropped from "
        "the npm package @a/named: --port (named), path (positional).",
        "'ns/lossy' '1.0.0': its title is trimmed to Kiro's 100 characters.",
        "'ns/lossy' '1.0.0': its description is trimmed to Kiro's 100 characters.",
        "'ns/none' '1.0.0' is left out: Kiro runs one npm, PyPI or OCI package over stdio or "
        "one streamable-http or sse remote at a fixed URL; it has the remote "
        "https://{tenant}.example.com/mcp (a templated URL), the mcpb package https://x/a.mcpb.",
        "'ns/empty' '1.0.0' is left out: Kiro runs one npm, PyPI or OCI package over stdio or "
        "one streamable-http or sse remote at a fixed URL; it has no remote and no package.",
        "'ns/bare' '1.0.0' has no description, which Kiro requires: its name stands in.",
    ]


async def test_a_curated_view_exports_only_its_servers(tmp_path: Path, source: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[storage]\npath = "{source}"\n[logging]\nformat = "json"\n'
        '[[upstreams]]\nname = "official"\nurl = "http://127.0.0.1:9"\n'
        '[[views]]\nname = "curated"\nbase_path = "/c"\n'
        '[views.filter]\ninclude = ["ai.exa/*", "io.github.kirbah/*"]\n'
    )
    code, _, err = await run("--config", config, "reapply")
    assert code == 0, err
    code, out, err = await run(
        "--config", config, "policy", "export", "--format", "kiro", "--view", "curated"
    )
    assert code == 0, err
    document = json.loads(out)
    names = _check_file(document)
    assert names and all(n.startswith(("ai.exa_", "io.github.kirbah_")) for n in names)


async def test_deleted_versions_never_deprecated_ones_with_the_flag() -> None:
    def row(version: str, status: str, latest: bool, published: str) -> ServedVersion:
        body = {
            "name": "ns/s",
            "version": version,
            "description": "d",
            "remotes": [{"type": "sse", "url": "https://x/"}],
        }
        meta = {OFFICIAL: {"status": status, "isLatest": latest, "publishedAt": published}}
        return ServedVersion("ns/s", version, status, latest, published, body,
                             json.dumps(body), json.dumps(meta))  # fmt: skip

    group = ServerGroup(
        "ns/s",
        (
            row("1", "active", False, "2025-01-01"),
            row("2", "deleted", False, "2025-02-01"),
            row("3", "deprecated", True, "2025-03-01"),
        ),
    )
    plain, _, _ = await _export(_stream(group))
    flagged, _, _ = await _export(_stream(group), deprecated=True)
    assert [e["server"]["version"] for e in plain["servers"]] == ["1"]
    assert [e["server"]["version"] for e in flagged["servers"]] == ["3"]
    gone = ServerGroup("ns/s", (row("2", "deleted", True, "2025-02-01"),))
    empty, result, _ = await _export(_stream(gone), deprecated=True)
    assert empty["servers"] == [] and result.warnings == []


async def test_memory_holds_one_server_and_the_alias_table_not_the_file(
    tmp_path: Path, mirror_db: Path
) -> None:
    """The file is streamed entry by entry: exporting the real catalogue costs the catalogue
    stream plus one server and the alias table, far below the file's own size (tracemalloc)."""
    config = config_from_mapping({"storage": {"path": str(mirror_db)}})
    reader = await open_reader(config.storage, connections=1)
    target = tmp_path / "kiro.json"
    try:
        tracemalloc.start()
        async for _ in groups(reader, "default"):
            pass
        _, streaming = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = await kiro.export(
            groups(reader, "default"), ExportOptions("default"), FileSink(target)
        )
        _, exporting = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await reader.close()
    document = json.loads(target.read_bytes())
    aliases = document["_meta"][kiro.META]["aliases"]
    assert len(document["servers"]) == result.entries > 500 and aliases
    table = len(json.dumps(aliases))
    size = target.stat().st_size
    print(f"kiro export peak {exporting} B, stream alone {streaming} B, file {size} B")
    assert exporting - streaming < table + size // 4
