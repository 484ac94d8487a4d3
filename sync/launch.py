"""How a registry package is launched: the exact argv a client builds from a `packages[]`
entry, one ecosystem launcher per registry type.

Shared by the catalogue page (the install hint shown to people) and the policy exporters (the
`serverCommand` an allowlist admits, which clients compare argument by argument). Pure: no
I/O, no imports from the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["argv"]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _oci_ref(identifier: str, version: str) -> str:
    # Newer server.json puts the tag or digest in the identifier itself.
    last = identifier.rsplit("/", 1)[-1]
    if not version or ":" in last or "@" in last:
        return identifier
    return f"{identifier}:{version}"


def argv(package: Mapping[str, Any]) -> list[str] | None:
    """The command and arguments that run `package` at its pinned version; None when its
    registry type has no launcher (mcpb, or a type newer than this code) or it names no
    identifier."""
    kind = _text(package.get("registryType")).lower()
    identifier = _text(package.get("identifier"))
    version = _text(package.get("version"))
    if not identifier:
        return None
    if kind == "npm":
        return ["npx", "-y", f"{identifier}@{version}" if version else identifier]
    if kind == "pypi":
        return ["uvx", f"{identifier}=={version}" if version else identifier]
    if kind == "oci":
        return ["docker", "run", "-i", "--rm", _oci_ref(identifier, version)]
    if kind == "nuget":
        return ["dnx", f"{identifier}@{version}" if version else identifier]
    return None
