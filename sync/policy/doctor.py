"""`subregistry doctor --mcp-json`: would a registry-only client allow each configured server,
and if not, exactly why (to be written)."""

from __future__ import annotations

from pathlib import Path

from sync.config import Config
from sync.policy.report import Report
from sync.store import Reader

__all__ = ["diagnose"]


async def diagnose(
    config: Config, reader: Reader, path: Path, *, client: str | None, view: str
) -> Report:
    raise NotImplementedError
