"""The `vscode` export: VS Code's policy file (`/etc/vscode/policy.json` on Linux; the same
names are the keys of the macOS profile and the Windows ADMX policies).

Source: microsoft/vscode `src/vs/workbench/contrib/chat/browser/chat.contribution.ts`: the
settings `chat.mcp.allowedServers` / `chat.mcp.deniedServers` (policies
`ChatAllowedMcpServers` / `ChatDeniedMcpServers`, VS Code 1.130+, a string holding the JSON
array of matchers), `chat.mcp.gallery.serviceUrl` (policy `McpGalleryServiceUrl`) and
`chat.mcp.access` (policy `ChatMCP`, values `none` / `registry` / `all`; the vscode-docs page
still lists older names). Matching: `src/vs/platform/mcp/common/allowedMcpServers.ts`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sync.policy import matchers
from sync.policy.catalogue import ServerGroup
from sync.policy.export import ExportOptions, ExportResult
from sync.policy.sinks import Sink

__all__ = ["export", "render"]


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render(policy: matchers.Policy, options: ExportOptions) -> bytes:
    """The policy file. The allowlist is always set, even to `[]`: a view that admits nothing
    blocks everything (an unset allowlist would allow everything)."""
    body: dict[str, str] = {
        "ChatAllowedMcpServers": _compact(policy.allowed),
        "ChatDeniedMcpServers": _compact(policy.denied),
    }
    if options.registry_url:
        body["McpGalleryServiceUrl"] = options.registry_url
    if options.registry_only:
        body["ChatMCP"] = "registry"
    return (json.dumps(body, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode()


async def export(
    servers: AsyncIterator[ServerGroup], options: ExportOptions, sink: Sink
) -> ExportResult:
    policy = await matchers.build(servers, options, matchers.COPILOT)
    more: list[str] = []
    if options.registry_only and not options.registry_url:
        more.append(
            "ChatMCP is set to registry without a registry URL: VS Code then admits only the "
            "servers of its default gallery; pass --registry-url to point it at this view."
        )
    sink.write("", render(policy, options))
    return policy.result(*more)
