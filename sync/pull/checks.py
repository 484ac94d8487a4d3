"""`subregistry check`: is this configuration usable, and can each upstream be read?

Nothing here opens the store, so a check can run beside a live daemon, in a deploy pipeline,
or on a machine that has no mirror yet. Online, each upstream is read the way a pass reads
it (the same client, headers, redirect policy and parser), but only once and never retried:
a check answers now, it does not wait out an outage.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TextIO

from sync.config import Config, UpstreamConfig
from sync.curate.rules import compile_rules
from sync.errors import UpstreamError
from sync.metrics import Metrics
from sync.pull.upstream import UpstreamClient
from sync.pull.wire import MalformedPage, parse_page

__all__ = ["Probe", "check", "probe", "summary"]


@dataclass(frozen=True, slots=True)
class Probe:
    upstream: str
    ok: bool
    detail: str


def _plural(count: int, word: str) -> str:
    many = f"{word[:-1]}ies" if word.endswith("y") else f"{word}s"
    return f"{count} {word if count == 1 else many}"


def summary(config: Config) -> str:
    """One line: what the configuration mirrors, through how many rules, into which file."""
    sets = compile_rules(config).values()
    rules = {name for s in sets for name, _ in s.rules} | {
        name for s in sets for name, _ in s.latest_versions
    }
    sources = "; ".join(
        f"{u.name}: {f'file {u.path}' if u.path is not None else u.url}" for u in config.upstreams
    )
    return (
        f"configuration ok: {_plural(len(config.upstreams), 'upstream')} ({sources}), "
        f"{_plural(len(rules), 'rule')}, storage {config.storage.path}"
    )


async def probe(upstream: UpstreamConfig) -> Probe:
    """Read the upstream once: `GET /v0.1/servers?limit=1`, or its file."""
    if upstream.path is not None:
        return await _probe_file(upstream)
    # A registry of its own: a check's requests are no daemon's metrics.
    client = UpstreamClient(upstream, Metrics())
    url = client.list_url(None, None, include_deleted=False, limit=1)
    try:
        async with client:
            fetched = await client.fetch_page(None, None, include_deleted=False, limit=1, retries=0)
    except UpstreamError as exc:
        return Probe(upstream.name, False, _reason(upstream, exc))
    return Probe(upstream.name, True, f"GET {url}: {_plural(fetched.page.size, 'entry')}")


async def _probe_file(upstream: UpstreamConfig) -> Probe:
    assert upstream.path is not None
    try:
        data = await asyncio.to_thread(upstream.path.read_bytes)
    except OSError as exc:
        return Probe(upstream.name, False, f"cannot read {upstream.path}: {exc.strerror}")
    if len(data) > upstream.max_response_bytes:
        cap = upstream.max_response_bytes
        return Probe(upstream.name, False, f"{upstream.path} is over the {cap}-byte cap")
    try:
        page = parse_page(data, max_entry_chars=upstream.max_entry_bytes)
    except MalformedPage as exc:
        return Probe(upstream.name, False, f"{upstream.path}: unreadable: {exc}")
    rejected = f", {len(page.rejected)} refused" if page.rejected else ""
    return Probe(
        upstream.name, True, f"{upstream.path}: {_plural(len(page.entries), 'entry')}{rejected}"
    )


def _reason(upstream: UpstreamConfig, exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.removeprefix(f"{upstream.name}: ")


async def check(config: Config, *, online: bool, out: TextIO) -> int:
    """Print the summary and, online, one line per upstream; 1 if any upstream failed."""
    out.write(summary(config) + "\n")
    if not online:
        return 0
    probes = await asyncio.gather(*(probe(u) for u in config.upstreams))
    for p in probes:
        out.write(f"{p.upstream}: {'ok' if p.ok else 'FAILED'}: {p.detail}\n")
    return 0 if all(p.ok for p in probes) else 1
