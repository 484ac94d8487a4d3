"""What each `subregistry` command does, once `sync/cli.py` has parsed its arguments and loaded
the configuration: open what the command needs, do the work, print the result, close everything.

A command reports failure by raising (`CommandFailed`, `ConfigError`, `StoreError`, `OSError`);
the CLI turns any of them into one `subregistry: …` line and an exit code.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

import structlog

from sync import __version__, control
from sync.app import create_app
from sync.config import Config, load_config
from sync.curate.curation import Curator
from sync.curate.explain import explain, render
from sync.errors import CommandFailed, StoreLocked
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.reload import reload
from sync.serve.server import serve
from sync.serve.status import collect as collect_status
from sync.serve.status import render as render_status
from sync.store import PassCounts, Reader, Store, open_reader, open_store

__all__ = [
    "STDERR",
    "CommandFailed",
    "copy_command",
    "explain_command",
    "export_command",
    "reapply_command",
    "serve_command",
    "status_command",
    "sync_command",
]


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


# Where the CLI sends its logs, so that they never start after the progress text.
STDERR = _Stderr()


def _progress(upstream: str, counts: PassCounts) -> None:
    """One self-overwriting line on a terminal; never written when stderr is not a tty."""
    seen = counts.inserted + counts.updated + counts.unchanged + counts.quarantined
    STDERR.draw(f"{upstream}: {counts.pages} pages, {seen} entries")


async def sync_command(config: Config, *, full: bool, only: str | None) -> int:
    """`sync`: one pass per upstream, here, or through the daemon that holds the store."""
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
                STDERR.erase()  # the summary, on stdout, may share the terminal
                print(result.summary(), flush=True)
                failed |= result.outcome != "ok"
            return 1 if failed else 0
        finally:
            STDERR.erase()  # a failure's one line must not start after the progress text
            await engine.close()


async def serve_command(config: Config, *, sync: bool, source: Path | None) -> int:
    """`serve`: the API (and, with `sync`, the scheduled passes) until SIGINT or SIGTERM;
    SIGHUP reloads `source`, the file this configuration came from."""
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
    await serve(app, config.api, reload=lambda: reload(app, lambda: load_config(source)))
    log.info("serve.stopped")
    return 0


async def status_command(config: Config, *, as_json: bool, out: TextIO) -> int:
    """`status`: read-only, so it answers while a daemon writes."""
    async with _reading(config) as reader:
        report = await collect_status(config, reader)
    if as_json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        out.write(render_status(report))
    return 0


async def reapply_command(config: Config) -> int:
    """`reapply`: every stored entry under the current rules, here or through the daemon."""
    try:
        async with _writing(config, existing=True) as store:
            names, changed = await Curator(config, store, Metrics()).reapply()
    except StoreLocked as locked:
        # The daemon's own rules apply: they are what it serves by.
        reply = await _through_daemon(config, "reapply", {}, locked)
        names, changed = reply["names"], reply["changed"]
    print(f"reapplied rules to {names} servers: {changed} served rows changed")
    return 0


async def explain_command(
    config: Config, name: str, version: str | None, *, view: str, as_json: bool
) -> int:
    """`explain`: every rule's verdict on each stored copy of `name` (the global rules, then
    those of `view`), and the form `view` serves."""
    config.view(view)  # an unknown view fails before the store is opened
    async with _reading(config) as reader:
        entries = await reader.entries_for([name])
        wanted = version or "latest"
        row = await reader.version(view, name, wanted, include_deleted=True)
    if not entries:
        raise CommandFailed(f"no upstream holds {name!r}")
    if version is not None and all(e.version != version for e in entries):
        held = len({e.version for e in entries})
        raise CommandFailed(
            f"no upstream holds {name!r} version {version!r} ({held} other versions held)"
        )
    report = explain(config, entries, version, view=view)
    served = {"server": json.loads(row[2]), "_meta": json.loads(row[3])} if row else None
    if as_json:
        print(json.dumps({**report, "served": served}, indent=2, ensure_ascii=False))
    else:
        print(render(report, served))
    return 0


async def export_command(config: Config, output: Path | None, *, view: str) -> int:
    """`export`: what `view` serves, as the list envelope a file upstream reads back."""
    config.view(view)  # an unknown view fails before the output or the store is opened
    # The output opens first: a path that cannot be written fails before the store is touched.
    try:
        stream = output.open("w", encoding="utf-8") if output else sys.stdout
    except OSError as exc:
        raise CommandFailed(f"cannot write {output}: {exc.strerror}") from None
    try:
        async with _reading(config) as reader:
            count = 0
            stream.write('{"servers":[')
            async for _, _, server, meta in reader.export(view):
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


async def copy_command(config: Config, target: str) -> int:
    """`copy`: the SQLite mirror into an empty PostgreSQL database."""
    # Imported here: commands on a SQLite mirror never load the PostgreSQL driver.
    from sync.store.postgres.copy import check_target, copy_mirror  # noqa: PLC0415

    check_target(target)
    result = await copy_mirror(config.storage.path, target, lease=config.storage.lease)
    print(result.summary(), flush=True)
    return 0
