"""Rendered read responses, kept while the store is unchanged.

A mirror serves the same pages to many clients between syncs. Where the store says whether its
content changed is the cache's state source, one per backend:

- SQLite: the store changes only when the writer commits, and every commit writes the WAL
  file: the identity, size and mtime of the database and WAL files (two stat calls, no query)
  tell whether what is cached is still the store's content. Identity matters as much as
  content: a database replaced under the daemon (`os.replace` of another mirror, a restore)
  may well have the same size and mtime. The cache is bound to the database file the readers
  have open, and caches nothing while the path holds another file (or none).
- PostgreSQL: every fenced commit of the leader bumps `leadership.serial`. Each replica reads
  it every `[storage] refresh` seconds on a connection of its own (`SerialState.poll`); the
  state is the serial, and a new one empties the cache. The bound: a response is served from
  the cache only while the last successful check started at most `refresh` (plus half of it for
  the check itself and timer slack) ago, and the content was current then; so a replica serves
  no cached response more than 1.5 x `refresh` behind the database, and a commit reaches the
  cached responses of every replica within `refresh` plus one read of the serial. A check that
  fails or does not come (database unreachable, a slow query) makes the state unknown: nothing
  is served from the cache or cached until a check succeeds again; reads go to the database.

Bounded in bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["CachedBody", "FileId", "ResponseCache", "SerialState", "State", "file_id"]

log = structlog.get_logger("sync.serve.cache")

_BIGGEST = 1 << 20  # one response over this is not worth a slot

FileId = tuple[int, int]  # (st_dev, st_ino): which file, whatever its content
State = tuple[int, ...]  # identity, mtime and size of the database and its WAL


def file_id(path: Path) -> FileId | None:
    """The identity of the file at `path` now, or None when there is none (or it cannot be
    seen: a permission or a stale NFS handle is no identity to trust)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


@dataclass(slots=True)
class CachedBody:
    body: bytes
    etag: str
    gzipped: bytes | None = None

    def compressed(self) -> bytes:
        if self.gzipped is None:
            self.gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
        return self.gzipped


class SerialState:
    """A shared store's change serial, as this replica last read it (see the module text)."""

    def __init__(self, refresh: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.refresh = refresh
        self._clock = clock
        self._serial: int | None = None
        self._checked = float("-inf")  # when the last successful check started
        self._failing = False

    def __call__(self) -> State | None:
        if self._serial is None or self._clock() - self._checked > self.refresh * 1.5:
            return None
        return (self._serial,)

    async def check(self, read: Callable[[], Awaitable[int]]) -> None:
        """Read the serial once; a failure (or a read slower than refresh/2) makes it unknown."""
        started = self._clock()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the read completes, and the poller never stops.
            async with asyncio.timeout(self.refresh / 2):
                serial = await read()
        except Exception as exc:
            self._serial = None
            if not self._failing:
                self._failing = True
                log.warning("cache.serial_unknown", error=str(exc) or type(exc).__name__)
            return
        if self._failing:
            self._failing = False
            log.info("cache.serial_known", serial=serial)
        self._serial, self._checked = serial, started

    async def poll(self, read: Callable[[], Awaitable[int]]) -> None:
        """Check every `refresh` seconds, for ever (cancel it to stop)."""
        while True:
            started = self._clock()
            await self.check(read)
            await asyncio.sleep(max(0.0, self.refresh - (self._clock() - started)))


class ResponseCache:
    def __init__(
        self,
        store: Path | None,
        max_bytes: int,
        *,
        source: Callable[[], State | None] | None = None,
    ) -> None:
        """`store`: the SQLite file whose stats are the state; or `source` tells the state."""
        self._files = (store, Path(f"{store}-wal")) if store is not None else ()
        self._source = source
        self._max = max_bytes
        self._items: OrderedDict[str, CachedBody] = OrderedDict()
        self._size = 0
        self._version: tuple[int, ...] = ()
        self._bound = file_id(store) if store is not None else None
        self._foreign = False

    @property
    def bound(self) -> FileId | None:
        """The database file whose responses this cache holds."""
        return self._bound

    def bind(self, identity: FileId | None) -> None:
        """Readers now serve the file `identity` (taken before they opened it: if another file
        took the path in between, the two differ and nothing is cached)."""
        self._bound = identity
        self._clear(())

    def _clear(self, version: tuple[int, ...]) -> None:
        self._items.clear()
        self._size = 0
        self._version = version
        # No database at the path reads as (0, 0): never a bound identity.
        self._foreign = bool(self._files) and version[:2] != self._bound

    def state(self) -> State | None:
        """The store's state now; None when it cannot be told (nothing is cached then)."""
        if self._source is not None:
            return self._source()
        version: list[int] = []
        for path in self._files:
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                version += [0, 0, 0, 0]
            except OSError:
                return None
            else:
                version += [stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size]
        return tuple(version)

    def get(self, key: str, state: State | None = None) -> CachedBody | None:
        """The cached response for `key` in `state` (taken now when not given)."""
        state = self.state() if state is None else state
        if state is None:
            return None
        if state != self._version:
            self._clear(state)
            return None
        if self._foreign:
            return None
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, body: bytes, state: State | None = None) -> CachedBody:
        """Keep `body` for `key`. With the `state` its request was read in, nothing is kept
        when the store has changed since: a slow reader of the old content must not file it
        under the new state (it would be served until the next commit)."""
        item = CachedBody(body, '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"')
        stale = state is not None and state != self._version
        if stale or self._foreign or self._max <= 0 or len(body) > min(_BIGGEST, self._max):
            return item
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old.body)
        self._items[key] = item
        self._size += len(body)
        while self._size > self._max:
            _, evicted = self._items.popitem(last=False)
            self._size -= len(evicted.body)
        return item
