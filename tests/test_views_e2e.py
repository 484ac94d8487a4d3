"""Views end to end (issue #13): one synced mirror serving two views from real `subregistry`
processes, and a second mirror whose upstream is one view's base URL, with the view's bearer
token in its `headers`. The second mirror converges to exactly that view; after a rule change
in the view (SIGHUP), its next incremental pass applies the view's tombstones, and the other
views' streams do not move."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli_helpers import TOKEN, free_port, run, spawn, write_config
from tests.fake_upstream import OFFICIAL, FakeRegistry
from tests.helpers import serving

PAYMENTS = ("ai.exa/*", "ai.mcpcap/*")
NARROWED = ("ai.exa/*",)
VIEWS = """
[[views]]
name = "payments"
base_path = "/teams/payments"
[views.filter]
include = {include}
[views.auth]
type = "bearer"
tokens_file = "{tokens}"

[[views]]
name = "data-platform"
base_path = "/teams/data"
[views.filter]
exclude = ["ai.smithery/*"]
"""
Item = dict[str, Any]


@dataclass
class Source:
    """The mirror that serves the views: a real `subregistry serve` (syncing) process."""

    process: asyncio.subprocess.Process
    config: Path
    base: str

    async def get(self, path: str, *, token: str | None = TOKEN, **params: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base + path, params=params, headers=headers) as response,
        ):
            return response.status, await response.json(content_type=None)

    async def listing(self, prefix: str, **params: str) -> dict[tuple[str, str], Item]:
        """Every item of a view's `/v0.1/servers`, page after page."""
        items: dict[tuple[str, str], Item] = {}
        cursor: str | None = None
        while True:
            query = {**params, "limit": "100", **({"cursor": cursor} if cursor else {})}
            status, body = await self.get(f"{prefix}/v0.1/servers", **query)
            assert status == 200, body
            for item in body["servers"]:
                items[(item["server"]["name"], item["server"]["version"])] = item
            cursor = body["metadata"].get("nextCursor")
            if not cursor:
                return items

    async def synced(self) -> None:
        for _ in range(600):
            await asyncio.sleep(0.05)
            try:
                status, body = await self.get("/readyz", token=None)
            except aiohttp.ClientError:
                continue
            if status == 200 and all(u.get("last_success") for u in body["upstreams"]):
                return
        raise AssertionError("the source's first pass did not complete")


def _views(tokens: Path, include: tuple[str, ...]) -> str:
    return VIEWS.format(include=json.dumps(list(include)), tokens=tokens)


@pytest.fixture
async def source(tmp_path: Path, catalogue: list[dict[str, Any]]) -> AsyncIterator[Source]:
    fake = FakeRegistry(json.loads(json.dumps(catalogue[:300])))
    port = free_port()
    home = tmp_path / "source"
    home.mkdir()
    tokens = home / "payments.tokens"
    tokens.write_text(f"{TOKEN}\n")
    async with serving(fake.app()) as url:
        head = f"[api]\nport = {port}\n"
        config = write_config(home, url, head, before_upstreams=True)
        config.write_text(config.read_text() + _views(tokens, PAYMENTS))
        process = await spawn("--config", config, "serve")
        running = Source(process, config, f"http://127.0.0.1:{port}")
        try:
            await running.synced()
            yield running
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.communicate(), 30)


def _exported(text: str) -> dict[tuple[str, str], Item]:
    return {(s["server"]["name"], s["server"]["version"]): s for s in json.loads(text)["servers"]}


def _facts(item: Item) -> tuple[Any, ...]:
    official = item["_meta"][OFFICIAL]
    return (
        json.dumps(item["server"], sort_keys=True),
        official["status"],
        official["isLatest"],
        official.get("publishedAt"),
    )


def _matching(keys: set[tuple[str, str]], globs: tuple[str, ...]) -> set[tuple[str, str]]:
    return {k for k in keys if any(fnmatch.fnmatchcase(k[0], g) for g in globs)}


async def test_a_downstream_mirror_follows_one_private_view(source: Source, tmp_path: Path) -> None:
    everything = await source.listing("")
    payments = await source.listing("/teams/payments")
    data = await source.listing("/teams/data")
    assert set(payments) == _matching(set(everything), PAYMENTS) and len(payments) == 18
    assert set(data) == set(everything) - _matching(set(everything), ("ai.smithery/*",))
    # The view is private: no token, no catalogue.
    status, body = await source.get("/teams/payments/v0.1/servers", token=None)
    assert status == 401 and body["status"] == 401

    # A second instance whose one upstream is the view, its token in `headers`.
    home = tmp_path / "downstream"
    home.mkdir()
    downstream = write_config(home, source.base + "/teams/payments")
    # Without the token, the downstream's pass fails on the 401 and holds nothing.
    tokenless = home / "tokenless.toml"
    tokenless.write_text(
        "\n".join(
            line for line in downstream.read_text().splitlines() if "headers" not in line
        ).replace("mirror.db", "tokenless.db")
    )
    code, out, err = await run("--config", tokenless, "sync")
    assert code == 1 and out.startswith("official: failed") and "401" in out, out + err
    code, out, err = await run("--config", downstream, "sync")
    assert code == 0, err
    assert out.startswith("official: ok full pass") and "18 inserted" in out
    code, out, err = await run("--config", downstream, "export")
    assert code == 0, err
    mirrored = _exported(out)
    assert set(mirrored) == set(payments)
    for key, item in payments.items():
        assert _facts(mirrored[key]) == _facts(item), key

    # The view's rules change; the daemon reloads them and re-evaluates that view only.
    shown = [*everything.values(), *payments.values(), *data.values()]
    before = max(i["_meta"][OFFICIAL]["updatedAt"] for i in shown)
    tokens = source.config.parent / "payments.tokens"
    text = source.config.read_text()
    source.config.write_text(text.replace(_views(tokens, PAYMENTS), _views(tokens, NARROWED)))
    source.process.send_signal(signal.SIGHUP)
    dropped = set(payments) - _matching(set(payments), NARROWED)
    assert len(dropped) == 12
    changed: dict[tuple[str, str], Item] = {}
    for _ in range(400):
        await asyncio.sleep(0.05)
        changed = await source.listing("/teams/payments", updated_since=before)
        if set(changed) == dropped:
            break
    assert set(changed) == dropped
    assert {i["_meta"][OFFICIAL]["status"] for i in changed.values()} == {"deleted"}
    # Only that view's stream moved.
    assert await source.listing("", updated_since=before) == {}
    assert await source.listing("/teams/data", updated_since=before) == {}

    # The downstream's next pass is incremental and applies exactly the view's tombstones.
    code, out, err = await run("--config", downstream, "sync")
    assert code == 0, err
    assert out.startswith("official: ok incremental pass"), out
    code, out, err = await run("--config", downstream, "export")
    assert code == 0, err
    after = _exported(out)
    assert set(after) == set(payments)
    for key, item in after.items():
        status = item["_meta"][OFFICIAL]["status"]
        assert status == ("deleted" if key in dropped else "active"), key
        if key not in dropped:
            # Untouched rows keep their mirror stamp: nothing else was rewritten.
            stamp = item["_meta"][OFFICIAL]["updatedAt"]
            assert stamp == mirrored[key]["_meta"][OFFICIAL]["updatedAt"], key
    visible = {k for k, i in after.items() if i["_meta"][OFFICIAL]["status"] != "deleted"}
    assert visible == set(await source.listing("/teams/payments"))
