"""The `claude` export format (to be written)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sync.policy.catalogue import ServerGroup
from sync.policy.export import ExportOptions, ExportResult
from sync.policy.sinks import Sink

__all__ = ["export"]


async def export(
    servers: AsyncIterator[ServerGroup], options: ExportOptions, sink: Sink
) -> ExportResult:
    raise NotImplementedError("claude")
