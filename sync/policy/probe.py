"""`subregistry doctor --url`: a registry probed the way VS Code reads one (to be written)."""

from __future__ import annotations

from sync.policy.report import Report

__all__ = ["probe"]


async def probe(base: str, *, request_timeout: float) -> Report:
    raise NotImplementedError
