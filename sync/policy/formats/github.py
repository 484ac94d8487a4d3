"""The `github` export: GitHub Copilot's enterprise `managed-settings.json` allow and deny
lists, read by Copilot CLI, VS Code, JetBrains and the other Copilot surfaces.

Source: https://docs.github.com/en/copilot/reference/enterprise-administrators/enterprise-managed-settings
("## allowedMcpServers": each entry holds exactly one of `serverName`, `serverUrl`,
`serverCommand`; "Omit this key entirely to allow all servers"; an empty array blocks every
server but the built-in ones) and .../manage-mcp-usage/configure-enterprise-allowlist (deny
first, then the allowlist). The file is deployed in the enterprise's `.github-private`
repository as `copilot/managed-settings.json`, by MDM, or on disk (see docs/policy.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sync.policy import matchers
from sync.policy.catalogue import ServerGroup
from sync.policy.export import ExportOptions, ExportResult
from sync.policy.sinks import Sink

__all__ = ["export", "render"]


def render(policy: matchers.Policy) -> bytes:
    """The settings file. `allowedMcpServers` is always present, even empty: a view that
    admits nothing must block everything, and an absent key would allow everything."""
    body = {"allowedMcpServers": policy.allowed, "deniedMcpServers": policy.denied}
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()


async def export(
    servers: AsyncIterator[ServerGroup], options: ExportOptions, sink: Sink
) -> ExportResult:
    policy = await matchers.build(servers, options, matchers.COPILOT)
    sink.write("", render(policy))
    return policy.result()
