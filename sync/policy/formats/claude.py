"""The `claude-code` export: the `allowedMcpServers` / `deniedMcpServers` fragment of Claude
Code's `managed-settings.json`.

Source: https://code.claude.com/docs/en/managed-mcp ("Each entry is an object with a single
key that identifies servers by their URL, their command, or their name"; `serverUrl` takes
`*` "anywhere in the pattern", and "A pattern with no path matches any path", so every
pattern here carries a path; "Commands match exactly. Every argument, in order.";
`allowManagedMcpServersOnly: true` makes the managed allowlist the only one, otherwise users'
own allowlists merge with it and can widen it). `serverName` is never emitted: Claude limits
allowlist names to letters, digits, `-` and `_`, which no registry name fits, and a name is
the user's own label anyway.
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
    """The settings fragment; `allowedMcpServers` always present (empty blocks every server)."""
    body = {
        "allowManagedMcpServersOnly": True,
        "allowedMcpServers": policy.allowed,
        "deniedMcpServers": policy.denied,
    }
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()


async def export(
    servers: AsyncIterator[ServerGroup], options: ExportOptions, sink: Sink
) -> ExportResult:
    policy = await matchers.build(servers, options, matchers.CLAUDE)
    sink.write("", render(policy))
    return policy.result()
