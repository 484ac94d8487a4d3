"""What the catalogue page shows of a served item, read defensively from its stored JSON.

The mirror serves upstream entries as published, so any field may be missing, of the wrong
type or hostile (a description holding `<script>`, a repository URL `javascript:…`). Every
value here is a plain string or a list of them, whatever the JSON held; templates escape them,
and only http(s) URLs ever become links.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from shlex import join
from typing import Any
from urllib.parse import urlsplit

from sync.launch import hint
from sync.model import OFFICIAL
from sync.store import ServedItem

__all__ = [
    "Hint",
    "ServerFacts",
    "facts_of",
    "install_hint",
    "link",
]

# Keys of the mirror's own `_meta` that say where an entry came from, not what was added.
_PROVENANCE_KEYS = frozenset({"upstream", "upstreamUpdatedAt", "syncedAt", "decision", "withdrawn"})


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def link(url: str) -> str | None:
    """`url` if a browser may follow it from the page (http or https); None otherwise, so a
    `javascript:` or `data:` URL from upstream is shown as text, never as a link."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    return url if scheme in ("http", "https") else None


@dataclass(frozen=True, slots=True)
class Hint:
    """How to run one package or reach one remote: a command to copy, or a URL."""

    kind: str  # a registry type, or "remote"
    label: str  # identifier or URL as published
    command: str  # shell command to copy ("" when there is none)
    url: str | None  # a followable link (mcpb download, remote endpoint)
    transport: str


def install_hint(package: dict[str, Any]) -> Hint:
    """The command that runs a package, as a client installing it would build it
    (`sync.launch`), with a `<placeholder>` where the user supplies a value."""
    kind = _text(package.get("registryType")).lower()
    identifier = _text(package.get("identifier"))
    transport = _text(_object(package.get("transport")).get("type"))
    # Upstream text, pasted into a shell by whoever copies the hint: every argument quoted,
    # so `x; curl … | sh` or `$(…)` in an identifier or version stays one inert word.
    words = hint(package)
    command = join(words) if words else ""
    url = link(identifier) if kind == "mcpb" else None
    return Hint(kind or "unknown", identifier, command, url, transport)


def _remote_hint(remote: dict[str, Any]) -> Hint:
    url = _text(remote.get("url"))
    transport = _text(remote.get("type"))
    return Hint("remote", url, "", link(url), transport)


@dataclass(frozen=True, slots=True)
class ServerFacts:
    name: str
    version: str
    title: str
    description: str
    status: str
    status_message: str
    is_latest: bool
    published_at: str
    updated_at: str
    upstream: str
    repository: str
    repository_link: str | None
    website: str
    website_link: str | None
    hints: list[Hint] = field(default_factory=list)
    withdrawn: str = ""
    decision: str = ""
    enrichment: dict[str, str] = field(default_factory=dict)

    @property
    def registry_types(self) -> set[str]:
        return {h.kind for h in self.hints if h.kind != "remote"}

    @property
    def transports(self) -> set[str]:
        return {h.transport for h in self.hints if h.transport}

    @property
    def remote(self) -> bool:
        return any(h.kind == "remote" for h in self.hints)


def _loads(text: str) -> dict[str, Any]:
    try:
        return _object(json.loads(text))
    except ValueError:
        return {}


def facts_of(item: ServedItem, namespace: str) -> ServerFacts:
    """The page's reading of one served item (name and version are the store's, always set)."""
    name, version, server_text, meta_text = item
    server, meta = _loads(server_text), _loads(meta_text)
    official, own = _object(meta.get(OFFICIAL)), _object(meta.get(namespace))
    repository = _text(_object(server.get("repository")).get("url"))
    website = _text(server.get("websiteUrl"))
    hints = [install_hint(p) for p in _objects(server.get("packages"))]
    hints += [_remote_hint(r) for r in _objects(server.get("remotes"))]
    enrichment = {
        key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for key, value in own.items()
        if key not in _PROVENANCE_KEYS
    }
    decision = own.get("decision")
    return ServerFacts(
        name=name,
        version=version,
        title=_text(server.get("title")),
        description=_text(server.get("description")),
        status=_text(official.get("status")) or "active",
        status_message=_text(official.get("statusMessage")),
        is_latest=official.get("isLatest") is True,
        published_at=_text(official.get("publishedAt")),
        updated_at=_text(official.get("updatedAt")),
        upstream=_text(own.get("upstream")),
        repository=repository,
        repository_link=link(repository),
        website=website,
        website_link=link(website),
        hints=hints,
        withdrawn=_text(own.get("withdrawn")),
        decision=decision
        if isinstance(decision, str)
        else (json.dumps(decision, ensure_ascii=False) if decision is not None else ""),
        enrichment=enrichment,
    )
