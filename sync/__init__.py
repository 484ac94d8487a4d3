"""mcp-subregistry: a curated, incremental mirror of MCP Registry server metadata."""

from __future__ import annotations

__all__ = ["USER_AGENT", "__version__"]

# The one place the version is written: pyproject.toml reads it (setuptools dynamic version).
__version__ = "0.1.0"
USER_AGENT = f"mcp-subregistry/{__version__} (+https://github.com/modelcontextprotocol/registry)"
