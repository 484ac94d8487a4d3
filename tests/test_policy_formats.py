"""Allowlist exports for GitHub Copilot, VS Code, Claude Code and Cline (#15), and the launcher
argv they share with the catalogue page.

Each client's documented matching rule is re-implemented here from its source (not from the
exporter): VS Code's `checkMcpServerAllowed` / `matchesUrlPattern`
(microsoft/vscode src/vs/platform/mcp/common/allowedMcpServers.ts), Claude Code's URL patterns
(code.claude.com/docs/en/managed-mcp), Cline's ids (docs.cline.bot mcp-server-controls). The
exports run over a mirror synced from the real catalogue in tests/data by the real engine, and
over a curated view; every admitted version must be allowed and no refused one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from sync.launch import argv, hint

POLICY = Path(__file__).parent / "data" / "policy"
Json = dict[str, Any]


def load(name: str) -> Any:
    return json.loads((POLICY / name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The clients' rules, re-implemented from their sources


def destination(url: str) -> str | None:
    """VS Code's `toNetworkDestinationUrl`: a WHATWG URL's origin + pathname + search."""
    try:
        u = URL(url)
    except ValueError:
        return None
    if u.scheme not in ("http", "https"):
        return url
    if not u.raw_host:
        return None
    port = u.explicit_port
    netloc = u.raw_host + (
        f":{port}" if port and port != {"http": 80, "https": 443}[u.scheme] else ""
    )
    query = f"?{u.raw_query_string}" if u.raw_query_string else ""
    return f"{u.scheme}://{netloc}{u.raw_path or '/'}{query}"


def vscode_url_matches(pattern: str, url: str) -> bool:
    """`matchesUrlPattern`: anchored, case-insensitive; `*` is `[^/@\\?#]*` within the
    authority and `.*` after it."""
    target = destination(url)
    if target is None:
        return False
    sep = pattern.find("://")
    start = sep + 3 if sep >= 0 else 0
    end = next((i for i in range(start, len(pattern)) if pattern[i] in "/\\?#"), len(pattern))
    source = "".join(
        ("[^/@\\\\?#]*" if i < end else ".*") if c == "*" else re.escape(c)
        for i, c in enumerate(pattern)
    )
    return re.fullmatch(source, target, re.IGNORECASE) is not None


def vscode_check(policy: Json, *, url: str | None = None, command: list[str] | None = None) -> str:
    """`checkMcpServerAllowed`: deny first; a configured allowlist needs a match."""

    def hit(entry: Json) -> bool:
        if "serverUrl" in entry:
            return url is not None and vscode_url_matches(entry["serverUrl"], url)
        if "serverCommand" in entry:
            return command is not None and entry["serverCommand"] == command
        return False

    if any(hit(e) for e in policy["deniedMcpServers"]):
        return "denied"
    if "allowedMcpServers" in policy and not any(hit(e) for e in policy["allowedMcpServers"]):
        return "not allowed"
    return "allowed"


def _split(url: str) -> tuple[str, str]:
    sep = url.find("://")
    start = sep + 3 if sep >= 0 else 0
    end = next((i for i in range(start, len(url)) if url[i] in "/?#"), len(url))
    return url[:end], url[end:]


def claude_url_matches(pattern: str, url: str) -> bool:
    """Claude Code: `*` anywhere; scheme and host case-insensitive, a trailing FQDN dot
    ignored; paths case-sensitive; a pattern with no path matches any path."""
    head, rest = _split(pattern)
    url_head, url_rest = _split(url.split("#", 1)[0])
    glob = "".join(".*" if c == "*" else re.escape(c) for c in head.rstrip("."))
    tail = ".*" if not rest else "".join(".*" if c == "*" else re.escape(c) for c in rest)
    return re.fullmatch(f"(?i:{glob})" + tail, url_head.rstrip(".") + (url_rest or "/")) is not None


def claude_check(policy: Json, *, url: str | None = None, command: list[str] | None = None) -> str:
    def hit(entry: Json) -> bool:
        if "serverUrl" in entry:
            return url is not None and claude_url_matches(entry["serverUrl"], url)
        if "serverCommand" in entry:
            return command is not None and entry["serverCommand"] == command
        return False

    if any(hit(e) for e in policy.get("deniedMcpServers", [])):
        return "denied"
    if "allowedMcpServers" in policy and not any(hit(e) for e in policy["allowedMcpServers"]):
        return "not allowed"
    return "allowed"


def cline_allows_local(config: Json, key: str) -> bool:
    """An omitted or empty `allowedMCPServers` restricts nothing; else the key must be an id."""
    ids = [e["id"] for e in config.get("allowedMCPServers") or []]
    return not ids or key in ids


def shape(value: Any) -> Any:
    """A JSON value's structure: object keys with their shapes, list item shapes, leaf types."""
    if isinstance(value, dict):
        return frozenset((k, shape(v)) for k, v in value.items())
    if isinstance(value, list):
        return ("list", frozenset(shape(v) for v in value))
    return type(value).__name__


def documented_shapes(examples: list[Json]) -> dict[str, set[Any]]:
    """Per top-level key, every shape the documented examples give it (list items flattened)."""
    found: dict[str, set[Any]] = {}
    for example in examples:
        for key, value in example.items():
            shapes = {shape(v) for v in value} if isinstance(value, list) else {shape(value)}
            found.setdefault(key, set()).update(shapes)
    return found


def assert_documented(
    output: Json, example_file: str, *, matchers_of: tuple[str, ...] = ()
) -> None:
    """Every key and item of `output` has a shape the client's documented example shows. For
    allow/deny lists, a matcher shape documented in either list counts for both."""
    documented = documented_shapes(load(example_file)["examples"])
    pooled = set().union(*(documented.get(k, set()) for k in matchers_of))
    for key, value in output.items():
        assert key in documented, key
        allowed = pooled if key in matchers_of else documented[key]
        items = value if isinstance(value, list) else [value]
        for item in items:
            assert shape(item) in allowed, (key, item)


SCHEMA = load("vscode-mcp-server-matchers.schema.json")


# ---------------------------------------------------------------------------------------------
# argv: what VS Code writes into mcp.json for a package


class TestArgv:
    @pytest.mark.parametrize(
        ("package", "expected"),
        [
            (
                {
                    "registryType": "npm",
                    "identifier": "@acme/srv",
                    "version": "1.2.3",
                    "runtimeHint": "bun",  # never read by VS Code
                    "runtimeArguments": [{"type": "named", "name": "--prefer-offline"}],
                    "packageArguments": [
                        {"type": "positional", "value": "start"},
                        {"type": "named", "name": "--port", "value": "8080"},
                        {"type": "", "value": "-m"},  # neither kind: skipped
                    ],
                },
                ["npx", "--prefer-offline", "@acme/srv@1.2.3", "start", "--port", "8080"],
            ),
            ({"registryType": "pypi", "identifier": "tool", "version": "2"}, ["uvx", "tool==2"]),
            ({"registryType": "pypi", "identifier": "tool"}, ["uvx", "tool"]),
            (
                {
                    "registryType": "oci",
                    "identifier": "ghcr.io/acme/srv",
                    "version": "1.0",
                    "runtimeArguments": [{"type": "named", "name": "-p", "value": "80:80"}],
                    "environmentVariables": [
                        {"name": "TOKEN", "isSecret": True},
                        {"name": "2"},
                        {"name": "TOKEN"},
                        {"name": "10"},
                    ],
                    "packageArguments": [{"type": "positional", "value": "serve"}],
                },
                [
                    "docker", "run", "-i", "--rm", "-p", "80:80",
                    "-e", "2", "-e", "10", "-e", "TOKEN",
                    "ghcr.io/acme/srv:1.0", "serve",
                ],
            ),
            (
                {"registryType": "oci", "identifier": "docker.io/acme/srv:2.0"},
                ["docker", "run", "-i", "--rm", "docker.io/acme/srv:2.0"],
            ),
            (
                {
                    "registryType": "nuget",
                    "identifier": "Acme.Srv",
                    "version": "1.0.0",
                    "packageArguments": [{"type": "positional", "value": "mcp"}],
                },
                ["dnx", "Acme.Srv@1.0.0", "--yes", "--", "mcp"],
            ),
            (
                {"registryType": "nuget", "identifier": "Acme.Srv", "version": "1.0.0"},
                ["dnx", "Acme.Srv@1.0.0", "--yes"],
            ),
        ],
    )  # fmt: skip
    def test_the_argv_is_the_one_vscode_builds(self, package: Json, expected: list[str]) -> None:
        assert argv(package) == expected
        assert hint(package) == expected

    @pytest.mark.parametrize(
        "args",
        [
            [{"type": "positional", "valueHint": "directory"}],
            [{"type": "positional", "valueHint": "dir", "description": "where"}],
            [{"type": "positional", "default": "."}],
            [{"type": "named", "name": "--dir", "description": "where"}],
            [{"type": "named", "name": "--level", "default": "info"}],
            [{"type": "named", "name": "--token", "isRequired": True}],
            [{"type": "named", "name": "-v", "value": "{workspace}:/w"}],
            [{"type": "positional", "value": "--org={org}", "variables": {"org": {}}}],
            [{"type": "positional", "value": 3}],
        ],
    )
    def test_a_value_the_user_supplies_makes_the_argv_unknown(self, args: list[Json]) -> None:
        package = {
            "registryType": "npm",
            "identifier": "x",
            "version": "1",
            "packageArguments": args,
        }
        assert argv(package) is None
        words = hint(package)
        assert words is not None and words[:2] == ["npx", "x@1"]
        assert any(w.startswith("<") or "<" in w for w in words[2:])

    @pytest.mark.parametrize(
        "package",
        [
            {"registryType": "mcpb", "identifier": "https://example.com/x.mcpb"},
            {"registryType": "NPM", "identifier": "x", "version": "1"},  # VS Code: exact type
            {"registryType": "cargo", "identifier": "x"},
            {"registryType": "npm", "identifier": ""},
            {"registryType": "npm"},
            {"registryType": ["npm"], "identifier": "x"},
        ],
    )
    def test_no_launcher_no_argv(self, package: Json) -> None:
        assert argv(package) is None and hint(package) is None

    def test_a_flag_and_json_braces_are_fixed(self) -> None:
        package = {
            "registryType": "npm",
            "identifier": "x",
            "version": "1",
            "packageArguments": [
                {"type": "named", "name": "--verbose"},
                {"type": "named", "name": "--config", "value": '{"a":1}'},
            ],
        }
        assert argv(package) == ["npx", "x@1", "--verbose", "--config", '{"a":1}']

    def test_over_the_real_catalogue_argv_is_the_hint_when_it_has_no_placeholder(
        self, catalogue: list[Json]
    ) -> None:
        fixed = unknown = 0
        for item in catalogue:
            for package in item["server"].get("packages") or []:
                words, shown = argv(package), hint(package)
                if words is not None:
                    fixed += 1
                    assert shown == words
                    assert package["identifier"] in " ".join(words)
                elif shown is not None:
                    unknown += 1
                    assert any("<" in w for w in shown)
        assert fixed > 1000 and unknown > 50
