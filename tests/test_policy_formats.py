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

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from yarl import URL

from sync.config import config_from_mapping
from sync.launch import argv, hint
from sync.metrics import Metrics
from sync.policy import matchers
from sync.policy.catalogue import ServedVersion, ServerGroup, groups, version_of
from sync.policy.export import Exporter, ExportOptions, ExportResult
from sync.policy.formats import claude, cline, github, vscode
from sync.policy.sinks import FileSink
from sync.pull.engine import Engine
from sync.store.sqlite.reader import SqliteReader
from tests.fake_upstream import OFFICIAL, FakeRegistry
from tests.helpers import DEPRECATED, MULTI, mirror_config, no_sleep, open_writer, serving

POLICY = Path(__file__).parent / "data" / "policy"
Json = dict[str, Any]


def load(name: str) -> Any:
    return json.loads((POLICY / name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The clients' rules, re-implemented from their sources


def _whatwg_encode(text: str, unsafe: str) -> str:
    # WHATWG URL percent-encode sets: C0 controls, non-ASCII, and the set's own characters.
    return "".join(
        "".join(f"%{b:02X}" for b in c.encode()) if c in unsafe or not " " < c < "\x7f" else c
        for c in text
    )


def destination(url: str) -> str | None:
    """VS Code's `toNetworkDestinationUrl`: a WHATWG URL's origin + pathname + search (the host
    through yarl's IDNA, the path and query through the WHATWG percent-encode sets)."""
    try:
        u = URL(url)
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if u.scheme not in ("http", "https"):
        return url
    if not u.raw_host:
        return None
    port = u.explicit_port
    default = {"http": 80, "https": 443}[u.scheme]
    netloc = u.raw_host + (f":{port}" if port and port != default else "")
    path = _whatwg_encode(parts.path or "/", ' "#<>?`{}')
    query = "?" + _whatwg_encode(parts.query, " \"#<>'") if parts.query else ""
    return f"{u.scheme}://{netloc}{path}{query}"


def vscode_url_matches(pattern: str, url: str) -> bool:
    """`matchesUrlPattern`: anchored, case-insensitive; `*` is `[^/@\\?#]*` within the
    authority and `.*` after it."""
    target = destination(url)
    return target is not None and vscode_regex(pattern).fullmatch(target) is not None


@functools.cache
def vscode_regex(pattern: str) -> re.Pattern[str]:
    sep = pattern.find("://")
    start = sep + 3 if sep >= 0 else 0
    end = next((i for i in range(start, len(pattern)) if pattern[i] in "/\\?#"), len(pattern))
    source = "".join(
        ("[^/@\\\\?#]*" if i < end else ".*") if c == "*" else re.escape(c)
        for i, c in enumerate(pattern)
    )
    return re.compile(source, re.IGNORECASE)


def vscode_check(policy: Json, *, url: str | None = None, command: list[str] | None = None) -> str:
    """`checkMcpServerAllowed`: deny first; a configured allowlist needs a match."""
    target = destination(url) if url is not None else None

    def hit(entry: Json) -> bool:
        if "serverUrl" in entry:
            return target is not None and bool(vscode_regex(entry["serverUrl"]).fullmatch(target))
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
    url_head, url_rest = _split(url.split("#", 1)[0])
    return claude_regex(pattern).fullmatch(url_head.rstrip(".") + (url_rest or "/")) is not None


@functools.cache
def claude_regex(pattern: str) -> re.Pattern[str]:
    head, rest = _split(pattern)
    glob = "".join(".*" if c == "*" else re.escape(c) for c in head.rstrip("."))
    tail = ".*" if not rest else "".join(".*" if c == "*" else re.escape(c) for c in rest)
    return re.compile(f"(?i:{glob})" + tail)


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


# ---------------------------------------------------------------------------------------------
# Matchers over hand-made servers


def served(
    name: str,
    version: str,
    status: str = "active",
    *,
    remotes: Iterable[str] = (),
    packages: Iterable[Json] = (),
    latest: bool = False,
) -> ServedVersion:
    server: Json = {"name": name, "version": version, "description": "d"}
    if remotes:
        server["remotes"] = [{"type": "streamable-http", "url": u} for u in remotes]
    if packages:
        server["packages"] = list(packages)
    meta = {
        OFFICIAL: {"status": status, "isLatest": latest, "publishedAt": f"2025-01-0{version[0]}"}
    }
    return version_of((name, version, json.dumps(server), json.dumps(meta)))


def npm(identifier: str, version: str) -> Json:
    return {"registryType": "npm", "identifier": identifier, "version": version}


def with_args(package: Json, *args: Json) -> Json:
    return {**package, "packageArguments": list(args)}


async def stream(*servers: ServerGroup) -> AsyncIterator[ServerGroup]:
    for group in servers:
        yield group


async def build(
    *servers: ServerGroup, dialect: matchers.Dialect = matchers.COPILOT, deprecated: bool = False
) -> matchers.Policy:
    options = ExportOptions(view="default", include_deprecated=deprecated)
    return await matchers.build(stream(*servers), options, dialect)


def as_policy(built: matchers.Policy) -> Json:
    return {"allowedMcpServers": built.allowed, "deniedMcpServers": built.denied}


REFUSED = ""  # no entry for Claude Code


class TestMatchers:
    @pytest.mark.parametrize(
        ("url", "copilot", "claude_code"),
        [
            ("https://MCP.Example.com:443/Mcp#frag", "https://mcp.example.com/Mcp", None),
            ("https://mcp.example.com", "https://mcp.example.com/", None),
            ("http://mcp.example.com:8080/x?a=b", "http://mcp.example.com:8080/x?a=b", None),
            ("https://{tenant}.example.com/mcp", "https://*.example.com/mcp", REFUSED),
            ("https://mcp-{region}.example.com/mcp", "https://mcp-*.example.com/mcp", REFUSED),
            ("https://mcp.example.com/{org}", "https://mcp.example.com/*", None),
            ("https://mcp.example.com/{org}/mcp", None, "https://mcp.example.com/*/mcp"),
            ("https://mcp.example.com/mcp?org={org}", None, "https://mcp.example.com/mcp?org=*"),
            ("https://mcp.example.com:{port}/mcp", None, REFUSED),
            ("https://bücher.example/mcp", "https://xn--bcher-kva.example/mcp", None),
            ("https://mcp.example.com/a b", "https://mcp.example.com/a%20b", None),
            # Never broader than the server: a template may not choose the domain.
            ("https://{host}/mcp", None, None),
            ("https://mcp.{domain}/mcp", None, None),
            ("https://{a}.{b}/mcp", None, None),
            # Hostile URLs: a literal `*` would be a wildcard; variables; credentials; schemes.
            ("https://*/", None, None),
            ("https://evil.example.com/*", None, None),
            ("https://x.example.com/${HOME}", None, None),
            ("https://user:pw@x.example.com/mcp", None, None),
            ("javascript:alert(1)", None, None),
            ("file:///etc/passwd", None, None),
            ("not a url", None, None),
            ("", None, None),
        ],
    )
    def test_url_patterns_per_client(
        self, url: str, copilot: str | None, claude_code: str | None
    ) -> None:
        """`claude_code` None means the same as Copilot's (Claude takes `*` anywhere),
        REFUSED no entry (a host or port wildcard: Claude's `*` may cross a `/`)."""
        got, why = matchers.url_pattern(url, matchers.COPILOT)
        assert got == copilot and (got is None) == bool(why)
        claude_got, _ = matchers.url_pattern(url, matchers.CLAUDE)
        assert claude_got == (None if claude_code == REFUSED else (claude_code or copilot))

    @pytest.mark.parametrize(
        ("url", "copilot"),
        [
            # The literal part after a host wildcard must be a registrable domain.
            ("https://{t}.co.uk/mcp", None),
            ("https://{t}.com.au/mcp", None),
            ("https://{t}.github.io/mcp", None),
            ("https://{t}.x.{u}.example.com/mcp", "https://*.x.*.example.com/mcp"),
            ("https://{t}.{u}.com/mcp", None),
            ("https://{t}.example.co.uk/mcp", "https://*.example.co.uk/mcp"),
            ("https://{t}.example.de/mcp", "https://*.example.de/mcp"),
            ("https://{t}.abc.de/mcp", None),  # indistinguishable from co.uk without a PSL
            # WHATWG reads `\` as `/` in an http(s) URL: the exact entry says what the client sees.
            ("https://evil.com\\.mcp.example.com/mcp", "https://evil.com/.mcp.example.com/mcp"),
        ],
    )
    def test_a_host_wildcard_stays_within_one_registrable_domain(
        self, url: str, copilot: str | None
    ) -> None:
        got, why = matchers.url_pattern(url, matchers.COPILOT)
        assert got == copilot, why
        if copilot is None:
            assert "domain" in why

    async def test_claude_gets_no_host_wildcard(self) -> None:
        # Claude's `*` is a glob "anywhere in the pattern": `https://*.mcp.example.com/mcp`
        # would admit https://attacker.tld/.mcp.example.com/mcp. A path wildcard is kept.
        group = ServerGroup(
            "io.x/t",
            (
                served(
                    "io.x/t",
                    "1.0.0",
                    remotes=[
                        "https://{t}.mcp.example.com/mcp",
                        "https://mcp.example.com:{port}/mcp",
                        "https://mcp.example.com/{org}/mcp",
                    ],
                ),
            ),
        )
        built = await build(group, dialect=matchers.CLAUDE)
        assert built.allowed == [{"serverUrl": "https://mcp.example.com/*/mcp"}]
        assert len(built.warnings) == 2
        assert all("not documented to stop at `/`" in w for w in built.warnings)
        policy = as_policy(built)
        assert claude_check(policy, url="https://attacker.tld/.mcp.example.com/mcp") != "allowed"
        assert claude_check(policy, url="https://mcp.example.com/acme/mcp") == "allowed"

    def test_copilot_rejects_a_dollar_variable_claude_only_braces(self) -> None:
        assert matchers.url_pattern("https://x.example.com/$HOME", matchers.COPILOT)[0] is None
        claude_got = matchers.url_pattern("https://x.example.com/$HOME", matchers.CLAUDE)[0]
        assert claude_got == "https://x.example.com/$HOME"

    async def test_a_template_allows_every_filling_in_each_client(self) -> None:
        group = ServerGroup(
            "io.x/t", (served("io.x/t", "1.0.0", remotes=["https://{t}.example.com/mcp"]),)
        )
        policy = as_policy(await build(group, dialect=matchers.COPILOT))
        assert vscode_check(policy, url="https://acme.example.com/mcp") == "allowed"
        assert vscode_check(policy, url="https://acme.example.com/other") == "not allowed"
        assert vscode_check(policy, url="https://example.org/mcp") == "not allowed"
        # Claude: no host wildcard (see test_claude_gets_no_host_wildcard), so no entry.
        built = await build(group, dialect=matchers.CLAUDE)
        assert built.allowed == [] and len(built.warnings) == 1

    async def test_deleted_never_deprecated_by_flag_and_deny_subtracts_what_is_served(
        self,
    ) -> None:
        old = served(
            "io.x/a",
            "1.0.0",
            "deleted",
            remotes=["https://old.example.com/mcp"],
            packages=[npm("a", "1.0.0")],
        )
        mid = served(
            "io.x/a",
            "2.0.0",
            "deprecated",
            remotes=["https://mid.example.com/mcp"],
            packages=[npm("a", "2.0.0")],
        )
        # The newest version kept the deleted one's URL: denying it would block the server.
        new = served(
            "io.x/a", "3.0.0", remotes=["https://OLD.example.com/mcp", "https://new.example.com/mcp"],
            packages=[npm("a", "3.0.0")], latest=True,
        )  # fmt: skip
        group = ServerGroup("io.x/a", (old, mid, new))
        strict = await build(group)
        assert strict.allowed == [
            {"serverCommand": ["npx", "a@3.0.0"]},
            {"serverUrl": "https://new.example.com/mcp"},
            {"serverUrl": "https://old.example.com/mcp"},
        ]
        assert strict.denied == [
            {"serverCommand": ["npx", "a@1.0.0"]},
            {"serverCommand": ["npx", "a@2.0.0"]},
            {"serverUrl": "https://mid.example.com/mcp"},
        ]
        loose = await build(group, deprecated=True)
        assert {"serverUrl": "https://mid.example.com/mcp"} in loose.allowed
        assert {"serverCommand": ["npx", "a@2.0.0"]} in loose.allowed
        assert loose.denied == [{"serverCommand": ["npx", "a@1.0.0"]}]
        for policy in (as_policy(strict), as_policy(loose)):
            assert vscode_check(policy, url="https://old.example.com/mcp") == "allowed"
            assert vscode_check(policy, command=["npx", "a@1.0.0"]) == "denied"
            assert vscode_check(policy, command=["npx", "a@3.0.0"]) == "allowed"
        assert vscode_check(as_policy(strict), command=["npx", "a@2.0.0"]) == "denied"

    async def test_a_deny_overlapping_another_servers_template_is_dropped(self) -> None:
        tenant = ServerGroup(
            "io.x/t", (served("io.x/t", "1.0.0", remotes=["https://{t}.example.com/mcp"]),)
        )
        gone = ServerGroup(
            "io.x/u",
            (served("io.x/u", "1.0.0", "deleted", remotes=["https://acme.example.com/mcp",
                                                           "https://acme.example.org/mcp"]),),
        )  # fmt: skip
        policy = await build(tenant, gone)
        assert policy.denied == [{"serverUrl": "https://acme.example.org/mcp"}]
        assert vscode_check(as_policy(policy), url="https://acme.example.com/mcp") == "allowed"

    async def test_what_cannot_be_expressed_is_a_warning_never_an_entry(self) -> None:
        group = ServerGroup(
            "io.x/w",
            (
                served(
                    "io.x/w", "1.0.0",
                    remotes=["https://{host}/mcp", "https://*/"],
                    packages=[
                        {"registryType": "mcpb", "identifier": "https://x/y.mcpb"},
                        with_args(npm("w", "1.0.0"), {"type": "positional", "valueHint": "dir"}),
                        with_args(npm("w", "1.0.0"), {"type": "positional", "value": "$HOME"}),
                    ],
                ),
                served("io.x/w", "0.1.0"),
            ),
        )  # fmt: skip
        policy = await build(group)
        assert policy.allowed == [] and policy.denied == [] and policy.servers == 0
        assert len(policy.warnings) == 6
        assert all(w.startswith("'io.x/w' version ") and w.endswith(".") for w in policy.warnings)
        assert "needs a value the user supplies" in policy.warnings[3]
        assert "has no package or remote" in policy.warnings[5]

    async def test_the_same_input_gives_the_same_bytes(self) -> None:
        versions = [
            served("io.x/d", f"{i}.0.0", "deleted" if i % 3 == 0 else "active",
                   remotes=[f"https://h{i % 4}.example.com/mcp"], packages=[npm("d", f"{i}.0.0")])
            for i in range(1, 10)
        ]  # fmt: skip
        first = github.render(await build(ServerGroup("io.x/d", tuple(versions))))
        again = github.render(await build(ServerGroup("io.x/d", tuple(reversed(versions)))))
        assert first == again and first.endswith(b"}\n")
        jsonschema.validate(json.loads(first)["allowedMcpServers"], SCHEMA)

    def test_overlap_is_exact_for_literals_and_sound_for_globs(self) -> None:
        assert matchers.overlap("https://A.example.com/x", "https://a.example.com/X")
        assert not matchers.overlap("https://a.example.com/x", "https://b.example.com/x")
        assert matchers.overlap("https://*.example.com/x", "https://a.example.com/x")
        assert matchers.overlap("https://a*/x", "https://*b/x")  # "ab"
        assert not matchers.overlap("https://a*/x", "https://b*/x")
        assert not matchers.overlap("https://*.example.com/x", "https://a.example.com/y")


# ---------------------------------------------------------------------------------------------
# Exports over a mirror synced from the real catalogue, and over a curated view

SYNTHETIC: list[Json] = [
    # A remote template, a package that needs input, and versions that moved or were withdrawn.
    {"name": "ai.zz/tenant", "version": "1.0.0",
     "remotes": [{"type": "streamable-http", "url": "https://{tenant}.tenant.example.com/mcp"}]},
    {"name": "ai.zz/input", "version": "1.0.0", "packages": [
        {**npm("@zz/input", "1.0.0"), "transport": {"type": "stdio"},
         "packageArguments": [{"type": "positional", "valueHint": "dir", "description": "d"}]}]},
    {"name": "ai.zz/moved", "version": "1.0.0",
     "remotes": [{"type": "sse", "url": "https://old.moved.example.com/sse"}],
     "packages": [{**npm("@zz/moved", "1.0.0"), "transport": {"type": "stdio"}}]},
    {"name": "ai.zz/moved", "version": "2.0.0",
     "remotes": [{"type": "sse", "url": "https://new.moved.example.com/sse"}],
     "packages": [{**npm("@zz/moved", "2.0.0"), "transport": {"type": "stdio"}}]},
    {"name": "ai.zz/gone", "version": "1.0.0",
     "remotes": [{"type": "sse", "url": "https://gone.example.com/sse"}]},
    {"name": "ai.zz/gone", "version": "1.1.0",
     "remotes": [{"type": "sse", "url": "https://back.example.com/sse"}]},
]  # fmt: skip
WITHDRAWN = [("ai.zz/moved", "1.0.0", "deprecated"), ("ai.zz/gone", "1.0.0", "deleted")]


@pytest.fixture(scope="session")
def curated_db(tmp_path_factory: pytest.TempPathFactory, catalogue: list[Json]) -> Path:
    """The real catalogue plus SYNTHETIC, synced by the real engine, with views: `team` keeps
    the `ai.*` names, `nobody` keeps nothing."""
    path = tmp_path_factory.mktemp("curated") / "mirror.db"

    async def build_it() -> None:
        fake = FakeRegistry(json.loads(json.dumps(catalogue)))
        for server in SYNTHETIC:
            fake.publish({**server, "description": "synthetic"})
        versions = sorted(v for n, v in fake.rows if n == MULTI)
        fake.set_status(MULTI, versions[0], "deleted")
        fake.set_status(*DEPRECATED, "deprecated", "superseded")
        for name, version, status in WITHDRAWN:
            fake.set_status(name, version, status)
        async with serving(fake.app()) as url:
            base = mirror_config(path, url)
            config = config_from_mapping(
                {
                    "storage": {"path": str(path)},
                    "upstreams": [{"name": "official", "url": url, "page_delay": 0}],
                    "views": [
                        {"name": "team", "base_path": "/team", "filter": {"include": ["ai.*"]}},
                        {
                            "name": "nobody",
                            "base_path": "/none",
                            "filter": {"include": ["x.none/*"]},
                        },
                    ],
                }
            )
            assert base.storage.path == config.storage.path
            store = await open_writer(config.storage)
            try:
                engine = Engine(config, store, Metrics(), sleep=no_sleep)
                result = await engine.run("official")
                assert result.outcome == "ok", result.error
                await engine.close()
            finally:
                await store.close()

    asyncio.run(build_it())
    return path


async def export(
    db: Path, module: Exporter, view: str = "default", **options: Any
) -> tuple[bytes, ExportResult]:
    reader = await SqliteReader.open(db)
    try:
        sink = FileSink(None)
        result = await module(groups(reader, view), ExportOptions(view=view, **options), sink)
    finally:
        await reader.close()
    assert sink.data is not None
    return sink.data, result


async def served_groups(db: Path, view: str) -> list[ServerGroup]:
    reader = await SqliteReader.open(db)
    try:
        return [g async for g in groups(reader, view)]
    finally:
        await reader.close()


def fillings(url: str) -> str:
    return re.sub(r"\{[^{}/]+\}", "acme", url)


def prove(
    policy: Json, check: Any, servers: list[ServerGroup], warnings: list[str], deprecated: bool
) -> dict[str, int]:
    """Every admitted version's remotes and argvs are allowed by `check` (unless a warning
    names them); no refused one is, unless an admitted version shares it."""
    counts = {"allowed urls": 0, "allowed commands": 0, "refused checked": 0, "warned": 0}
    said = "\n".join(warnings)
    served_urls: set[str] = set()
    served_commands: list[list[str]] = []
    for group in servers:
        for version in group.allowed(include_deprecated=deprecated):
            for remote in version.remotes:
                served_urls.add(fillings(remote.url))
                if f"remote URL {remote.url!r}" in said:
                    counts["warned"] += 1
                    continue
                assert check(policy, url=fillings(remote.url)) == "allowed", (group.name, remote)
                counts["allowed urls"] += 1
            for package in version.packages:
                words = argv(package)
                if words is None or f"package {package.get('identifier')!r}" in said:
                    counts["warned"] += 1
                    continue
                served_commands.append(words)
                assert check(policy, command=words) == "allowed", (group.name, words)
                counts["allowed commands"] += 1
    for group in servers:
        for version in group.refused(include_deprecated=deprecated):
            for remote in version.remotes:
                url = fillings(remote.url)
                if not any(vscode_url_matches(re.sub(r"\{[^{}/]+\}", "*", u), url) or u == url
                           for u in served_urls):  # fmt: skip
                    assert check(policy, url=url) != "allowed", (group.name, url)
                    counts["refused checked"] += 1
            for package in version.packages:
                words = argv(package)
                if words is not None and words not in served_commands:
                    assert check(policy, command=words) != "allowed", (group.name, words)
                    counts["refused checked"] += 1
    return counts


MATCHER_FORMATS = [
    (github, vscode_check, "github-managed-settings.example.json"),
    (claude, claude_check, "claude-managed-settings.example.json"),
]


class TestExports:
    @pytest.mark.parametrize(("module", "check", "example"), MATCHER_FORMATS)
    @pytest.mark.parametrize("deprecated", [False, True])
    async def test_the_real_catalogue_admits_every_served_version_and_no_withdrawn_one(
        self, mirror_db: Path, module: Any, check: Any, example: str, deprecated: bool
    ) -> None:
        data, result = await export(mirror_db, module.export, include_deprecated=deprecated)
        policy = json.loads(data)
        jsonschema.validate(policy["allowedMcpServers"], SCHEMA)
        jsonschema.validate(policy["deniedMcpServers"], SCHEMA)
        assert_documented(policy, example, matchers_of=("allowedMcpServers", "deniedMcpServers"))
        servers = await served_groups(mirror_db, "default")
        counts = prove(policy, check, servers, result.warnings, deprecated)
        assert counts["allowed urls"] > 500 and counts["allowed commands"] > 1000, counts
        assert result.entries == len(policy["allowedMcpServers"]) + len(policy["deniedMcpServers"])
        assert all(w.endswith(".") and "version" in w for w in result.warnings)
        again, _ = await export(mirror_db, module.export, include_deprecated=deprecated)
        assert again == data

    @pytest.mark.parametrize(("module", "check", "example"), MATCHER_FORMATS)
    async def test_a_curated_view(
        self, curated_db: Path, module: Any, check: Any, example: str
    ) -> None:
        data, result = await export(curated_db, module.export, "team")
        policy = json.loads(data)
        jsonschema.validate(policy["allowedMcpServers"], SCHEMA)
        assert_documented(policy, example, matchers_of=("allowedMcpServers", "deniedMcpServers"))
        servers = await served_groups(curated_db, "team")
        assert servers and all(g.name.startswith("ai.") for g in servers)
        prove(policy, check, servers, result.warnings, False)
        # A host template: Copilot's `*` stays in the host; Claude gets no entry (and a warning).
        tenant = "allowed" if check is vscode_check else "not allowed"
        assert check(policy, url="https://acme.tenant.example.com/mcp") == tenant
        assert check(policy, url="https://gone.example.com/sse") == "denied"
        assert check(policy, url="https://old.moved.example.com/sse") == "denied"
        assert check(policy, command=["npx", "@zz/moved@1.0.0"]) == "denied"
        assert check(policy, command=["npx", "@zz/moved@2.0.0"]) == "allowed"
        assert any("'ai.zz/input' version '1.0.0'" in w for w in result.warnings)
        # Outside the view: a server the default view serves is not allowed here.
        assert check(policy, url="https://api.githubcopilot.com/mcp/") == "not allowed"
        loose = json.loads(
            (await export(curated_db, module.export, "team", include_deprecated=True))[0]
        )
        assert check(loose, url="https://old.moved.example.com/sse") == "allowed"
        assert check(loose, url="https://gone.example.com/sse") == "denied"

    @pytest.mark.parametrize("module", [github, claude, vscode])
    async def test_an_empty_view_blocks_everything(self, curated_db: Path, module: Any) -> None:
        data, result = await export(curated_db, module.export, "nobody")
        policy = json.loads(data)
        if module is vscode:
            policy = {
                "allowedMcpServers": json.loads(policy["ChatAllowedMcpServers"]),
                "deniedMcpServers": json.loads(policy["ChatDeniedMcpServers"]),
            }
        assert policy["allowedMcpServers"] == [] and result.servers == 0
        assert vscode_check(policy, url="https://mcp.exa.ai/mcp") == "not allowed"
        assert claude_check(policy, command=["npx", "x@1"]) == "not allowed"

    async def test_vscode_policy_file(self, mirror_db: Path) -> None:
        data, result = await export(
            mirror_db,
            vscode.export,
            registry_url="https://reg.example.com/team",
            registry_only=True,
        )
        body = json.loads(data)
        assert_documented(body, "vscode-policy.example.json")
        assert list(body) == sorted(body)
        assert body["ChatMCP"] == "registry"
        assert body["McpGalleryServiceUrl"] == "https://reg.example.com/team"
        allowed = json.loads(body["ChatAllowedMcpServers"])
        denied = json.loads(body["ChatDeniedMcpServers"])
        jsonschema.validate(allowed, SCHEMA)
        jsonschema.validate(denied, SCHEMA)
        same, _ = await export(mirror_db, github.export)
        assert {"allowedMcpServers": allowed, "deniedMcpServers": denied} == json.loads(same)
        plain, warned = await export(mirror_db, vscode.export, registry_only=True)
        assert "McpGalleryServiceUrl" not in json.loads(plain)
        assert warned.warnings[-1].startswith("ChatMCP is set to registry without a registry URL")
        assert result.entries == len(allowed) + len(denied)


class TestCline:
    async def test_the_real_catalogue(self, mirror_db: Path) -> None:
        data, result = await export(mirror_db, cline.export)
        config = json.loads(data)
        assert_documented(config, "cline-remote-config.example.json")
        servers = await served_groups(mirror_db, "default")
        pushed = {r["url"] for r in config["remoteMCPServers"]}
        names = [r["name"] for r in config["remoteMCPServers"]]
        assert len(names) == len(set(names))
        for group in servers:
            admitted = group.allowed(include_deprecated=False)
            local = any(v.packages for v in admitted)
            assert cline_allows_local(config, group.name) == local or not local
            assert (group.name in [e["id"] for e in config["allowedMCPServers"]]) == local
            current = group.current(include_deprecated=False)
            for remote in current.remotes if current else []:
                assert remote.url in pushed or f"remote URL {remote.url!r}" in "\n".join(
                    result.warnings
                )
        assert config["blockPersonalRemoteMCPServers"] is True
        assert len(config["allowedMCPServers"]) > 500 and len(pushed) > 300
        assert (await export(mirror_db, cline.export))[0] == data

    async def test_an_empty_view_never_means_allow_everything(self, curated_db: Path) -> None:
        data, result = await export(curated_db, cline.export, "nobody")
        config = json.loads(data)
        assert config["allowedMCPServers"] == [{"id": cline.NO_LOCAL_SERVER}]
        assert config["remoteMCPServers"] == []
        assert not cline_allows_local(config, "io.github.anything/server")
        assert "placeholder" in result.warnings[0]

    async def test_a_curated_view(self, curated_db: Path) -> None:
        data, result = await export(curated_db, cline.export, "team")
        config = json.loads(data)
        ids = {e["id"] for e in config["allowedMCPServers"]}
        assert "ai.zz/moved" in ids and "ai.zz/gone" not in ids  # gone has no package
        assert all(i.startswith("ai.") for i in ids)
        urls = {r["url"] for r in config["remoteMCPServers"]}
        assert "https://back.example.com/sse" in urls and "https://gone.example.com/sse" not in urls
        assert "https://new.moved.example.com/sse" in urls
        assert "https://old.moved.example.com/sse" not in urls
        assert any("is a template" in w for w in result.warnings)


async def test_hostile_names_and_urls_stay_inert_in_warnings_and_files() -> None:
    """Upstream text reaches a terminal (warnings) and a JSON file: no raw control character
    in a warning, and the files are valid JSON holding the text as data."""
    name = "io.x/\x1b[31mred\n\rfake: ok"
    group = ServerGroup(
        name,
        (
            served(
                name, "1.0.0\x07",
                remotes=["https://{h}/\x1b]8;;evil\x07", "https://ok.example.com/a\nb"],
                packages=[with_args(npm("p\x1b[2J", "1"), {"type": "positional", "valueHint": "x"}),
                          npm("q;rm -rf /", "1")],
            ),
        ),
    )  # fmt: skip
    for dialect in (matchers.COPILOT, matchers.CLAUDE):
        policy = await build(group, dialect=dialect)
        assert policy.warnings
        for warning in policy.warnings:
            assert not any(ord(c) < 0x20 or c == "\x7f" for c in warning), warning
        assert {"serverCommand": ["npx", "q;rm -rf /@1"]} in policy.allowed
        # WHATWG URL parsing drops tabs and newlines, as `new URL` does in the client.
        assert {"serverUrl": "https://ok.example.com/ab"} in policy.allowed
        assert vscode_check(as_policy(policy), url="https://ok.example.com/a\nb") == "allowed"
        assert json.loads(github.render(policy))["allowedMcpServers"] == policy.allowed
    sink = FileSink(None)
    await cline.export(stream(group), ExportOptions(view="default"), sink)
    assert sink.data is not None
    assert json.loads(sink.data)["allowedMCPServers"] == [{"id": name}]
