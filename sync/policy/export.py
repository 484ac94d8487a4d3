"""`subregistry policy export`: a served view as one client's allowlist or catalogue file.

Every format reads the same stream of servers (`catalogue.groups`, name order) and writes
through a `Sink`, so every export is deterministic (same view, same options → same bytes) and
`--check` is the same comparison for all of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from sync.policy.catalogue import ServerGroup
from sync.policy.sinks import Sink

__all__ = ["ExportOptions", "ExportResult", "Exporter"]


@dataclass(frozen=True, slots=True)
class ExportOptions:
    view: str
    include_deprecated: bool = False
    # Where clients reach this view's read API (`[api] public_url` + the view's base path, or
    # --registry-url); formats that point a client at the registry need it, others ignore it.
    registry_url: str | None = None
    # vscode: also turn on registry-only access (`ChatMCP` = "registry").
    registry_only: bool = False


@dataclass(slots=True)
class ExportResult:
    servers: int = 0  # names that made it into the export
    entries: int = 0  # matchers, catalogue entries or files written
    # Each a full sentence naming the server (and version): what the format cannot express,
    # and what was done instead. Deterministic order: the order servers were read.
    warnings: list[str] = field(default_factory=list)


Exporter = Callable[[AsyncIterator[ServerGroup], ExportOptions, Sink], Awaitable[ExportResult]]
