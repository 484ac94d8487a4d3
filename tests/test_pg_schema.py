"""The PostgreSQL schema: migrated once however many replicas start together, and a database
ahead of this code refused for writing, untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.pg import HAVE_PSYCOPG, unavailable

if not HAVE_PSYCOPG:
    unavailable("psycopg is not installed (pip install -e '.[test]')")

import psycopg

from sync.errors import SchemaTooNew
from sync.store.postgres.schema import MIGRATIONS, migrate


async def _connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def test_replicas_starting_together_migrate_once(pg_dsn: str) -> None:
    conns = [await _connect(pg_dsn) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        cursor = await conns[0].execute("SELECT name FROM subregistry_migrations ORDER BY name")
        rows = [r[0] for r in await cursor.fetchall()]
    finally:
        for c in conns:
            await c.close()
    assert sorted(len(a) for a in applied) == [0, 0, 0, len(MIGRATIONS)]
    assert rows == [name for name, _ in MIGRATIONS]


async def test_a_newer_schema_is_refused_and_left_alone(pg_dsn: str) -> None:
    conn = await _connect(pg_dsn)
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO subregistry_migrations (name) VALUES ('9999_future')")
        with pytest.raises(SchemaTooNew, match="9999_future"):
            await migrate(conn)
        cursor = await conn.execute("SELECT count(*) FROM subregistry_migrations")
        row = await cursor.fetchone()
    finally:
        await conn.close()
    assert row is not None and row[0] == len(MIGRATIONS) + 1
