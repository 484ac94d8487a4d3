"""Wiring: the aiohttp application owns every resource as a cleanup context, in order.

SQLite: writer store → engine → read-only readers → control socket → scheduler. The readers
open after the writer has switched the file to WAL; on stop the scheduler lets a running page
commit first.

PostgreSQL: writer store and its candidacy for the leadership (`sync.leading`: engine and
scheduler run only while elected) → readers and the change-serial poller of the response
cache. No control socket: `subregistry sync`/`reapply` on PostgreSQL hold the leadership
themselves, and are refused while a daemon leads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from sync.config import DEFAULT_VIEW, Config
from sync.control import control_site
from sync.errors import StoreError
from sync.leading import WRITING, Writing, pg_writer_ctx, start_writing, stop_writing
from sync.metrics import Metrics
from sync.model import utcnow
from sync.pull.engine import Clock, Engine
from sync.reload import RELOADING
from sync.serve.api import CACHE, CLOCK, CONFIG, LIVE, METRICS, READER, VIEW, Live, add_routes
from sync.serve.auth import add_metadata_routes
from sync.serve.cache import ResponseCache, SerialState, file_id
from sync.serve.mcp import add_mcp_routes, mcp_ctx
from sync.serve.middleware import middlewares
from sync.serve.oidc import oidc_ctx
from sync.serve.ops import add_ops_routes
from sync.serve.page import add_page_routes
from sync.store import open_reader, open_store
from sync.store.sqlite.reader import SqliteReader

__all__ = ["WRITING", "create_app"]

log = structlog.get_logger("sync.app")
SERIAL = web.AppKey("serial", SerialState)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = await open_store(config.storage)
    engine = Engine(config, store, app[METRICS], clock=app[CLOCK])
    writing = app[WRITING]
    writing.store, writing.engine = store, engine
    try:
        await engine.startup()
        yield
    finally:
        writing.engine = None
        await engine.close()
        await store.close()


# How often a replica looks for another database file at its path, and how long replaced
# readers stay open for the requests that were already using them.
FOLLOW_EVERY = 1.0
_RETIRE_AFTER = 30.0


async def _reader_ctx(app: web.Application) -> AsyncIterator[None]:
    path, cache = app[CONFIG].storage.path, app[CACHE]
    identity = file_id(path)
    reader = await SqliteReader.open(path)
    app[READER] = reader
    cache.bind(identity)
    retired: list[tuple[float, SqliteReader]] = []
    follower = asyncio.create_task(_follow(app, reader, retired))
    try:
        yield
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await follower
        for _, reader in retired:
            await reader.close()
        await app[READER].close()


async def _follow(
    app: web.Application, reader: SqliteReader, retired: list[tuple[float, SqliteReader]]
) -> None:
    """Notice another database file at the store's path (a restore, an `os.replace` of a freshly
    built mirror): open connections keep reading the old file, whatever the path now holds.

    A replica (`serve --no-sync`) opens readers on the new file and retires the old ones once
    the requests using them are done; the response cache, bound to the file the readers serve,
    caches nothing in between. A daemon that writes the file keeps it (its writer holds the old
    file and the lock) and says that it needs a restart.
    """
    path, cache = app[CONFIG].storage.path, app[CACHE]
    loop = asyncio.get_running_loop()
    reported: object = cache.bound
    while True:
        await asyncio.sleep(FOLLOW_EVERY)
        while retired and retired[0][0] <= loop.time():
            # A retired reader that fails to close is gone either way; the watch goes on.
            with contextlib.suppress(Exception):
                await retired.pop(0)[1].close()
        identity = file_id(path)
        if identity == cache.bound:
            continue
        if identity is None or app[WRITING].store is not None:
            if identity != reported:
                reported = identity
                log.warning(
                    "store.replaced",
                    path=str(path),
                    serving="the file opened at start",
                    action="no database at the path" if identity is None else "restart to serve it",
                )
            continue
        try:
            old = await reader.reopen()
        except StoreError as exc:
            if identity != reported:
                reported = identity
                log.warning(
                    "store.replaced", path=str(path), action="cannot open it", error=str(exc)
                )
            continue
        cache.bind(identity)
        reported = identity
        retired.append((loop.time() + _RETIRE_AFTER, old))
        log.info("store.reopened", path=str(path))


async def _control_ctx(app: web.Application) -> AsyncIterator[None]:
    """`subregistry sync` and `reapply` act through this daemon while it holds the store."""
    engine = app[WRITING].engine
    assert engine is not None  # set by _store_ctx
    async with control_site(engine, app[CONFIG].storage.path):
        yield


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = app[WRITING].engine
    assert engine is not None
    start_writing(app, engine)
    try:
        yield
    finally:
        # The engine itself is closed by _store_ctx, after the control socket.
        writing = app[WRITING]
        async with writing.lock:
            writing.stopping = True
            await _stop_scheduled(app)


async def _stop_scheduled(app: web.Application) -> None:
    """SQLite: stop passes and scheduler, keep the engine for the contexts closing after."""
    writing = app[WRITING]
    engine = writing.engine
    await stop_writing(app, close=False)
    writing.engine = engine


async def _pg_reader_ctx(app: web.Application) -> AsyncIterator[None]:
    """The readers, and the poller of the change serial that the response cache goes by."""
    storage = app[CONFIG].storage
    assert storage.url is not None
    serial = app[SERIAL]
    reader = await open_reader(storage, connections=storage.pool_size)
    app[READER] = reader

    async def read() -> int:
        value = await reader.change_serial()
        assert value is not None  # a PostgreSQL reader always has one
        return value

    poller = asyncio.create_task(serial.poll(read), name="cache-serial")
    try:
        yield
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await poller
        await reader.close()


def create_app(
    config: Config,
    *,
    metrics: Metrics | None = None,
    sync: bool = True,
    clock: Clock = utcnow,
) -> web.Application:
    """The API (and, with `sync`, the writer and the scheduler) as one aiohttp application."""
    app = web.Application(middlewares=middlewares(), client_max_size=1024)
    app[CONFIG] = config
    app[LIVE] = Live(config)
    app[RELOADING] = asyncio.Lock()
    app[METRICS] = metrics or Metrics()
    app[VIEW] = DEFAULT_VIEW
    app[CLOCK] = clock
    app[WRITING] = Writing()
    app.cleanup_ctx.append(oidc_ctx)
    cache_bytes = int(config.api.cache_mb * 1024 * 1024)
    if config.storage.postgres:
        app[SERIAL] = SerialState(config.storage.refresh)
        app[CACHE] = ResponseCache(None, cache_bytes, source=app[SERIAL])
        if sync:
            app.cleanup_ctx.append(pg_writer_ctx)
        app.cleanup_ctx.append(_pg_reader_ctx)
        app.cleanup_ctx.append(mcp_ctx)
        _add_all_routes(app)
        return app
    app[CACHE] = ResponseCache(config.storage.path, cache_bytes)
    if sync:
        app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_reader_ctx)
    if sync:
        # Cleaned up in reverse: the scheduler lets running passes finish their page before
        # the control socket (which may be waiting on one) closes.
        app.cleanup_ctx.append(_control_ctx)
        app.cleanup_ctx.append(_scheduler_ctx)
    app.cleanup_ctx.append(mcp_ctx)
    _add_all_routes(app)
    return app


def _add_all_routes(app: web.Application) -> None:
    # Every view's routes, whatever the configuration: which view a path is for is decided
    # per request from the configuration in force (a reload may add, move or remove views).
    add_routes(app)
    add_mcp_routes(app)
    add_metadata_routes(app)
    add_ops_routes(app)
    # Last: the page's `/{base}` matches any path, so view routes added after it are unreachable.
    add_page_routes(app)
