"""A client's MCP configuration file, read the way the client reads it.

- VS Code: `mcp.json` is `{"servers": {key: {type?, command, args, env, url, headers}},
  "inputs": [...]}`, and a user `settings.json` may hold the same under `"mcp": {"servers":
  ...}` (source: microsoft/vscode `src/vs/platform/mcp/common/mcpManagement.ts`; the file is
  JSONC, comments and trailing commas allowed, like every VS Code settings file).
- Claude Code: a project `.mcp.json` and the administrator's `managed-mcp.json` are
  `{"mcpServers": {key: {type?, command, args, env, url, headers}}}` (source:
  https://code.claude.com/docs/en/managed-mcp, "The file uses the same format as a project
  `.mcp.json` file").

Both are often hand-written with comments, so both are read as JSONC. The file is the user's
own but its text is still untrusted: every field is type-checked here, and a malformed entry
becomes a note on that server rather than a failure of the whole report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.errors import CommandFailed

__all__ = ["ConfiguredServer", "McpConfig", "parse_jsonc", "read", "references"]

# `${input:id}`, `${env:NAME}`, `${workspaceFolder}`, `${VAR}`, `${VAR:-default}` and a bare
# `$VAR`: Copilot blocks a server whose URL or command still holds one when it starts
# (source: docs.github.com configure-enterprise-allowlist, evaluation rule 4).
_REFERENCE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")
_REMOTE_TYPES = {"http", "sse", "streamable-http", "streamablehttp", "ws", "websocket"}


def parse_jsonc(text: str) -> Any:
    """JSON with `//` and `/* */` comments and trailing commas, as VS Code and Claude Code
    accept it. Comments and dropped commas become spaces (newlines kept), so a syntax error's
    line and column still point into the original text; string contents are never touched."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError(f"unterminated comment at line {text.count(chr(10), 0, i) + 1}")
            out.append("".join(ch if ch == "\n" else " " for ch in text[i : j + 2]))
            i = j + 2
        else:
            if c in "]}":
                # A comma whose next significant character closes the container is dropped.
                k = len(out) - 1
                while k >= 0 and out[k].isspace():
                    k -= 1
                if k >= 0 and out[k] == ",":
                    out[k] = " "
            out.append(c)
            i += 1
    return json.loads("".join(out))


def references(value: str) -> list[str]:
    """The variable references in `value` that the client resolves at start."""
    return _REFERENCE.findall(value)


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


@dataclass(frozen=True, slots=True)
class ConfiguredServer:
    """One entry of the file: a remote (`url`) or a local process (`command` + `args`)."""

    key: str
    type: str  # "stdio", or the remote transport as written ("http", "sse", ...)
    command: str = ""
    args: tuple[str, ...] = ()
    url: str = ""
    # What made the entry unusable as written (a field of the wrong type, no command nor url).
    errors: tuple[str, ...] = field(default=())

    @property
    def remote(self) -> bool:
        return bool(self.url) or self.type in _REMOTE_TYPES

    @property
    def argv(self) -> list[str]:
        return [self.command, *self.args]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _server(key: str, raw: Any) -> ConfiguredServer:
    if not isinstance(raw, dict):
        why = ["the entry is not a JSON object"]
        if not _encodable(key):
            why.append("the key is not valid Unicode (it holds a lone surrogate)")
        return ConfiguredServer(key, "", errors=tuple(why))
    errors: list[str] = []
    kind = raw.get("type")
    if kind is not None and not isinstance(kind, str):
        errors.append("`type` is not a string")
        kind = None
    url = raw.get("url", "")
    if not isinstance(url, str):
        errors.append("`url` is not a string")
        url = ""
    command = raw.get("command", "")
    if not isinstance(command, str):
        errors.append("`command` is not a string")
        command = ""
    args = _strings(raw.get("args", []))
    if args is None:
        errors.append("`args` is not a list of strings")
        args = []
    if not url and not command:
        errors.append("the entry has neither `command` nor `url`")
    # JSON can spell a lone surrogate (`"\\ud800"`), which no client, store or terminal can
    # encode: such an entry is reported, never looked up.
    for what, text in [("the key", key), ("`url`", url), ("`command`", command)] + [
        ("`args`", a) for a in args
    ]:
        if not _encodable(text):
            errors.append(f"{what} is not valid Unicode (it holds a lone surrogate)")
            break
    # Both clients default to stdio; a `url` without a type is a remote (VS Code infers it).
    kind = (kind or ("http" if url else "stdio")).lower()
    return ConfiguredServer(key, kind, command, tuple(args), url, tuple(errors))


@dataclass(frozen=True, slots=True)
class McpConfig:
    client: str  # "vscode" or "claude-code"
    assumed: bool  # True when the client was guessed from the file's keys
    where: str  # the JSON path of the servers object ("servers", "mcp.servers", "mcpServers")
    servers: tuple[ConfiguredServer, ...]


def _servers_of(data: dict[str, Any], client: str) -> tuple[str, Any] | None:
    if client == "claude-code":
        return ("mcpServers", data["mcpServers"]) if "mcpServers" in data else None
    if "servers" in data:
        return "servers", data["servers"]
    mcp = data.get("mcp")
    if isinstance(mcp, dict) and "servers" in mcp:
        return "mcp.servers", mcp["servers"]
    return None


def read(path: Path, client: str | None) -> McpConfig:
    """The servers of the file at `path`, in file order; `client` forces the format, else it
    is guessed from the top-level key. Any reason the file cannot be read is a CommandFailed
    naming the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CommandFailed(f"cannot read {path}: not UTF-8 text") from None
    try:
        data = parse_jsonc(text)
    except ValueError as exc:
        raise CommandFailed(f"cannot read {path}: not JSON (or JSONC): {exc}") from None
    except RecursionError:
        raise CommandFailed(
            f"cannot read {path}: nested too deeply to be a configuration"
        ) from None
    if not isinstance(data, dict):
        raise CommandFailed(f"cannot read {path}: the top level is not a JSON object")
    assumed = client is None
    if client is None:
        found = [c for c in ("vscode", "claude-code") if _servers_of(data, c) is not None]
        if len(found) > 1:
            raise CommandFailed(
                f"{path} has both `servers` (VS Code) and `mcpServers` (Claude Code): "
                "pass --client vscode or --client claude-code"
            )
        if not found:
            raise CommandFailed(
                f"{path} has neither `servers` (VS Code mcp.json), `mcp.servers` (VS Code "
                "settings.json) nor `mcpServers` (Claude Code .mcp.json)"
            )
        client = found[0]
    located = _servers_of(data, client)
    if located is None:
        want = "`mcpServers`" if client == "claude-code" else "`servers` or `mcp.servers`"
        raise CommandFailed(f"{path} has no {want}, as a {client} configuration must")
    where, servers = located
    if not isinstance(servers, dict):
        raise CommandFailed(f"{path}: `{where}` is not a JSON object")
    entries = tuple(_server(str(key), raw) for key, raw in servers.items())
    return McpConfig(client, assumed, where, entries)
