"""The bodies of `subregistry policy export` and `subregistry doctor`, once the CLI has parsed
their arguments and loaded the configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sync.config import Config
from sync.policy.doctor import diagnose
from sync.policy.probe import probe
from sync.policy.report import Report, render, to_json
from sync.store import open_reader

__all__ = ["CLIENTS", "FORMATS", "doctor_command", "policy_export_command"]

FORMATS = ("github", "vscode", "claude-code", "cline", "kiro", "static")
CLIENTS = ("vscode", "claude-code")


async def policy_export_command(
    config: Config,
    fmt: str,
    *,
    view: str,
    output: Path | None,
    check: Path | None,
    include_deprecated: bool,
    registry_url: str | None,
    registry_only: bool,
) -> int:
    raise NotImplementedError


async def doctor_command(
    config: Config,
    *,
    mcp_json: Path | None,
    client: str | None,
    view: str,
    url: str | None,
    as_json: bool,
    request_timeout: float,
) -> int:
    """Exit 0 when every configured server would be allowed (or every probe passed), 1
    otherwise."""
    report: Report
    if url is not None:
        report = await probe(url, request_timeout=request_timeout)
    else:
        assert mcp_json is not None
        config.view(view)  # an unknown view fails before the store is opened
        reader = await open_reader(config.storage, connections=1)
        try:
            report = await diagnose(config, reader, mcp_json, client=client, view=view)
        finally:
            await reader.close()
    if as_json:
        sys.stdout.write(json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render(report))
    return 0 if report.ok else 1
