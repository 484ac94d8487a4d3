"""The writer of a PostgreSQL store: one connection, one transaction at a time, fenced.

Only the elected leader writes (see `sync.store.postgres.leader`, which calls `lead` and
`unlead`). Every transaction ends with the fence: inside the transaction, just before COMMIT,
it bumps the change serial of the `leadership` row on condition that this process still holds
the epoch it was elected with and that its lease has not run out. A deposed or stalled writer
finds no row to update, rolls back, and raises NotLeader: it can never commit again. The row
lock the fence takes also orders a takeover after any commit in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq

from sync.errors import NotLeader, StoreError
from sync.store.postgres.connect import connect, holder_id, redact, short
from sync.store.postgres.entries import EntryWrites
from sync.store.postgres.passes import PassWrites
from sync.store.postgres.schema import migrate, pending, unknown
from sync.store.postgres.served import ServedWrites
from sync.store.stamps import Stamps

if TYPE_CHECKING:
    from sync.config import StorageConfig

__all__ = ["FENCE", "PostgresStore"]

FENCE = (
    "UPDATE leadership SET serial = serial + 1 "
    "WHERE id = 1 AND epoch = %s AND holder = %s AND expires_at > clock_timestamp()"
)


class PostgresStore(PassWrites, EntryWrites, ServedWrites):
    """Owns the writer connection. Create with `await PostgresStore.open(storage)`."""

    def __init__(
        self, conn: psycopg.AsyncConnection[tuple[Any, ...]], dsn: str, lease: float
    ) -> None:
        self._conn = conn
        self._dsn = dsn
        self._lease = lease
        self.holder = holder_id()
        self._tx = asyncio.Lock()
        self._leading: tuple[int, str] | None = None
        self._stamps = Stamps()

    @classmethod
    async def open(cls, storage: StorageConfig) -> PostgresStore:
        """Connect and migrate the schema (SchemaTooNew propagates: the caller decides
        whether to serve reads anyway); the store does not lead until `lead`."""
        assert storage.url is not None
        conn = await cls._connect(storage.url, storage.lease)
        store = cls(conn, storage.url, storage.lease)
        try:
            await migrate(conn)
        except psycopg.Error as exc:
            await conn.close()
            raise StoreError(f"cannot prepare {store.where}: {short(exc)}") from None
        except BaseException:
            await conn.close()
            raise
        return store

    @staticmethod
    async def _connect(dsn: str, lease: float) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        conn = await connect(dsn, holder_id())
        try:
            # A stalled writer must not hold row locks (the fence's above all) for longer
            # than a lease: the server ends its session, and its transaction with it.
            await conn.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (f"{int(lease * 1000)}ms",),
            )
        except psycopg.Error as exc:
            await conn.close()
            raise StoreError(f"cannot prepare {redact(dsn)}: {short(exc)}") from None
        return conn

    @property
    def where(self) -> str:
        return redact(self._dsn)

    @property
    def leading(self) -> bool:
        return self._leading is not None

    async def close(self) -> None:
        self._leading = None
        await self._conn.close()

    async def lead(self, epoch: int, holder: str) -> None:
        """Write from now on as the leader elected with `epoch`; stamps continue strictly
        after every stamp stored by any earlier leader, whatever its clock said."""
        async with self._tx:
            conn = await self._connection()
            try:
                cursor = await conn.execute("SELECT max(updated_at) FROM served")
                row = await cursor.fetchone()
            except psycopg.Error as exc:
                raise StoreError(f"{self.where}: {short(exc)}") from None
            if row and row[0]:
                self._stamps.after(row[0])
            self._leading = (epoch, holder)

    def unlead(self) -> None:
        """Stop writing: every transaction begun from now on raises NotLeader."""
        self._leading = None

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        """The writer connection, opened again if the last one was lost."""
        if self._conn.broken or self._conn.closed:
            self._conn = await self._connect(self._dsn, self._lease)
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One atomic, fenced unit of work; a failed or cancelled body, or a lost leadership,
        leaves no trace. psycopg's errors leave as StoreError, the fence's as NotLeader."""
        async with self._tx:
            leading = self._leading
            if leading is None:
                raise NotLeader(f"{self.where}: this process does not lead; nothing was written")
            conn = await self._connection()
            try:
                await conn.execute("BEGIN")
            except psycopg.Error as exc:
                problem = f"{self.where}: cannot start a transaction: {short(exc)}"
                raise StoreError(problem) from None
            try:
                yield
                fenced = await conn.execute(FENCE, leading)
                if fenced.rowcount != 1:
                    self.unlead()
                    raise NotLeader(
                        f"{self.where}: leadership lost (epoch {leading[0]}): not committed"
                    )
                # Once sent, a COMMIT is waited for even if we are cancelled meanwhile.
                await asyncio.shield(conn.execute("COMMIT"))
            except BaseException as exc:
                await self._rollback(conn)
                if isinstance(exc, psycopg.Error):
                    raise StoreError(f"{self.where}: {short(exc)}") from None
                raise

    async def _rollback(self, conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
        """Undo whatever is open; a connection left in an unknown state is dropped (the next
        transaction opens a fresh one) rather than trusted."""
        if conn.closed:
            return
        if conn.info.transaction_status == pq.TransactionStatus.IDLE:
            return
        try:
            await asyncio.shield(conn.execute("ROLLBACK"))
        except (psycopg.Error, asyncio.CancelledError):
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    def stamp(self) -> str:
        """A mirror timestamp strictly later than every one handed out or stored before."""
        return self._stamps.next()

    async def integrity_check(self) -> str:
        """ "ok" when the database answers and holds every migration this code knows."""
        async with self._tx:
            try:
                conn = await self._connection()
                cursor = await conn.execute("SELECT name FROM subregistry_migrations")
                applied = {str(row[0]) for row in await cursor.fetchall()}
            except psycopg.Error as exc:
                return f"no answer: {short(exc)}"
        missing, newer = pending(applied), unknown(applied)
        if missing:
            return f"schema incomplete: missing {', '.join(missing)}"
        if newer:
            return f"schema newer than this release: {', '.join(newer)}"
        return "ok"
