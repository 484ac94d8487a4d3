"""`subregistry copy --to`: a SQLite mirror moved whole into an empty PostgreSQL database, by a
real process: every row kept, served byte for byte the same, continued from where it stood;
a target holding a mirror, led by a replica, or named by a bad URL refused; a copy killed half
way leaving nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.pg import HAVE_PSYCOPG, unavailable

if not HAVE_PSYCOPG:
    unavailable("psycopg is not installed (pip install -e '.[test]')")

import aiosqlite
import psycopg

from sync.app import create_app
from sync.config import Config, config_from_mapping
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.store.postgres.copy import TABLES
from sync.store.postgres.schema import LEADER_LOCK, migrate
from sync.store.sqlite.writer import SqliteStore
from tests.cli_helpers import run, spawn, write_config
from tests.fake_upstream import FakeRegistry
from tests.helpers import DEPRECATED, MULTI, no_sleep, serving

WAIT = 60.0  # for a process to reach a state; never a measure of speed


def _config(path: Path, url: str, *, dsn: str | None = None) -> Config:
    storage: dict[str, Any] = {"path": str(path)}
    if dsn is not None:
        storage["url"] = dsn
    return config_from_mapping(
        {
            "storage": storage,
            "api": {"cache_mb": 0},
            "upstreams": [{"name": "official", "url": url, "page_delay": 0, "retries": 0}],
        }
    )


async def _build(path: Path, fake: FakeRegistry, url: str, *, unfinished: bool) -> None:
    """A mirror through the real engine: a deleted and a deprecated version, one quarantined
    entry, and (`unfinished`) a later full pass that failed on its third page."""
    versions = sorted(v for n, v in fake.rows if n == MULTI)
    fake.set_status(MULTI, versions[0], "deleted")
    fake.set_status(*DEPRECATED, "deprecated", "superseded")
    fake.add_raw({"name": "bad name", "version": "1", "description": "poison"})
    fake.publish({"name": "io.github.nul/server", "version": "1.0.0", "description": "a\0b"})
    store = await SqliteStore.open(path)
    try:
        engine = Engine(_config(path, url), store, Metrics(), sleep=no_sleep, backoff=(0.0, 0.0))
        await engine.startup()
        try:
            assert (await engine.run("official")).outcome == "ok"
            if unfinished:
                start = len(fake.requests)
                fake.after_page = lambda n: fake.fail(500, times=100) if n == start + 2 else None
                result = await engine.run("official", full=True)
                fake.after_page, fake.faults = None, []
                assert result.outcome != "ok"
        finally:
            await engine.close()
    finally:
        await store.close()


@pytest.fixture
async def fake(catalogue: list[dict[str, Any]]) -> FakeRegistry:
    return FakeRegistry(json.loads(json.dumps(catalogue)))


@pytest.fixture
async def fake_url(fake: FakeRegistry) -> AsyncIterator[str]:
    async with serving(fake.app()) as url:
        yield url


def _pg_config_file(tmp_path: Path, url: str, dsn: str) -> Path:
    """The copied mirror's configuration: the SQLite one's, pointed at the database."""
    path = write_config(tmp_path, url)
    path.write_text(path.read_text().replace("[storage]\n", f'[storage]\nurl = "{dsn}"\n', 1))
    return path


async def _copy(tmp_path: Path, url: str, dsn: str) -> tuple[int, str, str]:
    return await run("--config", write_config(tmp_path, url), "copy", "--to", dsn)


def _text(value: Any) -> Any:
    """What PostgreSQL holds for a SQLite value: text without NUL (the stores' rule)."""
    return value.replace("\0", "\ufffd") if isinstance(value, str) else value


def _normal(value: Any) -> Any:
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, bool):
        return int(value)
    return value


async def _sqlite_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    found = {}
    async with aiosqlite.connect(path) as db:
        db.row_factory = aiosqlite.Row
        for table, key in TABLES:
            async with db.execute(f"SELECT * FROM {table} ORDER BY {key}") as cursor:
                found[table] = [
                    {k: _text(v) for k, v in dict(r).items()} for r in await cursor.fetchall()
                ]
    return found


async def _pg_rows(dsn: str) -> dict[str, list[dict[str, Any]]]:
    found = {}
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for table, key in TABLES:
            cursor = await conn.execute(f"SELECT * FROM {table} ORDER BY {key}")
            names = [d.name for d in cursor.description or ()]
            found[table] = [
                {n: _normal(v) for n, v in zip(names, row, strict=True)}
                for row in await cursor.fetchall()
            ]
    return found


async def _scalar(dsn: str, query: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(query)).fetchone()
    return None if row is None else row[0]


async def _until(dsn: str, query: str) -> None:
    """Wait (bounded) until `query` answers true."""
    deadline = time.monotonic() + WAIT
    while not await _scalar(dsn, query):
        assert time.monotonic() < deadline, f"never true: {query}"
        await asyncio.sleep(0.05)


async def _locking(dsn: str, table: str) -> psycopg.AsyncConnection[Any]:
    """A transaction holding `table` against writes (reads go on), on the migrated, empty
    database (the copy accepts one): a copy started next stops when it reaches `table`."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
    blocker = await psycopg.AsyncConnection.connect(dsn)
    await blocker.execute(f"LOCK TABLE {table} IN SHARE MODE")
    return blocker


OURS = "application_name LIKE 'subregistry %' AND datname = current_database()"


class TestCopy:
    async def test_every_row_of_every_table_arrives_with_its_id(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str, pg_dsn: str
    ) -> None:
        """Checkpoints with an unfinished pass's resume point, pending names, quarantine,
        pass history, rule hits and settings: all of it, and sequences past the copied ids."""
        path = tmp_path / "mirror.db"
        await _build(path, fake, fake_url, unfinished=True)
        code, out, err = await _copy(tmp_path, fake_url, pg_dsn)
        assert code == 0 and "subregistry:" not in err, err
        source, target = await _sqlite_rows(path), await _pg_rows(pg_dsn)
        assert source == target
        upstream = source["upstreams"][0]
        assert upstream["pass_cursor"] and upstream["pass_mode"] == "full"
        assert source["quarantine"] and source["passes"][-1]["outcome"] != "ok"
        assert len(source["entries"]) == len(fake.rows) - 1
        [nul] = [r for r in source["entries"] if r["name"] == "io.github.nul/server"]
        assert nul["description"] == "a\ufffdb" and "a\\u0000b" in nul["server"]
        assert out.splitlines() == [out.strip()]
        assert f"{len(source['entries'])} entries, {len(source['served'])} served rows" in out
        for table in ("entries", "served", "passes"):
            top = max(r["id"] for r in source[table])
            following = f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))"
            assert await _scalar(pg_dsn, following) == top + 1

    async def test_a_target_holding_a_mirror_is_refused_untouched(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str, pg_dsn: str
    ) -> None:
        await _build(tmp_path / "mirror.db", fake, fake_url, unfinished=False)
        assert (await _copy(tmp_path, fake_url, pg_dsn))[0] == 0
        before = await _pg_rows(pg_dsn)
        epoch = await _scalar(pg_dsn, "SELECT epoch FROM leadership")
        code, out, err = await _copy(tmp_path, fake_url, pg_dsn)
        assert code == 1 and out == ""
        assert err.startswith("subregistry: ") and err.count("\n") == 1
        assert "already holds a mirror" in err
        assert await _pg_rows(pg_dsn) == before
        assert await _scalar(pg_dsn, "SELECT epoch FROM leadership") == epoch

    async def test_a_database_led_by_a_replica_is_refused(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str, pg_dsn: str
    ) -> None:
        await _build(tmp_path / "mirror.db", fake, fake_url, unfinished=False)
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as replica:
            await replica.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
            code, out, err = await _copy(tmp_path, fake_url, pg_dsn)
        assert code == 1 and out == "" and err.count("\n") == 1
        assert err.startswith("subregistry: cannot copy into ") and "leader" in err
        assert all(not rows for rows in (await _pg_rows(pg_dsn)).values())

    @pytest.mark.parametrize(
        ("url", "code", "says"),
        [
            ("mysql://user@host/db", 2, "--to: must be a PostgreSQL URL"),
            ("postgresql://user@host:port/db", 2, "--to: must be a PostgreSQL URL"),
            ("postgresql://user@127.0.0.1:1/db", 1, "postgresql://user@127.0.0.1:1/db: "),
        ],
    )
    async def test_a_bad_url_is_one_line(
        self, tmp_path: Path, url: str, code: int, says: str
    ) -> None:
        (tmp_path / "mirror.db").touch()
        got, out, err = await _copy(tmp_path, "http://127.0.0.1:9", url)
        assert (got, out) == (code, "")
        assert err.startswith(f"subregistry: {says}") and err.count("\n") == 1, err

    async def test_no_mirror_file_is_one_line(self, tmp_path: Path, pg_dsn: str) -> None:
        code, _, err = await _copy(tmp_path, "http://127.0.0.1:9", pg_dsn)
        path = tmp_path / "mirror.db"
        assert code == 1 and err == f"subregistry: no SQLite mirror at {path} ([storage] path)\n"
        path.write_bytes(b"")  # SQLite reads an empty file as an empty database
        code, _, err = await _copy(tmp_path, "http://127.0.0.1:9", pg_dsn)
        assert code == 1
        assert err == f"subregistry: {path} has no table entries: it is not a subregistry mirror\n"
        assert all(not rows for rows in (await _pg_rows(pg_dsn)).values())

    async def test_a_killed_copy_leaves_the_target_empty(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str, pg_dsn: str
    ) -> None:
        """Killed with every table but the last already streamed into its transaction."""
        await _build(tmp_path / "mirror.db", fake, fake_url, unfinished=True)
        config = write_config(tmp_path, fake_url)
        blocker = await _locking(pg_dsn, "settings")  # the last table the copy writes
        process = None
        try:
            process = await spawn("--config", config, "copy", "--to", pg_dsn)
            await _until(
                pg_dsn,
                f"SELECT count(*) > 0 FROM pg_stat_activity WHERE {OURS} "
                "AND wait_event_type = 'Lock'",
            )
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
        finally:
            await blocker.rollback()
            await blocker.close()
        await _until(pg_dsn, f"SELECT count(*) = 0 FROM pg_stat_activity WHERE {OURS}")
        assert all(not rows for rows in (await _pg_rows(pg_dsn)).values())
        # Nothing stays claimed either: the next copy goes through.
        assert (await _copy(tmp_path, fake_url, pg_dsn))[0] == 0

    async def test_the_source_is_one_snapshot_while_a_daemon_writes_it(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str, pg_dsn: str
    ) -> None:
        path = tmp_path / "mirror.db"
        await _build(path, fake, fake_url, unfinished=False)
        expected = await _sqlite_rows(path)
        writer = await SqliteStore.open(path)  # the daemon's lock stays held throughout
        blocker = await _locking(pg_dsn, "entries")  # the first table the copy writes
        try:
            process = await spawn(
                "--config", write_config(tmp_path, fake_url), "copy", "--to", pg_dsn
            )
            await _until(
                pg_dsn,
                f"SELECT count(*) > 0 FROM pg_stat_activity WHERE {OURS} "
                "AND wait_event_type = 'Lock'",
            )
            async with writer.transaction():
                await writer.set_setting("written", "while copying")
                await writer.record_skip("official", mode="incremental", reason="x", now="now")
            await blocker.rollback()
            _, err = await process.communicate()
            assert process.returncode == 0, err
        finally:
            await blocker.close()
            await writer.close()
        assert await _pg_rows(pg_dsn) == expected
        assert expected != await _sqlite_rows(path)


async def _walk(client: TestClient[Any, Any], query: str) -> list[tuple[int, str, bytes]]:
    """Every page of a list, by its cursors: (status, content type, body) each."""
    answers = []
    cursor = None
    while True:
        suffix = f"&cursor={quote(cursor, safe='')}" if cursor else ""
        response = await client.get(f"/v0.1/servers?{query}{suffix}")
        body = await response.read()
        answers.append((response.status, response.content_type, body))
        cursor = json.loads(body).get("metadata", {}).get("nextCursor") if response.ok else None
        if cursor is None:
            return answers


async def _answers(client: TestClient[Any, Any], paths: list[str]) -> list[Any]:
    found: list[Any] = []
    for query in paths:
        if query.startswith("?"):
            found += await _walk(client, query[1:])
        else:
            response = await client.get(query)
            found.append((query, response.status, response.content_type, await response.read()))
    return found


class TestServedTheSame:
    async def test_every_api_answer_is_byte_for_byte_the_sqlite_one(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str, pg_dsn: str
    ) -> None:
        path = tmp_path / "mirror.db"
        await _build(path, fake, fake_url, unfinished=False)
        assert (await _copy(tmp_path, fake_url, pg_dsn))[0] == 0
        names = sorted({n for n, _ in fake.rows})
        stamps = sorted(r["updated_at"] for r in (await _sqlite_rows(path))["served"])
        middle = stamps[len(stamps) // 2]
        queries = [
            "?limit=100",
            "?limit=7&include_deleted=true",
            "?limit=50&version=latest",
            "?limit=100&search=mcp",
            "?limit=30&search=GitHub",
            "?limit=100&search=zzz-nothing",
            f"?limit=100&updated_since={quote(middle)}",
            f"?limit=100&updated_since={quote(stamps[-1])}",
            "?limit=0",
            "?cursor=not-a-cursor",
        ]
        for name in (MULTI, DEPRECATED[0], names[0], names[-1]):
            encoded = quote(name, safe="")
            queries += [
                f"/v0.1/servers/{encoded}/versions",
                f"/v0.1/servers/{encoded}/versions/latest",
                f"/v0.1/servers/{encoded}/versions/latest?include_deleted=true",
            ]
        queries.append(f"/v0.1/servers/{quote(DEPRECATED[0], safe='')}/versions/{DEPRECATED[1]}")
        queries.append("/v0.1/servers/io.github.nobody%2Fnothing/versions")
        found = []
        for config in (_config(path, fake_url), _config(path, fake_url, dsn=pg_dsn)):
            async with TestClient(TestServer(create_app(config, sync=False))) as client:
                found.append(await _answers(client, queries))
        sqlite, postgres = found
        assert len(sqlite) > 30
        assert [a[:2] for a in postgres] == [a[:2] for a in sqlite]
        assert postgres == sqlite


class TestContinues:
    async def test_an_incremental_pass_continues_from_the_copied_checkpoint(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str, pg_dsn: str
    ) -> None:
        await _build(tmp_path / "mirror.db", fake, fake_url, unfinished=False)
        assert (await _copy(tmp_path, fake_url, pg_dsn))[0] == 0
        checkpoint = await _scalar(pg_dsn, "SELECT checkpoint FROM upstreams")
        key = sorted(fake.rows)[100]
        fake.edit(*key, description="changed after the copy")
        fake.requests.clear()
        config = _pg_config_file(tmp_path, fake_url, pg_dsn)
        code, out, err = await run("--config", config, "sync")
        assert code == 0, err
        assert [r.get("updated_since") for r in fake.requests] == [checkpoint]
        assert "incremental" in out and "1 updated" in out and "0 inserted" in out
        server = await _scalar(
            pg_dsn, f"SELECT server FROM entries WHERE name = '{key[0]}' AND version = '{key[1]}'"
        )
        assert "changed after the copy" in server

    async def test_an_unfinished_pass_resumes_from_its_copied_cursor(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str, pg_dsn: str
    ) -> None:
        await _build(tmp_path / "mirror.db", fake, fake_url, unfinished=True)
        assert (await _copy(tmp_path, fake_url, pg_dsn))[0] == 0
        cursor = await _scalar(pg_dsn, "SELECT pass_cursor FROM upstreams")
        fake.requests.clear()
        config = _pg_config_file(tmp_path, fake_url, pg_dsn)
        code, _, err = await run("--config", config, "sync")
        assert code == 0, err
        assert fake.requests[0].get("cursor") == cursor
        assert "updated_since" not in fake.requests[0]
        assert await _scalar(pg_dsn, "SELECT count(*) FROM entries") == len(fake.rows) - 1


class TestOneShotWriters:
    async def test_sync_and_reapply_refuse_while_a_replica_leads(
        self, tmp_path: Path, fake: FakeRegistry, fake_url: str, pg_dsn: str
    ) -> None:
        """`sync` and `reapply` on a shared database lead it for their duration, like `copy`:
        while a replica leads they write nothing and say so in one line."""
        await _build(tmp_path / "mirror.db", fake, fake_url, unfinished=False)
        assert (await _copy(tmp_path, fake_url, pg_dsn))[0] == 0
        before = await _pg_rows(pg_dsn)
        config = _pg_config_file(tmp_path, fake_url, pg_dsn)
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as replica:
            # A live leader: the lock, and a lease that runs (one that ran out would be a
            # stalled holder, which a newcomer ends).
            await replica.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
            await replica.execute(
                "UPDATE leadership SET epoch = epoch + 1, holder = 'replica/1/0', since = now(), "
                "expires_at = now() + interval '1 hour' WHERE id = 1"
            )
            fake.requests.clear()
            for command in ("sync", "reapply"):
                code, out, err = await run("--config", config, command)
                assert code == 1 and out == "", err
                [line] = [x for x in err.splitlines() if x.startswith("subregistry: ")]
                assert "leads this database" in line, err
        assert fake.requests == []
        assert await _pg_rows(pg_dsn) == before
