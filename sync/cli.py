"""The `subregistry` command: argparse, then asyncio.run. Nothing imports this module.

Every command fails the same way: one `subregistry: …` line on stderr and a non-zero exit,
whatever broke (the configuration, the store, the filesystem, the output), and it never hangs:
every store it opens is closed on every path, and a connection thread left behind by a bug
cannot keep the process alive after its result is decided.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TextIO, TypeVar, cast

import structlog

from sync import __version__, control
from sync.app import create_app
from sync.config import DEFAULT_VIEW, Config, load_config
from sync.curate.curation import Curator
from sync.curate.explain import explain, render
from sync.errors import ConfigError, StoreError, StoreLocked
from sync.logs import configure_logging
from sync.metrics import Metrics
from sync.pull.checks import check
from sync.pull.engine import Engine
from sync.reload import reload
from sync.serve.server import serve
from sync.serve.status import collect as collect_status
from sync.serve.status import render as render_status
from sync.store import PassCounts, Reader, Store, open_reader, open_store

__all__ = ["main"]

T = TypeVar("T")


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
    check = commands.add_parser("check", help="validate the configuration; never opens the store")
    # Here too, as operators type it after the command; SUPPRESS keeps a --config given first.
    check.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    check.add_argument("--online", action="store_true", help="also read each upstream once")
    copy = commands.add_parser(
        "copy", help="copy the SQLite mirror into an empty PostgreSQL database, then exit"
    )
    copy.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/db")
    return parser


class CommandFailed(Exception):
    """A command cannot do its work; the message is the whole story for the operator."""


# A closed connection's thread ends within milliseconds; only a leaked one outlives this.
_SETTLE_SECONDS = 2.0
_SIGPIPE_EXIT = 128 + 13  # what a shell reports for a filter killed by SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    before = _threads()
    code = _command(args)
    if _threads() - before:
        # A store connection left open (a bug) would keep the interpreter waiting for its
        # thread forever; the command's outcome is already decided and reported.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _command(args: argparse.Namespace) -> int:
    path: Path | None = None
    try:
        config = load_config(args.config)
        configure_logging(config.logging, cast(TextIO, _STDERR))
        path = config.storage.path
        code = _dispatch(args, config)
        # A reader that closed our pipe shows here, not in the interpreter's last flush.
        sys.stdout.flush()
        return code
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except BrokenPipeError:
        # Python's advice: point stdout at devnull so that the final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _SIGPIPE_EXIT
    except (StoreError, CommandFailed) as exc:
        return _fail(str(exc))
    except sqlite3.Error as exc:
        # SQLite may quote a whole damaged row: the line stays a line.
        text = str(exc)
        return _fail(f"{path}: {text[:300]}{'…' if len(text) > 300 else ''}")
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "sync":
        return _run(_sync(config, full=args.full, only=args.upstream))
    if args.command == "serve":
        return _serve(config, sync=not args.no_sync, source=args.config)
    if args.command == "status":
        return _run(_status(config, as_json=args.json, out=sys.stdout))
    if args.command == "reapply":
        return _run(_reapply(config))
    if args.command == "explain":
        return _run(_explain(config, args.name, args.version, as_json=args.json))
    if args.command == "export":
        return _run(_export(config, args.output))
    if args.command == "check":
        return _run(check(config, online=args.online, out=sys.stdout))
    if args.command == "copy":
        return _run(_copy(config, args.to))
    raise AssertionError(f"unhandled command {args.command}")


def _fail(message: str, code: int = 1) -> int:
    print(f"subregistry: {message}", file=sys.stderr)
    return code


def _threads() -> set[threading.Thread]:
    """Live threads that would keep the interpreter from exiting."""
    return {t for t in threading.enumerate() if t.is_alive() and not t.daemon}


def _run(command: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(_settled(command))


async def _settled(command: Coroutine[Any, Any, T]) -> T:
    """Run `command`, then let the store's connection threads finish on a live loop.

    aiosqlite closes a connection on its own thread and reports back to the loop, and a failed
    open closes without being awaited: were the loop gone by then, the thread would print an
    "Event loop is closed" traceback.
    """
    before = _threads()
    try:
        return await command
    finally:
        loop = asyncio.get_running_loop()
        await loop.shutdown_default_executor()
        deadline = loop.time() + _SETTLE_SECONDS
        # Threads offer nothing to await: poll them, briefly.
        while _threads() - before and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@asynccontextmanager
async def _reading(config: Config) -> AsyncIterator[Reader]:
    reader = await open_reader(config.storage, connections=1)
    try:
        yield reader
    finally:
        await reader.close()


@asynccontextmanager
async def _writing(config: Config, *, existing: bool = False) -> AsyncIterator[Store]:
    path = config.storage.path
    if existing and not config.storage.postgres and not path.exists():
        raise CommandFailed(f"no mirror at {path} (run a sync first)")
    store = await open_store(config.storage)
    try:
        if config.storage.postgres:
            async with _leading(config, store):
                yield store
        else:
            yield store
    finally:
        await store.close()


@asynccontextmanager
async def _leading(config: Config, store: Store) -> AsyncIterator[None]:
    """A one-shot writer of a shared database leads it for its duration, as a daemon would;
    while another process leads, that one runs the passes (NotLeader names it)."""
    # Imported here: commands on a SQLite mirror never load the PostgreSQL driver.
    from sync.store.postgres.leader import held  # noqa: PLC0415
    from sync.store.postgres.writer import PostgresStore  # noqa: PLC0415

    assert config.storage.url is not None
    assert isinstance(store, PostgresStore)
    async with held(config.storage.url, lease=config.storage.lease, holder=store.holder) as lead:
        assert lead.epoch is not None
        await store.lead(lead.epoch, lead.holder)
        try:
            yield
        finally:
            store.unlead()


class _Stderr(io.TextIOBase):
    """Standard error with a progress line at its foot: anything else written there (a log
    event, a warning) first erases the line, so it starts at the left margin instead of after
    the progress text; the next progress update draws the line again."""

    def __init__(self) -> None:
        self._drawn = False

    def draw(self, text: str) -> None:
        sys.stderr.write(f"\r\033[K{text}")
        sys.stderr.flush()
        self._drawn = True

    def erase(self) -> None:
        if self._drawn:
            self._drawn = False
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def write(self, text: str) -> int:
        if text:
            self.erase()
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    def fileno(self) -> int:
        return sys.stderr.fileno()


_STDERR = _Stderr()


def _progress(upstream: str, counts: PassCounts) -> None:
    """One self-overwriting line on a terminal; never written when stderr is not a tty."""
    seen = counts.inserted + counts.updated + counts.unchanged + counts.quarantined
    _STDERR.draw(f"{upstream}: {counts.pages} pages, {seen} entries")


async def _sync(config: Config, *, full: bool, only: str | None) -> int:
    names = [config.upstream(only).name] if only else [u.name for u in config.upstreams]
    try:
        return await _sync_direct(config, names, full=full)
    except StoreLocked as locked:
        # A daemon holds the store: it runs the passes and answers with their summaries.
        body = {"upstream": only, "full": full}
        reply = await _through_daemon(config, "sync", body, locked)
        for result in reply["results"]:
            print(result["summary"], flush=True)
        return 1 if any(r["outcome"] != "ok" for r in reply["results"]) else 0


async def _through_daemon(
    config: Config, action: str, body: dict[str, Any], locked: StoreLocked
) -> dict[str, Any]:
    """Ask the daemon holding the store; whoever holds it without a control socket (another
    `sync`, a daemon of an older version) leaves the lock's own message to tell."""
    try:
        return await control.ask(config.storage.path, action, body)
    except control.ControlUnavailable:
        raise locked from None


async def _sync_direct(config: Config, names: list[str], *, full: bool) -> int:
    async with _writing(config) as store:
        progress = _progress if sys.stderr.isatty() else None
        engine = Engine(config, store, Metrics(), progress=progress)
        try:
            await engine.startup()
            failed = False
            for name in names:
                result = await engine.run(name, full=full, ignore_circuit=True)
                _STDERR.erase()  # the summary, on stdout, may share the terminal
                print(result.summary(), flush=True)
                failed |= result.outcome != "ok"
            return 1 if failed else 0
        finally:
            _STDERR.erase()  # a failure's one line must not start after the progress text
            await engine.close()


def _serve(config: Config, *, sync: bool, source: Path | None) -> int:
    log = structlog.get_logger("sync.cli")
    log.info(
        "serve.starting",
        host=config.api.host,
        port=config.api.port,
        base_path=config.api.base_path,
        sync=sync,
        version=__version__,
    )
    app = create_app(config, sync=sync)
    _run(serve(app, config.api, reload=lambda: reload(app, lambda: load_config(source))))
    log.info("serve.stopped")
    return 0


async def _status(config: Config, *, as_json: bool, out: TextIO) -> int:
    async with _reading(config) as reader:
        report = await collect_status(config, reader)
    if as_json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        out.write(render_status(report))
    return 0


async def _reapply(config: Config) -> int:
    try:
        async with _writing(config, existing=True) as store:
            names, changed = await Curator(config, store, Metrics()).reapply()
    except StoreLocked as locked:
        # The daemon's own rules apply: they are what it serves by.
        reply = await _through_daemon(config, "reapply", {}, locked)
        names, changed = reply["names"], reply["changed"]
    print(f"reapplied rules to {names} servers: {changed} served rows changed")
    return 0


async def _explain(config: Config, name: str, version: str | None, *, as_json: bool) -> int:
    async with _reading(config) as reader:
        entries = await reader.entries_for([name])
        wanted = version or "latest"
        row = await reader.version(DEFAULT_VIEW, name, wanted, include_deleted=True)
    if not entries:
        raise CommandFailed(f"no upstream holds {name!r}")
    if version is not None and all(e.version != version for e in entries):
        held = len({e.version for e in entries})
        raise CommandFailed(
            f"no upstream holds {name!r} version {version!r} ({held} other versions held)"
        )
    report = explain(config, entries, version)
    served = {"server": json.loads(row[2]), "_meta": json.loads(row[3])} if row else None
    if as_json:
        print(json.dumps({**report, "served": served}, indent=2, ensure_ascii=False))
    else:
        print(render(report, served))
    return 0


async def _export(config: Config, output: Path | None) -> int:
    # The output opens first: a path that cannot be written fails before the store is touched.
    try:
        stream = output.open("w", encoding="utf-8") if output else sys.stdout
    except OSError as exc:
        raise CommandFailed(f"cannot write {output}: {exc.strerror}") from None
    try:
        async with _reading(config) as reader:
            count = 0
            stream.write('{"servers":[')
            async for _, _, server, meta in reader.export(DEFAULT_VIEW):
                stream.write(("," if count else "") + f'{{"server":{server},"_meta":{meta}}}')
                count += 1
            stream.write(f'],"metadata":{{"count":{count}}}}}\n')
        if output:
            stream.close()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CommandFailed(f"cannot write {output or 'standard output'}: {exc.strerror}") from None
    finally:
        if output and not stream.closed:
            # After a failure: the close's own error must not replace the first one.
            with suppress(OSError):
                stream.close()
    return 0


async def _copy(config: Config, target: str) -> int:
    # Imported here: commands on a SQLite mirror never load the PostgreSQL driver.
    from sync.store.postgres.copy import check_target, copy_mirror  # noqa: PLC0415

    check_target(target)
    result = await copy_mirror(config.storage.path, target, lease=config.storage.lease)
    print(result.summary(), flush=True)
    return 0
