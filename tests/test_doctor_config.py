"""`subregistry doctor --mcp-json` (issue #15): real client configuration files, with the
mistakes users report, checked by a real `subregistry doctor` process against a mirror synced
from the real catalogue in tests/data, in the default view and in a curated one."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from sync.launch import argv
from sync.policy.invocation import identify, image_repository, package_key
from sync.policy.mcpconfig import parse_jsonc, references
from tests.cli_helpers import run, write_config
from tests.fake_upstream import FakeRegistry
from tests.helpers import serving

FILES = Path(__file__).parent / "data" / "mcp-json"
TEAM_VIEW = """
[[views]]
name = "team"
base_path = "/teams/team"
[views.filter]
exclude = ["ai.exa/*"]
"""
TENANT = {
    "name": "com.example.tenant/mcp",
    "description": "A hosted server with one endpoint per tenant",
    "title": "Tenant MCP",
    "version": "1.0.0",
    "remotes": [{"type": "streamable-http", "url": "https://{tenant}.mcp.example.com/mcp"}],
}
SMARTBEAR = "com.smartbear/smartbear-mcp"


async def _sync(home: Path, catalogue: list[dict[str, Any]]) -> Path:
    fake = FakeRegistry(json.loads(json.dumps(catalogue)))
    fake.publish(TENANT)
    fake.set_status(SMARTBEAR, "0.10.0", "deleted", "withdrawn by its publisher")
    fake.set_status(SMARTBEAR, "0.11.0", "deprecated", "use 0.12 or later")
    async with serving(fake.app()) as url:
        config = write_config(home, url, TEAM_VIEW)
        code, _, err = await run("--config", config, "sync")
        assert code == 0, err
    return config


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, catalogue: list[dict[str, Any]]) -> Path:
    """The config of a mirror of the whole real catalogue (plus one templated remote, one
    deleted and one deprecated package version), synced once by a real `subregistry sync`,
    with a curated view `team` that drops ai.exa/*."""
    return asyncio.run(_sync(tmp_path_factory.mktemp("doctor"), catalogue))


async def doctor(config: Path, *args: str | Path) -> tuple[int, str, str]:
    return await run("--config", config, "doctor", *args)


def _codes(report: dict[str, Any]) -> dict[str, list[str]]:
    return {f["subject"]: [p["code"] for p in f["problems"]] for f in report["findings"]}


def _finding(report: dict[str, Any], subject: str) -> dict[str, Any]:
    found: dict[str, Any] = next(f for f in report["findings"] if f["subject"] == subject)
    return found


def _fixes(finding: dict[str, Any]) -> str:
    return " | ".join(p["message"] + " / " + p["fix"] for p in finding["problems"])


# --- the reported mistakes, through the real process --------------------------------------


async def test_the_reported_mistakes_each_get_their_code_and_fix(mirror: Path) -> None:
    path = FILES / "vscode-mistakes.mcp.json"
    code, out, err = await doctor(mirror, "--mcp-json", path, "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["ok"] is False
    assert report["client"] == "vscode (guessed from `servers`)"
    assert _codes(report) == {  # file order, one finding per configured server
        "GitHub": ["name-mismatch"],
        "ai.exa/exa": ["remote-mismatch"],
        "com.example.tenant/mcp": ["remote-mismatch"],
        "Tenant MCP": ["name-mismatch", "remote-mismatch"],
        "com.smartbear/smartbear-mcp": ["deleted"],
        "dev.openfeature/mcp": ["package-mismatch"],
        "io.github.github/github-mcp": ["unknown-server"],
        "exa": ["unknown-server"],
        "company-wiki": ["unknown-server"],
    }
    assert [f["subject"] for f in report["findings"]] == list(_codes(report))
    github = _finding(report, "GitHub")
    assert github["name"] == "io.github.github/github-mcp-server"
    assert github["problems"][0]["fix"] == "rename the key to io.github.github/github-mcp-server"
    assert "set the url to https://mcp.exa.ai/mcp" in _fixes(_finding(report, "ai.exa/exa"))
    tenant = _fixes(_finding(report, "com.example.tenant/mcp"))
    assert "https://{tenant}.mcp.example.com/mcp" in tenant
    titled = _finding(report, "Tenant MCP")  # recognised by its title alone
    assert titled["problems"][0]["fix"] == "rename the key to com.example.tenant/mcp"
    deleted = _finding(report, "com.smartbear/smartbear-mcp")
    assert (deleted["version"], deleted["status"]) == ("0.10.0", "deleted")
    assert "move to version 0.12.1" in _fixes(deleted)
    package = _fixes(_finding(report, "dev.openfeature/mcp"))
    assert "@openfeature/mcp-server" in package
    assert "npx @openfeature/mcp@0.0.18" in package
    typo = _finding(report, "io.github.github/github-mcp")["problems"][0]["fix"]
    assert typo.startswith("did you mean io.github.github/github-mcp-server")
    assert len(typo.split(",")) <= 3
    same_host = _finding(report, "exa")["problems"][0]["fix"]  # served on that URL's host
    assert same_host.startswith("did you mean ai.exa/exa")

    code, text, _ = await doctor(mirror, "--mcp-json", path)
    assert code == 1
    assert "  FAIL GitHub: blocked: name-mismatch" in text
    assert "fix: rename the key to io.github.github/github-mcp-server" in text
    assert text.endswith("0/9 servers allowed\n")


async def test_a_deprecated_pin_is_blocked_and_a_template_filling_is_allowed(mirror: Path) -> None:
    code, out, err = await doctor(mirror, "--mcp-json", FILES / "claude-code.mcp.json", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["client"] == "claude-code (guessed from `mcpServers`)"
    assert _codes(report) == {
        "com.smartbear/smartbear-mcp": ["deprecated"],
        "com.example.tenant/mcp": [],
        "ai.exa/exa": [],
        "GitHub": ["name-mismatch"],
        "io.github.github/github-mcp-server": [],
    }
    label = _finding(report, "GitHub")  # only a note for Claude Code: it matches the URL
    assert label["ok"] and label["summary"] == "allowed: io.github.github/github-mcp-server 0.24.1"
    assert "Claude Code itself matches the URL or command" in _fixes(label)
    deprecated = _finding(report, "com.smartbear/smartbear-mcp")
    assert (deprecated["version"], deprecated["status"]) == ("0.11.0", "deprecated")
    assert "--include-deprecated" in _fixes(deprecated)
    tenant = _finding(report, "com.example.tenant/mcp")
    assert tenant["ok"] and tenant["template"] == "https://{tenant}.mcp.example.com/mcp"
    assert tenant["summary"].startswith("allowed: com.example.tenant/mcp 1.0.0")
    image = _finding(report, "io.github.github/github-mcp-server")  # the tag pins 0.21.0
    assert image["summary"] == "allowed: io.github.github/github-mcp-server 0.21.0"


async def test_a_server_the_view_drops_names_the_rule(mirror: Path) -> None:
    path = FILES / "claude-code.mcp.json"
    code, out, err = await doctor(mirror, "--mcp-json", path, "--view", "team", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["view"] == "team"
    exa = _finding(report, "ai.exa/exa")
    assert [p["code"] for p in exa["problems"]] == ["not-in-view"]
    assert "views.team.filter.exclude" in exa["problems"][0]["message"]
    assert _finding(report, "com.example.tenant/mcp")["ok"]


async def test_a_server_the_view_withdraws_later_is_not_in_view(
    mirror: Path, tmp_path: Path
) -> None:
    """Once served, a server a new view rule drops stays in the view as tombstones: the doctor
    still names the rule, rather than calling its versions deleted."""
    for source in mirror.parent.glob("mirror.db*"):
        shutil.copy(source, tmp_path / source.name)
    text = mirror.read_text().replace(str(mirror.parent / "mirror.db"), str(tmp_path / "mirror.db"))
    config = tmp_path / "subregistry.toml"
    config.write_text(text.replace('exclude = ["ai.exa/*"]', 'exclude = ["ai.exa/*", "dev.*"]'))
    code, _, err = await run("--config", config, "reapply")
    assert code == 0, err
    path = FILES / "settings.json"
    code, out, err = await doctor(config, "--mcp-json", path, "--view", "team", "--json")
    assert code == 1, err
    (finding,) = json.loads(out)["findings"]
    assert [p["code"] for p in finding["problems"]] == ["not-in-view"]
    assert "rule views.team.filter.exclude dropped it" in finding["problems"][0]["message"]
    code, out, _ = await doctor(config, "--mcp-json", path, "--json")  # the default view
    assert code == 0


async def test_what_an_exported_allowlist_refuses(mirror: Path) -> None:
    path = FILES / "vscode-allowlist.mcp.json"
    code, out, err = await doctor(mirror, "--mcp-json", path, "--json")
    assert code == 1, err
    report = json.loads(out)
    assert _codes(report) == {
        "ai.exa/exa": ["remote-mismatch", "unresolved-variable"],
        "com.smartbear/smartbear-mcp": ["command-mismatch"],
        "io.github.github/github-mcp-server": ["package-mismatch"],
    }
    assert "`${input:exa_key}`" in _fixes(_finding(report, "ai.exa/exa"))
    command = _fixes(_finding(report, "com.smartbear/smartbear-mcp"))
    assert "run exactly `npx @smartbear/mcp@0.12.1`" in command
    hosted = _fixes(_finding(report, "io.github.github/github-mcp-server"))
    assert "url https://api.githubcopilot.com/mcp/" in hosted


@pytest.mark.parametrize(
    ("name", "client", "count"),
    [
        ("vscode-correct.mcp.json", "vscode (guessed from `servers`)", 5),
        ("settings.json", "vscode (guessed from `mcp.servers`)", 1),
    ],
)
async def test_a_correct_file_exits_0(mirror: Path, name: str, client: str, count: int) -> None:
    code, out, err = await doctor(mirror, "--mcp-json", FILES / name, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["client"] == client
    assert [f["problems"] for f in report["findings"]] == [[]] * count
    assert all(f["summary"].startswith("allowed: ") for f in report["findings"])
    code, text, _ = await doctor(mirror, "--mcp-json", FILES / name, "--client", "vscode")
    assert code == 0
    assert "(client vscode, view default)" in text.splitlines()[0]
    assert text.endswith(f"{count}/{count} servers allowed\n")


async def test_hostile_keys_never_reach_the_terminal_raw(mirror: Path, tmp_path: Path) -> None:
    key = "\x1b]0;owned\x07\x1b[2J\u202eevil"
    url = "https://mcp.exa.ai/\x1b[31mmcp"
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"servers": {key: {"type": "http", "url": url}}}))
    code, text, err = await doctor(mirror, "--mcp-json", path)
    assert code == 1, err
    assert not any(c in text for c in "\x1b\x07\u202e"), text
    assert "?]0;owned??[2J?evil" in text
    code, out, _ = await doctor(mirror, "--mcp-json", path, "--json")
    assert code == 1
    assert "\x1b" not in out  # JSON escapes control characters
    assert json.loads(out)["findings"][0]["subject"] == key


# --- files that cannot be read: one line, exit 1 --------------------------------------------


@pytest.mark.parametrize(
    ("text", "client", "expected"),
    [
        (None, None, "cannot read"),
        ('{\n  // fine\n  "servers": {,\n}', None, "not JSON (or JSONC)"),
        ("[1, 2]", None, "the top level is not a JSON object"),
        ('{"inputs": []}', None, "has neither `servers`"),
        ('{"servers": {}, "mcpServers": {}}', None, "pass --client"),
        ('{"servers": {}}', "claude-code", "has no `mcpServers`"),
        ('{"mcpServers": []}', None, "`mcpServers` is not a JSON object"),
        ("\xff\xfe", None, "not UTF-8"),
    ],
)
async def test_a_file_that_cannot_be_read_is_one_line(
    mirror: Path, tmp_path: Path, text: str | None, client: str | None, expected: str
) -> None:
    path = tmp_path / "mcp.json"
    if text == "\xff\xfe":
        path.write_bytes(b"\xff\xfe{")
    elif text is not None:
        path.write_text(text)
    args = ["--mcp-json", str(path), *(["--client", client] if client else [])]
    code, out, err = await doctor(mirror, *args)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("subregistry: "), err
    assert expected in err and str(path) in err
    assert "Traceback" not in err


# --- the JSONC reader -------------------------------------------------------------------------


def test_jsonc_drops_comments_and_trailing_commas_but_never_touches_strings() -> None:
    text = """// head
{
  "url": "https://example.com//path/*x*/", /* a block
  over lines */ "quote": "a \\"// not a comment\\" b",
  "slash": "\\\\", // a string ending in a backslash
  "list": [1, 2, /* c */ ],
  "nested": {"a": [ {}, ], },
}
"""
    assert parse_jsonc(text) == {
        "url": "https://example.com//path/*x*/",
        "quote": 'a "// not a comment" b',
        "slash": "\\",
        "list": [1, 2],
        "nested": {"a": [{}]},
    }
    assert parse_jsonc('["a,", "}"]') == ["a,", "}"]


def test_jsonc_errors_point_into_the_original_text() -> None:
    with pytest.raises(ValueError, match="line 4 column 3"):
        parse_jsonc('{\n  /* one\n  two */ "a": 1,\n  ]')
    with pytest.raises(ValueError, match="unterminated comment at line 2"):
        parse_jsonc("{\n  /* never closed\n}")
    with pytest.raises(ValueError, match="Expecting value"):
        parse_jsonc("[1,, ]")  # only one trailing comma is forgiven


def test_variable_references() -> None:
    assert references("https://${input:tenant}.x/${env:PATH}?k=$KEY&v=${V:-d}") == [
        "${input:tenant}",
        "${env:PATH}",
        "$KEY",
        "${V:-d}",
    ]
    assert references("https://example.com/a$") == []


# --- what a configured command runs ------------------------------------------------------------


def test_identify_inverts_the_launcher_for_every_catalogue_package(
    catalogue: list[dict[str, Any]],
) -> None:
    checked = 0
    for item in catalogue:
        for package in item["server"].get("packages") or []:
            command = argv(package)
            if command is None:
                continue
            kind = package["registryType"].lower()
            ident = package["identifier"]
            version = package.get("version") or ""
            if kind == "oci":
                ident, tag = image_repository(ident)
                version = tag or version
            if version in {"latest", "next", "stable"}:
                version = ""
            found = identify(command[0], command[1:])
            assert found is not None, command
            assert package_key(found.registry_type, found.identifier) == package_key(kind, ident)
            assert found.version == version, command
            checked += 1
    assert checked > 1700  # every package whose command line is fixed


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("npx @playwright/mcp@latest", ("npm", "@playwright/mcp", "")),
        ("cmd /c npx -y @scope/pkg@1.2.3 --flag", ("npm", "@scope/pkg", "1.2.3")),
        ("/usr/local/bin/npx --yes pkg", ("npm", "pkg", "")),
        ("C:\\nodejs\\NPX.CMD -y pkg@2", ("npm", "pkg", "2")),
        ("pnpm dlx pkg@1", ("npm", "pkg", "1")),
        ("uvx mcp-server-git==2025.1.1", ("pypi", "mcp-server-git", "2025.1.1")),
        ("uvx --from mcp_server[cli]==1.0 mcp-server", ("pypi", "mcp_server", "1.0")),
        ("uvx --python 3.12 markitdown-mcp@0.0.1", ("pypi", "markitdown-mcp", "0.0.1")),
        ("uv tool run pkg", ("pypi", "pkg", "")),
        (
            "docker run -i --rm -e TOKEN --env=A=b -v /a:/b ghcr.io/o/img:1.0 stdio",
            ("oci", "ghcr.io/o/img", "1.0"),
        ),
        ("podman run --rm localhost:5000/img", ("oci", "localhost:5000/img", "")),
        ("docker run -i img@sha256:abc", ("oci", "img", "sha256:abc")),
        ("dnx Some.Tool@1.0.0 --yes", ("nuget", "Some.Tool", "1.0.0")),
        ("node /opt/server.js", None),
        ("docker ps", None),
        ("cmd /c", None),
        ("npx", None),
    ],
)
def test_identify_reads_hand_written_commands(
    command: str, expected: tuple[str, str, str] | None
) -> None:
    words = command.split()
    found = identify(words[0], words[1:])
    assert (found and (found.registry_type, found.identifier, found.version)) == expected


# --- hostile files: a finding or one line, never a traceback ---------------------------------


async def test_a_key_or_field_that_is_not_valid_unicode_is_an_unreadable_entry(
    mirror: Path, tmp_path: Path
) -> None:
    # JSON spells a lone surrogate as an escape; no store, client or terminal can encode it.
    path = tmp_path / "mcp.json"
    path.write_text(
        '{"servers": {"\\ud800x": {"url": "https://x/"},'
        ' "ok-key": {"command": "npx", "args": ["\\udc80"]},'
        ' "\\udfff": 3,'
        ' "exa": {"type": "http", "url": "https://mcp.exa.ai/mcp"}}}'
    )
    code, out, err = await doctor(mirror, "--mcp-json", path, "--json")
    assert (code, err) == (1, ""), err
    assert out.isascii()
    report = json.loads(out)
    codes = _codes(report)
    assert codes["\ud800x"] == ["unreadable-entry"]
    assert codes["ok-key"] == ["unreadable-entry"]
    assert codes["\udfff"] == ["unreadable-entry"]
    assert "lone surrogate" in _fixes(_finding(report, "\ud800x"))
    assert "`args` is not valid Unicode" in _fixes(_finding(report, "ok-key"))
    assert "exa" in codes  # the other entries are still diagnosed
    code, text, err = await doctor(mirror, "--mcp-json", path)
    assert (code, err) == (1, ""), err
    assert "FAIL ?x: blocked: unreadable-entry" in text


async def test_a_file_nested_too_deeply_is_one_line(mirror: Path, tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text('{"servers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, out, err = await doctor(mirror, "--mcp-json", path)
    assert (code, out) == (1, "")
    assert err == f"subregistry: cannot read {path}: nested too deeply to be a configuration\n"


async def test_a_url_whose_host_only_looks_like_a_template_filling_is_blocked(
    mirror: Path, tmp_path: Path
) -> None:
    # A browser (WHATWG) reads `\` as `/`: the first URL's host is evil.com, the second one's
    # `evil` is userinfo. Neither is a filling of https://{tenant}.mcp.example.com/mcp.
    path = tmp_path / "mcp.json"
    servers = {
        "a": "https://evil.com\\.mcp.example.com/mcp",
        "b": "https://evil@acme.mcp.example.com/mcp",
        "c": "https://acme.mcp.example.com/mcp",
    }
    path.write_text(json.dumps({"mcpServers": {k: {"url": u} for k, u in servers.items()}}))
    code, out, err = await doctor(mirror, "--mcp-json", path, "--json")
    assert code == 1
    assert err == "", err
    report = json.loads(out)
    for key in ("a", "b"):
        finding = _finding(report, key)
        assert not finding["ok"] and "template" not in finding, finding
    assert _finding(report, "c")["ok"] is True
    assert _finding(report, "c")["template"] == "https://{tenant}.mcp.example.com/mcp"


async def test_json_output_escapes_every_non_printable_character(
    mirror: Path, tmp_path: Path
) -> None:
    # U+009B is a C1 control (CSI): raw on a terminal it starts an escape sequence.
    key = "\u009b31mred\u202e\u0085"
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"servers": {key: {"type": "http", "url": "https://x.example/"}}}))
    code, out, err = await doctor(mirror, "--mcp-json", path, "--json")
    assert (code, err) == (1, ""), err
    assert out.isascii() and "\\u009b31mred" in out
    assert json.loads(out)["findings"][0]["subject"] == key
