"""The `kiro` export format: the single JSON file Kiro and Amazon Q Developer read as their MCP
allow-list ("MCP Registry URL" in the Kiro console's Q Developer settings).

Source: https://kiro.dev/docs/cli/mcp/governance/ ("MCP registry file format" and "MCP
registry JSON schema", page updated December 20, 2025), the same schema as
https://docs.aws.amazon.com/amazonq/latest/qdeveloper-ug/mcp-governance.html; the schema is
kept in tests/data/policy/kiro.schema.json and the output is validated against it.

What that file allows, and what the export does about the rest:
- `{"servers": [{"server": {...}}]}`, one entry per server: its current version (the served
  latest when admitted; deprecated versions only with `--include-deprecated`, deleted never).
- `name` matches `^[a-zA-Z0-9._-]+$` (3..200) and is unique in the file, so a registry name
  (`namespace/server`) cannot be used as is. A registry namespace cannot hold `_` (its grammar
  is `[a-zA-Z0-9.-]+`), so `namespace + "_" + server` is a slash-free alias that maps back to
  exactly one registry name (the first `_` is where the `/` was). Each aliased entry names its
  registry name in its `_meta`, and the file's top-level `_meta` lists every alias. A name
  that fits neither form, or whose alias another entry already uses, is left out with a
  warning.
- `description` is required, 1..100 characters; `title` at most 100: longer text is trimmed.
- Exactly one remote (`streamable-http` or `sse`, a fixed URL: Kiro's users cannot edit it, so
  a `{variable}` template is not usable) or exactly one package (`npm`, `pypi` or `oci` over
  `stdio`, arguments `positional` with a value only). The first remote or package that loses
  nothing is kept (remotes first: they need no runner installed on the client), else the
  first that can be expressed at all; what is dropped is said in a warning. A server with
  nothing expressible is left out with a warning.
- A package keeps the registry standard's `version` field: Kiro's schema does not list it but
  does not forbid it, and "the format of the registry JSON file is a subset of the server
  schema JSON in the MCP registry standard v0.1".
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from sync.policy.catalogue import ServedVersion, ServerGroup
from sync.policy.export import ExportOptions, ExportResult
from sync.policy.sinks import Sink
from sync.policy.templates import is_template

__all__ = ["META", "alias", "export"]

META = "io.github.mcp-subregistry"  # the `_meta` key the export documents its aliases under
_KIRO_NAME = re.compile(r"[a-zA-Z0-9._-]{3,200}")
_REGISTRY_NAME = re.compile(r"([a-zA-Z0-9.-]+)/([a-zA-Z0-9._-]+)")
_TEXT_MAX = 100
_VERSION_MAX = 255
_REMOTE_TYPES = ("streamable-http", "sse")
_PACKAGE_TYPES = ("npm", "pypi", "oci")


def alias(name: str) -> str | None:
    """The name Kiro is given for the registry name `name`: itself when Kiro accepts it, else
    `namespace_server` for a registry name, else None (not expressible)."""
    if _KIRO_NAME.fullmatch(name):
        return name
    match = _REGISTRY_NAME.fullmatch(name)
    if match and len(name) <= 200:
        return f"{match[1]}_{match[2]}"
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _pairs(items: Any) -> list[dict[str, str]]:
    """Headers or environment variables as Kiro's `{name, value?}`: a fixed value is kept, a
    template (`{token}`) is left for the user to supply, as Kiro lets them."""
    pairs: list[dict[str, str]] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not _text(item.get("name")):
            continue
        pair = {"name": item["name"]}
        value = _text(item.get("value")) or _text(item.get("default"))
        if value and not is_template(value):
            pair["value"] = value
        pairs.append(pair)
    return pairs


def _remote(remote: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(Kiro's remote, "") or (None, why not)."""
    kind, url = _text(remote.get("type")), _text(remote.get("url"))
    if kind not in _REMOTE_TYPES:
        return None, f"the remote {url or '(no URL)'} of type {kind or '(none)'}"
    if not url or is_template(url):
        return None, f"the remote {url or '(no URL)'} (a templated URL)"
    out: dict[str, Any] = {"type": kind, "url": url}
    headers = _pairs(remote.get("headers"))
    if headers:
        out["headers"] = headers
    return out, ""


def _arguments(items: Any, dropped: list[str]) -> list[dict[str, str]]:
    kept: list[dict[str, str]] = []
    for arg in items if isinstance(items, list) else []:
        if not isinstance(arg, dict):
            continue
        value = _text(arg.get("value"))
        if arg.get("type") == "positional" and value:
            kept.append({"type": "positional", "value": value})
        else:
            label = _text(arg.get("name")) or value or _text(arg.get("valueHint")) or "?"
            dropped.append(f"{label} ({_text(arg.get('type')) or 'untyped'})")
    return kept


def _package(package: dict[str, Any]) -> tuple[dict[str, Any] | None, str, list[str]]:
    """(Kiro's package, "", arguments dropped) or (None, why not, [])."""
    kind, identifier = _text(package.get("registryType")), _text(package.get("identifier"))
    transport = package.get("transport")
    carried = _text(transport.get("type")) if isinstance(transport, dict) else ""
    if kind not in _PACKAGE_TYPES or not identifier:
        return None, f"the {kind or 'untyped'} package {identifier or '(no identifier)'}", []
    if carried != "stdio":
        return None, f"the {kind} package {identifier} over {carried or 'no transport'}", []
    dropped: list[str] = []
    out: dict[str, Any] = {"registryType": kind}
    if _text(package.get("registryBaseUrl")):
        out["registryBaseUrl"] = package["registryBaseUrl"]
    out["identifier"] = identifier
    if _text(package.get("version")):
        out["version"] = package["version"]
    out["transport"] = {"type": "stdio"}
    for key in ("runtimeArguments", "packageArguments"):
        args = _arguments(package.get(key), dropped)
        if args:
            out[key] = args
    env = _pairs(package.get("environmentVariables"))
    if env:
        out["environmentVariables"] = env
    return out, "", dropped


def _label(entry: dict[str, Any]) -> str:
    if "url" in entry:
        return f"the {entry['type']} remote {entry['url']}"
    return f"the {entry['registryType']} package {entry['identifier']}"


def _trimmed(text: str) -> str:
    return text if len(text) <= _TEXT_MAX else text[: _TEXT_MAX - 1] + "…"


class _Catalogue:
    def __init__(self, options: ExportOptions) -> None:
        self.options = options
        self.result = ExportResult()
        self.aliases: dict[str, str] = {}
        self.taken: dict[str, str] = {}  # Kiro name -> registry name

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)

    def add(self, group: ServerGroup) -> dict[str, Any] | None:
        """The server's entry, or None (left out, with a warning when it is admitted)."""
        v = group.current(include_deprecated=self.options.include_deprecated)
        if v is None:
            return None  # nothing admitted: the server is simply not in the file
        what = f"{v.name!r} {v.version!r}"
        name = alias(v.name)
        if name is None:
            self.warn(f"{what} is left out: its name cannot be made a Kiro name.")
            return None
        if name in self.taken:
            self.warn(
                f"{what} is left out: its Kiro name {name!r} is already {self.taken[name]!r}'s."
            )
            return None
        if len(v.version) > _VERSION_MAX or not v.version:
            self.warn(f"{what} is left out: Kiro takes a version of 1 to 255 characters.")
            return None
        server = self.server(v, what)
        if server is None:
            return None
        self.taken[name] = v.name
        entry: dict[str, Any] = {"server": {"name": name, **server}}
        if name != v.name:
            entry["_meta"] = {META: {"registryName": v.name}}
            self.aliases[name] = v.name
        return entry

    def server(self, v: ServedVersion, what: str) -> dict[str, Any] | None:
        chosen = self.launch(v, what)
        if chosen is None:
            return None
        out: dict[str, Any] = {}
        if v.title:
            out["title"] = _trimmed(v.title)
            if len(v.title) > _TEXT_MAX:
                self.warn(f"{what}: its title is trimmed to Kiro's {_TEXT_MAX} characters.")
        description = v.description or v.name
        if not v.description:
            self.warn(f"{what} has no description, which Kiro requires: its name stands in.")
        elif len(description) > _TEXT_MAX:
            self.warn(f"{what}: its description is trimmed to Kiro's {_TEXT_MAX} characters.")
        out["description"] = _trimmed(description)
        out["version"] = v.version
        key, entry = chosen
        out[key] = [entry]
        return out

    def launch(self, v: ServedVersion, what: str) -> tuple[str, dict[str, Any]] | None:
        """The one remote or package Kiro is given, and warnings for what is left behind."""
        usable: list[tuple[str, dict[str, Any], list[str]]] = []
        refused: list[str] = []
        for remote in _list(v.server.get("remotes")):
            made, why = _remote(remote)
            if made:
                usable.append(("remotes", made, []))
            else:
                refused.append(why)
        for package in _list(v.server.get("packages")):
            made, why, dropped = _package(package)
            if made:
                usable.append(("packages", made, dropped))
            else:
                refused.append(why)
        if not usable:
            has = ", ".join(refused) or "no remote and no package"
            self.warn(
                f"{what} is left out: Kiro runs one npm, PyPI or OCI package over stdio or one "
                f"streamable-http or sse remote at a fixed URL; it has {has}."
            )
            return None
        key, entry, dropped = min(usable, key=lambda u: bool(u[2]))  # lossless first, stable
        if dropped:
            self.warn(
                f"{what}: Kiro takes positional arguments with a value only; dropped from "
                f"{_label(entry)}: {', '.join(dropped)}."
            )
        others = [_label(e) for _, e, _ in usable if e is not entry] + refused
        if others:
            self.warn(
                f"{what}: Kiro takes one remote or one package; kept {_label(entry)}, "
                f"left out {', '.join(others)}."
            )
        return key, entry


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


async def export(
    servers: AsyncIterator[ServerGroup], options: ExportOptions, sink: Sink
) -> ExportResult:
    """One file, in name order; same view and options → same bytes. Streamed entry by entry:
    memory holds one server and the alias table (the file's last key), never the file."""
    catalogue = _Catalogue(options)
    with sink.stream("") as out:
        out.write(b'{\n  "servers": [')
        async for group in servers:
            entry = catalogue.add(group)
            if entry is not None:
                comma = b"," if catalogue.result.entries else b""
                out.write(comma + b"\n    " + _json(entry).replace(b"\n", b"\n    "))
                catalogue.result.entries += 1
        out.write(b"\n  ]" if catalogue.result.entries else b"]")
        table = _json({META: {"aliases": catalogue.aliases}})
        out.write(b',\n  "_meta": ' + table.replace(b"\n", b"\n  ") + b"\n}\n")
    catalogue.result.servers = catalogue.result.entries
    return catalogue.result


def _json(value: Any) -> bytes:
    # Same layout as the whole document dumped with indent=2: a value's own lines, which the
    # caller indents to its depth (a JSON string holds no raw newline, so every `\n` is layout).
    # Upstream JSON may hold a lone surrogate (`"\ud800"`), which UTF-8 cannot encode; it only
    # occurs inside a JSON string, where the backslash form written instead is its escape.
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace")
