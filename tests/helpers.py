"""Comparing the mirror with the upstream's truth."""

from __future__ import annotations

import json
from typing import Any

from sync.store import Reader
from tests.fake_upstream import OFFICIAL, FakeRegistry


async def served(reader: Reader, view: str = "default") -> dict[tuple[str, str], dict[str, Any]]:
    """Every served row (deleted included): key -> {"server": text, "meta": parsed _meta}."""
    return {
        (name, version): {"server": server, "meta": json.loads(meta)}
        async for name, version, server, meta in reader.export(view)
    }


def official(item: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = item["meta"][OFFICIAL]
    return value


def assert_mirrors(mirror: dict[tuple[str, str], dict[str, Any]], fake: FakeRegistry) -> None:
    """Same keys, byte-identical server JSON, same status and publication facts."""
    assert set(mirror) == set(fake.rows), (
        f"missing {sorted(set(fake.rows) - set(mirror))[:5]}, "
        f"extra {sorted(set(mirror) - set(fake.rows))[:5]}"
    )
    for key, row in fake.rows.items():
        item = mirror[key]
        assert item["server"] == row.server_text(), key
        facts = official(item)
        assert facts["status"] == row.official["status"], key
        assert facts["publishedAt"] == row.official["publishedAt"], key
        assert facts.get("statusMessage") == row.official.get("statusMessage"), key


def latest_by_name(mirror: dict[tuple[str, str], dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for (name, version), item in mirror.items():
        found.setdefault(name, [])
        if official(item)["isLatest"]:
            found[name].append(version)
    return found
