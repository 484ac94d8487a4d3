"""The `subregistry` command: argparse, then asyncio.run. Nothing imports this module."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import structlog
from aiohttp import web

from sync import __version__
from sync.app import create_app
from sync.config import DEFAULT_VIEW, Config, load_config
from sync.curation import Curator
from sync.engine import Engine
from sync.errors import ConfigError, StoreError
from sync.explain import explain, render
from sync.logs import configure_logging
from sync.metrics import Metrics
from sync.store import PassCounts, Reader, Store, records

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subregistry", description="A curated mirror of the MCP Registry."
    )
    parser.add_argument("--config", type=Path, help="TOML file (default: $SUBREGISTRY_CONFIG)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser("sync", help="run one pass of each upstream, then exit")
    sync.add_argument("--full", action="store_true", help="list everything and reconcile")
    sync.add_argument("--upstream", metavar="NAME", help="only this upstream")
    status = commands.add_parser("status", help="checkpoints, passes, errors, quarantine")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    serve = commands.add_parser("serve", help="run the API and the scheduled passes")
    serve.add_argument(
        "--no-sync", action="store_true", help="serve only (an API replica of a synced file)"
    )
    commands.add_parser("reapply", help="re-evaluate every stored entry under the current rules")
    explain = commands.add_parser("explain", help="why a server is (or is not) served")
    explain.add_argument("name")
    explain.add_argument("version", nargs="?")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    export = commands.add_parser("export", help="write the served catalogue as a list envelope")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        configure_logging(config.logging)
        if args.command == "sync":
            return asyncio.run(_sync(config, full=args.full, only=args.upstream))
        if args.command == "serve":
            return _serve(config, sync=not args.no_sync)
        if args.command == "status":
            return asyncio.run(_status(config, as_json=args.json, out=sys.stdout))
        if args.command == "reapply":
            return asyncio.run(_reapply(config))
        if args.command == "explain":
            return asyncio.run(_explain(config, args.name, args.version, as_json=args.json))
        if args.command == "export":
            return asyncio.run(_export(config, args.output))
    except ConfigError as exc:
        print(f"subregistry: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"subregistry: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


def _progress(upstream: str, counts: PassCounts) -> None:
    """One self-overwriting line on a terminal; never written when stderr is not a tty."""
    seen = counts.inserted + counts.updated + counts.unchanged + counts.quarantined
    sys.stderr.write(f"\r\033[K{upstream}: {counts.pages} pages, {seen} entries")
    sys.stderr.flush()


async def _sync(config: Config, *, full: bool, only: str | None) -> int:
    names = [config.upstream(only).name] if only else [u.name for u in config.upstreams]
    store = await Store.open(config.storage.path)
    engine = Engine(config, store, Metrics(), progress=_progress if sys.stderr.isatty() else None)
    try:
        await engine.startup()
        failed = False
        for name in names:
            result = await engine.run(name, full=full, ignore_circuit=True)
            if sys.stderr.isatty():
                sys.stderr.write("\r\033[K")
            print(result.summary(), flush=True)
            failed |= result.outcome != "ok"
        return 1 if failed else 0
    finally:
        await engine.close()
        await store.close()


def _serve(config: Config, *, sync: bool) -> int:
    log = structlog.get_logger("sync.cli")
    log.info(
        "serve.starting",
        host=config.api.host,
        port=config.api.port,
        base_path=config.api.base_path,
        sync=sync,
        version=__version__,
    )
    web.run_app(
        create_app(config, sync=sync),
        host=config.api.host,
        port=config.api.port,
        print=None,
        access_log=None,
        shutdown_timeout=config.api.stop_grace + 5,
    )
    log.info("serve.stopped")
    return 0


async def _status(config: Config, *, as_json: bool, out: TextIO) -> int:
    reader = await Reader.open(config.storage.path, connections=1)
    try:
        states = await reader.upstream_states()
        held = await reader.held()
        quarantine = await reader.quarantine()
        hits = await reader.rule_hits(DEFAULT_VIEW)
        report: dict[str, Any] = {"upstreams": [], "rule_hits": hits}
        for upstream in config.upstreams:
            state = states.get(upstream.name, records.UpstreamState(upstream.name))
            kept, removed = held.get(upstream.name, (0, 0))
            report["upstreams"].append(
                {
                    "name": upstream.name,
                    "source": upstream.url or str(upstream.path),
                    "headers": dict.fromkeys(upstream.headers, "***"),
                    "checkpoint": state.checkpoint,
                    "last_success": state.last_success_at,
                    "last_full": state.last_full_at,
                    "last_error": state.last_error,
                    "last_error_at": state.last_error_at,
                    "consecutive_failures": state.failures,
                    "circuit_open_until": state.circuit_until,
                    "pass_in_progress": state.pass_id is not None,
                    "versions_held": kept,
                    "versions_removed": removed,
                    "quarantined": [
                        {"key": q.key, "reason": q.reason, "last_seen": q.last_seen}
                        for q in quarantine
                        if q.upstream == upstream.name
                    ],
                    "recent_passes": [
                        {
                            "id": p.id,
                            "mode": p.mode,
                            "started": p.started_at,
                            "ended": p.ended_at,
                            "outcome": p.outcome,
                            "error": p.error,
                            "checkpoint": p.checkpoint,
                            "resumed_from": p.resumed_from,
                            **p.counts,
                        }
                        for p in await reader.passes(upstream.name, limit=10)
                    ],
                }
            )
    finally:
        await reader.close()
    if as_json:
        json.dump(report, out, indent=2)
        out.write("\n")
        return 0
    for u in report["upstreams"]:
        out.write(
            f"{u['name']} ({u['source']})\n"
            f"  checkpoint:      {u['checkpoint'] or '-'}\n"
            f"  last success:    {u['last_success'] or 'never'}\n"
            f"  last error:      {u['last_error'] or '-'}"
            f"{' at ' + u['last_error_at'] if u['last_error_at'] else ''}\n"
            f"  versions held:   {u['versions_held']} ({u['versions_removed']} removed)\n"
            f"  quarantined:     {len(u['quarantined'])}\n"
        )
        if u["circuit_open_until"]:
            out.write(f"  circuit open until {u['circuit_open_until']}\n")
        for q in u["quarantined"][:20]:
            out.write(f"    {q['key']}: {q['reason']}\n")
    if hits:
        out.write("rule hits:\n")
        for rule, count in sorted(hits.items()):
            out.write(f"  {rule}: {count}\n")
    return 0


async def _reapply(config: Config) -> int:
    store = await Store.open(config.storage.path)
    try:
        names, changed = await Curator(config, store, Metrics()).reapply()
    finally:
        await store.close()
    print(f"reapplied rules to {names} servers: {changed} served rows changed")
    return 0


async def _explain(config: Config, name: str, version: str | None, *, as_json: bool) -> int:
    reader = await Reader.open(config.storage.path, connections=1)
    try:
        entries = await reader.entries_for([name])
        wanted = version or "latest"
        row = await reader.version(DEFAULT_VIEW, name, wanted, include_deleted=True)
    finally:
        await reader.close()
    if not entries:
        print(f"subregistry: no upstream holds {name!r}", file=sys.stderr)
        return 1
    report = explain(config, entries, version)
    served = {"server": json.loads(row[2]), "_meta": json.loads(row[3])} if row else None
    if as_json:
        print(json.dumps({**report, "served": served}, indent=2, ensure_ascii=False))
    else:
        print(render(report, served))
    return 0


async def _export(config: Config, output: Path | None) -> int:
    reader = await Reader.open(config.storage.path, connections=1)
    stream = output.open("w", encoding="utf-8") if output else sys.stdout
    try:
        count = 0
        stream.write('{"servers":[')
        async for _, _, server, meta in reader.export(DEFAULT_VIEW):
            stream.write(("," if count else "") + f'{{"server":{server},"_meta":{meta}}}')
            count += 1
        stream.write(f'],"metadata":{{"count":{count}}}}}\n')
    finally:
        await reader.close()
        if output:
            stream.close()
    return 0
