"""The pure parts every exporter and the doctor share: URL templates, safe export paths, and
how a served view is read one server at a time."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sync.config import config_from_mapping
from sync.policy.catalogue import ServedVersion, ServerGroup, groups, version_of
from sync.policy.sinks import CheckSink, FileSink, TreeSink, UnsafePath, safe_parts
from sync.policy.templates import canonical, glob, is_template, matches, variables
from sync.store import open_reader
from tests.helpers import DEPRECATED, MULTI, build_mirror, served

OFFICIAL = "io.modelcontextprotocol.registry/official"


class TestTemplates:
    @pytest.mark.parametrize(
        ("url", "want"),
        [
            ("HTTPS://MCP.Example.COM/Path", "https://mcp.example.com/Path"),
            ("https://mcp.example.com:443/mcp", "https://mcp.example.com/mcp"),
            ("http://mcp.example.com:80/mcp", "http://mcp.example.com/mcp"),
            ("https://mcp.example.com:8443/mcp", "https://mcp.example.com:8443/mcp"),
            ("https://mcp.example.com./mcp#frag", "https://mcp.example.com/mcp"),
            ("https://[::1]:8443/mcp", "https://[::1]:8443/mcp"),
            ("not a url at all", "not a url at all"),
            ("https://host:notaport/x", "https://host:notaport/x"),
        ],
    )
    def test_canonical_form(self, url: str, want: str) -> None:
        assert canonical(url) == want

    def test_variables_and_glob(self) -> None:
        url = "https://{tenant}.Example.com/{org}/mcp"
        assert is_template(url)
        assert variables(url) == ["tenant", "org"]
        assert glob(url) == "https://*.example.com/*/mcp"
        assert not is_template("https://example.com/mcp")

    @pytest.mark.parametrize(
        ("url", "ok"),
        [
            ("https://acme.example.com/mcp", True),
            ("https://ACME.example.com:443/mcp", True),
            ("https://acme.example.com/other", False),  # another path
            ("https://a.b.example.com/mcp", True),  # a variable may span host labels
            ("https://example.com/mcp", False),  # an empty filling is no filling
            ("https://evil.com/x.example.com/mcp", False),  # never across a /
            ("https://evil.com?.example.com/mcp", False),  # nor into the query
        ],
    )
    def test_matches_a_filling_of_the_template(self, url: str, ok: bool) -> None:
        assert matches("https://{tenant}.example.com/mcp", url) is ok

    def test_a_template_without_variables_matches_itself_only(self) -> None:
        assert matches("https://x.example.com/mcp", "https://X.example.com/mcp")
        assert not matches("https://x.example.com/mcp", "https://x.example.com/mcp/")
        # Regex metacharacters in a URL are literal.
        assert not matches("https://x.example.com/a.c", "https://x.example.com/abc")


class TestSafePaths:
    @pytest.mark.parametrize(
        "path",
        ["", "/etc/passwd", "a/../b", "..", "a//b", "./a", "a\\b", "a\x00b", "a/"],
    )
    def test_unsafe_paths_are_refused(self, path: str) -> None:
        with pytest.raises(UnsafePath):
            safe_parts(path)

    def test_safe_path(self) -> None:
        assert safe_parts("v0.1/servers/io.github.x/y/versions/1.0.0+build") == (
            "v0.1",
            "servers",
            "io.github.x",
            "y",
            "versions",
            "1.0.0+build",
        )

    def test_tree_sink_never_writes_outside_its_root(self, tmp_path: Path) -> None:
        sink = TreeSink(tmp_path / "out")
        with pytest.raises(UnsafePath):
            sink.write("v0.1/../../escape", b"x")
        assert not (tmp_path / "escape").exists()
        sink.write("v0.1/a", b"x")
        assert (tmp_path / "out" / "v0.1" / "a").read_bytes() == b"x"

    def test_file_sink_and_check_sink(self, tmp_path: Path) -> None:
        target = tmp_path / "policy.json"
        FileSink(target).write("", b"{}\n")
        assert target.read_bytes() == b"{}\n"
        same = CheckSink(target, tree=False)
        same.write("", b"{}\n")
        assert same.stale == []
        other = CheckSink(target, tree=False)
        other.write("", b"[]\n")
        assert other.stale == [f"{target} (changed)"]

    def test_check_sink_of_a_tree_lists_missing_changed_and_extra_files(
        self, tmp_path: Path
    ) -> None:
        root = tmp_path / "site"
        tree = TreeSink(root)
        tree.write("v0.1/a", b"1")
        tree.write("v0.1/b", b"2")
        check = CheckSink(root, tree=True)
        check.write("v0.1/a", b"1")  # current
        check.write("v0.1/c", b"3")  # missing on disk
        check.finish()  # v0.1/b is on disk but no longer exported
        assert check.stale == ["v0.1/c (missing)", "v0.1/b (not in the export)"]


def _version(
    version: str, status: str, *, latest: bool = False, published: str = ""
) -> ServedVersion:
    meta = {OFFICIAL: {"status": status, "isLatest": latest, "publishedAt": published}}
    server = {"name": "io.github.x/y", "version": version, "description": "d"}
    return version_of(("io.github.x/y", version, json.dumps(server), json.dumps(meta)))


class TestServerGroup:
    def test_deleted_never_admitted_deprecated_by_flag(self) -> None:
        group = ServerGroup(
            "io.github.x/y",
            (
                _version("1.0.0", "deleted", published="2025-01-01"),
                _version("1.1.0", "deprecated", published="2025-02-01"),
                _version("1.2.0", "active", latest=True, published="2025-03-01"),
            ),
        )
        assert [v.version for v in group.allowed(include_deprecated=False)] == ["1.2.0"]
        assert [v.version for v in group.allowed(include_deprecated=True)] == ["1.1.0", "1.2.0"]
        assert [v.version for v in group.refused(include_deprecated=False)] == ["1.0.0", "1.1.0"]
        assert [v.version for v in group.refused(include_deprecated=True)] == ["1.0.0"]

    def test_current_is_the_latest_or_the_last_published_admitted(self) -> None:
        group = ServerGroup(
            "io.github.x/y",
            (
                _version("1.0.0", "active", published="2025-01-01"),
                _version("1.1.0", "active", published="2025-02-01"),
                _version("2.0.0", "deprecated", latest=True, published="2025-03-01"),
            ),
        )
        latest = group.current(include_deprecated=True)
        assert latest is not None and latest.version == "2.0.0"
        fallback = group.current(include_deprecated=False)
        assert fallback is not None and fallback.version == "1.1.0"
        only_deleted = ServerGroup("a/b", (_version("1", "deleted"),))
        assert only_deleted.current(include_deprecated=True) is None

    def test_unreadable_or_odd_json_reads_as_empty(self) -> None:
        odd = version_of(("a/b", "1", "not json", '{"x": 1}'))
        assert odd.server == {} and odd.status == "active" and odd.remotes == []
        typed = version_of(
            (
                "a/b",
                "1",
                json.dumps(
                    {
                        "remotes": [{"url": 5}, "x", {"type": "sse", "url": "u"}],
                        "packages": {"no": "list"},
                    }
                ),
                "[]",
            )
        )
        assert [(r.type, r.url) for r in typed.remotes] == [("sse", "u")]
        assert typed.packages == []


async def test_groups_read_a_view_one_server_at_a_time(
    tmp_path: Path, catalogue: list[dict[str, Any]]
) -> None:
    path = tmp_path / "mirror.db"
    await build_mirror(path, catalogue)
    config = config_from_mapping({"storage": {"path": str(path)}})
    reader = await open_reader(config.storage, connections=1)
    try:
        rows = await served(reader)
        seen: list[tuple[str, str]] = []
        names: list[str] = []
        async for group in groups(reader, "default"):
            names.append(group.name)
            assert group.versions and all(v.name == group.name for v in group.versions)
            seen += [(v.name, v.version) for v in group.versions]
    finally:
        await reader.close()
    assert seen == sorted(rows)  # every row once, tombstones included, in (name, version) order
    assert len(names) == len(set(names))
    by_key = {(n, v) for n, v in seen}
    assert DEPRECATED in by_key and any(n == MULTI for n, _ in by_key)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.com\\.mcp.example.com/mcp",  # a browser's host is evil.com
        "https://evil.com\\x.mcp.example.com/mcp",
        "https://evil@x.mcp.example.com/mcp",  # `evil` would be userinfo, not the host
        "https://a b.mcp.example.com/mcp",
    ],
)
def test_a_filling_never_holds_a_backslash_at_or_whitespace(url: str) -> None:
    assert not matches("https://{tenant}.mcp.example.com/mcp", url)
    assert matches("https://{tenant}.mcp.example.com/mcp", "https://acme.mcp.example.com/mcp")
    # A tab is dropped, by WHATWG as by urlsplit: the client reaches ab.mcp.example.com.
    assert matches("https://{tenant}.mcp.example.com/mcp", "https://a\tb.mcp.example.com/mcp")


def test_a_backslash_is_a_slash_before_the_query_of_an_http_url() -> None:
    assert canonical("HTTPS://evil.com\\.x.example.com\\mcp?q=a\\b") == (
        "https://evil.com/.x.example.com/mcp?q=a\\b"
    )
    assert canonical("file:///a\\b") == "file:///a\\b"


POLICY = Path(__file__).parent.parent / "sync" / "policy"


def test_policy_modules_stay_small_and_import_nothing_private() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in POLICY.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}
    private = re.compile(r"^from sync\.\S+ import .*\b_[a-z]", re.MULTILINE)
    assert [p.name for p in POLICY.rglob("*.py") if private.search(p.read_text())] == []
