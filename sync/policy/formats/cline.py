"""The `cline` export: the MCP part of a Cline organisation's remote configuration.

Source: cline/cline `docs/enterprise-solutions/configuration/infrastructure-configuration/
control-other-cline-features/mcp-server-controls.mdx` (= https://docs.cline.bot/enterprise-
solutions/configuration/infrastructure-configuration/control-other-cline-features/
mcp-server-controls): `allowedMCPServers` entries `{"id": …}` match "the local MCP server name
used in the user's MCP configuration" and govern local servers only; "When
`allowedMCPServers` is omitted, `undefined`, or an empty array (`[]`): No local server
allowlist restriction is applied". Remote servers are the `remoteMCPServers` the organisation
pushes (`name`, `url`, `alwaysEnabled`), and `blockPersonalRemoteMCPServers` keeps users from
adding others.

The ids are registry names: users must key each server with its registry name in
`cline_mcp_settings.json`. Because `[]` means "no restriction" in Cline, a view that admits
no local server gets one placeholder id that no registry name can equal (registry names hold
no space), so the list still restricts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sync.policy import templates
from sync.policy.catalogue import ServerGroup
from sync.policy.export import ExportOptions, ExportResult
from sync.policy.sinks import Sink

__all__ = ["NO_LOCAL_SERVER", "export"]

NO_LOCAL_SERVER = "no local server is admitted (subregistry)"


def _remote_entries(group: ServerGroup, options: ExportOptions, warnings: list[str]) -> list[Any]:
    # The organisation pushes these to every user: one per endpoint of the version that
    # stands for the server, not every version's.
    current = group.current(include_deprecated=options.include_deprecated)
    if current is None:
        return []
    entries: list[dict[str, Any]] = []
    for remote in current.remotes:
        where = f"{group.name!r} version {current.version!r}: remote URL {remote.url!r}"
        if templates.is_template(remote.url):
            warnings.append(f"{where} is a template; Cline needs one fixed URL, so it is left out.")
            continue
        if not remote.url.lower().startswith(("https://", "http://")):
            warnings.append(f"{where} is not an http(s) URL, so it is left out.")
            continue
        label = group.name if not entries else f"{group.name} #{len(entries) + 1}"
        entries.append({"alwaysEnabled": False, "name": label, "url": remote.url})
    return entries


async def export(
    servers: AsyncIterator[ServerGroup], options: ExportOptions, sink: Sink
) -> ExportResult:
    ids: list[str] = []
    remotes: list[dict[str, Any]] = []
    warnings: list[str] = []
    names = 0
    async for group in servers:
        admitted = group.allowed(include_deprecated=options.include_deprecated)
        local = any(v.packages for v in admitted)
        if local:
            ids.append(group.name)
        pushed = _remote_entries(group, options, warnings)
        remotes += pushed
        names += local or bool(pushed)
    if not ids:
        ids = [NO_LOCAL_SERVER]
        warnings.append(
            "The view admits no local server; Cline reads an empty allowedMCPServers as no "
            f"restriction, so the export lists the placeholder id {NO_LOCAL_SERVER!r}."
        )
    body = {
        "allowedMCPServers": [{"id": i} for i in ids],
        "blockPersonalRemoteMCPServers": True,
        "remoteMCPServers": remotes,
    }
    sink.write("", (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode())
    return ExportResult(servers=names, entries=len(ids) + len(remotes), warnings=warnings)
