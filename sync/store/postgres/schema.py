"""The PostgreSQL schema: the SQLite one's tables and columns, in PostgreSQL's types.

Text columns that the API orders or compares are `COLLATE "C"`, so that order is by code
point, as on SQLite, whatever the database's default collation. Search uses `pg_trgm` GIN
indexes over the folded columns (see `sync.store.text.fold`).

Migrations run under a transaction-scoped advisory lock, so N replicas starting together
migrate once; each is applied in the same transaction as its record. A database holding a
migration this code does not know was upgraded by a newer release: this code refuses to write
it (it may still read it: migrations only ever add).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from sync.errors import SchemaTooNew

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "SchemaTooNew", "migrate", "pending", "unknown"]

# Advisory lock keys (one 64-bit space per database): the migration lock and the leader's.
MIGRATION_LOCK = 0x5375_6252_6567_0001
LEADER_LOCK = 0x5375_6252_6567_0002


MIGRATIONS: Sequence[tuple[str, str]] = (
    (
        "0001_initial",
        """
        CREATE EXTENSION IF NOT EXISTS pg_trgm;

        CREATE TABLE entries (
            id BIGSERIAL PRIMARY KEY,
            upstream TEXT COLLATE "C" NOT NULL,
            name TEXT COLLATE "C" NOT NULL,
            version TEXT COLLATE "C" NOT NULL,
            server TEXT NOT NULL,
            meta TEXT,
            status TEXT NOT NULL,
            status_message TEXT,
            status_changed_at TEXT,
            published_at TEXT,
            upstream_updated_at TEXT,
            description TEXT NOT NULL,
            digest BYTEA NOT NULL,
            stored_at TEXT NOT NULL,
            first_seen_at TEXT NOT NULL,
            seen_sweep BIGINT NOT NULL DEFAULT 0,
            removed_at TEXT,
            missed INTEGER NOT NULL DEFAULT 0,
            UNIQUE (name, upstream, version)
        );
        CREATE INDEX entries_upstream ON entries (upstream) WHERE removed_at IS NULL;

        CREATE TABLE served (
            id BIGSERIAL PRIMARY KEY,
            view TEXT COLLATE "C" NOT NULL,
            name TEXT COLLATE "C" NOT NULL,
            version TEXT COLLATE "C" NOT NULL,
            entry_id BIGINT NOT NULL,
            upstream TEXT NOT NULL,
            status TEXT NOT NULL,
            is_latest INTEGER NOT NULL,
            published_ts DOUBLE PRECISION NOT NULL,
            updated_at TEXT COLLATE "C" NOT NULL,
            description TEXT NOT NULL,
            search_name TEXT NOT NULL DEFAULT '',
            search_description TEXT NOT NULL DEFAULT '',
            form BYTEA NOT NULL,
            meta TEXT NOT NULL,
            UNIQUE (view, name, version)
        );
        CREATE INDEX served_updated ON served (view, updated_at);
        CREATE INDEX served_latest ON served (view, name, version) WHERE is_latest = 1;
        CREATE INDEX served_version ON served (view, version, name);
        CREATE INDEX served_search_name ON served USING gin (search_name gin_trgm_ops);
        CREATE INDEX served_search_description ON served
            USING gin (search_description gin_trgm_ops);

        CREATE TABLE upstreams (
            name TEXT COLLATE "C" PRIMARY KEY,
            checkpoint TEXT,
            last_full_at TEXT,
            last_success_at TEXT,
            last_error TEXT,
            last_error_at TEXT,
            failures INTEGER NOT NULL DEFAULT 0,
            circuit_until TEXT,
            pass_id BIGINT,
            pass_mode TEXT,
            pass_started TEXT,
            pass_since TEXT,
            pass_cursor TEXT,
            pass_sweep BIGINT,
            source_digest TEXT,
            failing_since TEXT,
            pass_last_name TEXT COLLATE "C",
            pass_unordered BOOLEAN NOT NULL DEFAULT FALSE
        );

        CREATE TABLE passes (
            id BIGSERIAL PRIMARY KEY,
            upstream TEXT NOT NULL,
            mode TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            outcome TEXT NOT NULL,
            pages INTEGER NOT NULL DEFAULT 0,
            inserted INTEGER NOT NULL DEFAULT 0,
            updated INTEGER NOT NULL DEFAULT 0,
            unchanged INTEGER NOT NULL DEFAULT 0,
            removed INTEGER NOT NULL DEFAULT 0,
            quarantined INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            checkpoint TEXT,
            resumed_from BIGINT
        );
        CREATE INDEX passes_upstream ON passes (upstream, id);

        CREATE TABLE pass_pending (
            upstream TEXT COLLATE "C" NOT NULL,
            name TEXT COLLATE "C" NOT NULL,
            PRIMARY KEY (upstream, name)
        );

        CREATE TABLE quarantine (
            upstream TEXT COLLATE "C" NOT NULL,
            key TEXT COLLATE "C" NOT NULL,
            reason TEXT NOT NULL,
            raw TEXT NOT NULL,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            PRIMARY KEY (upstream, key)
        );

        CREATE TABLE rule_hits (
            view TEXT NOT NULL,
            rule TEXT NOT NULL,
            hits BIGINT NOT NULL,
            PRIMARY KEY (view, rule)
        );

        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

        -- One row: who leads (a lease with an epoch that every takeover bumps), and the
        -- change serial that every fenced commit bumps (replicas poll it for their caches).
        CREATE TABLE leadership (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            epoch BIGINT NOT NULL DEFAULT 0,
            holder TEXT,
            since TIMESTAMPTZ,
            expires_at TIMESTAMPTZ,
            serial BIGINT NOT NULL DEFAULT 0
        );
        INSERT INTO leadership (id) VALUES (1);
        """,
    ),
    (
        # Ranked search (the SQLite store's `served_rank`): a weighted tsvector per served row,
        # in a table of its own so that `served` keeps the SQLite store's columns (`copy`
        # compares them). Words are runs of letters and digits, lowercased, as SQLite's
        # unicode61 tokenizer reads them (the `simple` parser alone keeps `io.github.x` and
        # `x/postgres-mcp` whole). Weights: A the name after `/`, B title and package
        # identifiers, C description, D the namespace. A trigger keeps it in step with
        # `served` in the writer's own transaction (COPY fires it too); tombstones are not
        # indexed. Upstream JSON that cannot be read indexes as empty, never fails a write.
        "0002_served_rank",
        """
        CREATE FUNCTION subregistry_words(t text) RETURNS tsvector
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS
        $$ SELECT to_tsvector('simple', regexp_replace(lower(t), '[^[:alnum:]]+', ' ', 'g')) $$;

        CREATE FUNCTION subregistry_rank_doc(name text, description text, server text)
        RETURNS tsvector LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
        DECLARE
            doc jsonb;
            title text := '';
            packages text := '';
        BEGIN
            BEGIN
                doc := server::jsonb;
                IF jsonb_typeof(doc) = 'object' THEN
                    title := coalesce(doc ->> 'title', '');
                    IF jsonb_typeof(doc -> 'packages') = 'array' THEN
                        SELECT coalesce(string_agg(p ->> 'identifier', ' '), '') INTO packages
                        FROM jsonb_array_elements(doc -> 'packages') AS p
                        WHERE jsonb_typeof(p) = 'object';
                    END IF;
                END IF;
            EXCEPTION WHEN others THEN
                title := '';
                packages := '';
            END;
            RETURN setweight(subregistry_words(split_part(name, '/', 2)), 'A')
                || setweight(subregistry_words(split_part(name, '/', 1)), 'D')
                || setweight(subregistry_words(title), 'B')
                || setweight(subregistry_words(packages), 'B')
                || setweight(subregistry_words(coalesce(description, '')), 'C');
        END $$;

        CREATE TABLE served_rank (id BIGINT PRIMARY KEY, doc tsvector NOT NULL);
        CREATE INDEX served_rank_doc ON served_rank USING gin (doc);

        CREATE FUNCTION served_rank_upkeep() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                DELETE FROM served_rank WHERE id = OLD.id;
                RETURN NULL;
            END IF;
            IF NEW.status = 'deleted' THEN
                DELETE FROM served_rank WHERE id = NEW.id;
                RETURN NULL;
            END IF;
            INSERT INTO served_rank (id, doc)
            SELECT NEW.id, subregistry_rank_doc(NEW.name, NEW.description, e.server)
            FROM entries e WHERE e.id = NEW.entry_id
            ON CONFLICT (id) DO UPDATE SET doc = excluded.doc;
            RETURN NULL;
        END $$;

        INSERT INTO served_rank (id, doc)
        SELECT s.id, subregistry_rank_doc(s.name, s.description, e.server)
        FROM served s JOIN entries e ON e.id = s.entry_id WHERE s.status <> 'deleted';

        CREATE TRIGGER served_rank_upkeep AFTER INSERT OR UPDATE OR DELETE ON served
        FOR EACH ROW EXECUTE FUNCTION served_rank_upkeep();
        """,
    ),
)


async def _applied(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> set[str]:
    cursor = await conn.execute("SELECT name FROM subregistry_migrations")
    return {str(row[0]) for row in await cursor.fetchall()}


def unknown(applied: set[str]) -> list[str]:
    """Migrations in the database that this code does not know (a newer release ran)."""
    known = {name for name, _ in MIGRATIONS}
    return sorted(applied - known)


def pending(applied: set[str]) -> list[str]:
    return [name for name, _ in MIGRATIONS if name not in applied]


async def migrate(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> list[str]:
    """Apply pending migrations once, whoever else starts at the same time; return their names.

    Raises SchemaTooNew when the database is ahead of this code (nothing is changed then).
    `conn` must be in autocommit mode; the pending migrations commit together, or not at all.
    """
    applied_now: list[str] = []
    async with conn.transaction():
        # Every replica waits here for the first one; the others then find nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS subregistry_migrations "
            "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = await _applied(conn)
        newer = unknown(done)
        if newer:
            raise SchemaTooNew(
                f"the database schema is newer than this release (it has {', '.join(newer)}): "
                "upgrade subregistry to write it"
            )
        for name, script in MIGRATIONS:
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(script.encode())
                await conn.execute("INSERT INTO subregistry_migrations (name) VALUES (%s)", (name,))
            applied_now.append(name)
    return applied_now
