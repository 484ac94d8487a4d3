"""Named migrations, each applied in the same transaction as its record."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import aiosqlite

from sync.store.text import fold

__all__ = [
    "MIGRATIONS",
    "RANK_TRIGGERS",
    "SEARCH_TRIGGERS",
    "SEARCH_TRIGGER_NAMES",
    "migrate",
    "statements",
]


# Keep the full-text index in step with `served`. A first full sync runs without them and
# builds the index once at its end (a bulk rebuild costs a third of row-by-row upkeep). The
# index holds the folded columns, so a trigram of the term folded the same way finds them.
SEARCH_TRIGGERS = """
CREATE TRIGGER served_search_insert AFTER INSERT ON served BEGIN
    INSERT INTO served_search (rowid, search_name, search_description)
    VALUES (new.id, new.search_name, new.search_description);
END;
CREATE TRIGGER served_search_update AFTER UPDATE OF search_name, search_description ON served
WHEN old.search_name IS NOT new.search_name
    OR old.search_description IS NOT new.search_description BEGIN
    INSERT INTO served_search (served_search, rowid, search_name, search_description)
    VALUES ('delete', old.id, old.search_name, old.search_description);
    INSERT INTO served_search (rowid, search_name, search_description)
    VALUES (new.id, new.search_name, new.search_description);
END;
CREATE TRIGGER served_search_delete AFTER DELETE ON served BEGIN
    INSERT INTO served_search (served_search, rowid, search_name, search_description)
    VALUES ('delete', old.id, old.search_name, old.search_description);
END;
"""
SEARCH_TRIGGER_NAMES = ("served_search_insert", "served_search_update", "served_search_delete")

# The triggers of 0003, over the raw columns: a migration's text never changes once shipped.
_SEARCH_TRIGGERS_0003 = """
CREATE TRIGGER served_search_insert AFTER INSERT ON served BEGIN
    INSERT INTO served_search (rowid, name, description)
    VALUES (new.id, new.name, new.description);
END;
CREATE TRIGGER served_search_update AFTER UPDATE OF name, description ON served
WHEN old.name IS NOT new.name OR old.description IS NOT new.description BEGIN
    INSERT INTO served_search (served_search, rowid, name, description)
    VALUES ('delete', old.id, old.name, old.description);
    INSERT INTO served_search (rowid, name, description)
    VALUES (new.id, new.name, new.description);
END;
CREATE TRIGGER served_search_delete AFTER DELETE ON served BEGIN
    INSERT INTO served_search (served_search, rowid, name, description)
    VALUES ('delete', old.id, old.name, old.description);
END;
"""


# The ranked-search index's fields of a served row `{r}` and its entry `e`: the name's part
# after `/` (what people call a server) apart from its namespace, the title and the package
# identifiers (from the upstream JSON, guarded so that odd JSON indexes as empty, never fails
# a write), and the description.
def _rank_fields(r: str) -> str:
    server = "CASE WHEN json_valid(e.server) THEN e.server ELSE '{}' END"
    return (
        f"{r}.id, substr({r}.name, instr({r}.name, '/') + 1), "
        f"substr({r}.name, 1, max(instr({r}.name, '/') - 1, 0)), "
        f"coalesce(json_extract({server}, '$.title'), ''), {r}.description, "
        "coalesce((SELECT group_concat(json_extract(p.value, '$.identifier'), ' ') "
        f"FROM json_each({server}, '$.packages') AS p WHERE p.type = 'object'), '')"
    )


_RANK_COLUMNS = "rowid, name, namespace, title, description, packages"
# Kept in step with `served` in the writer's own transaction, always (a first full sync
# included: word tokens cost little next to the trigram index). Tombstones are not indexed.
RANK_TRIGGERS = f"""
CREATE TRIGGER served_rank_insert AFTER INSERT ON served WHEN new.status != 'deleted' BEGIN
    INSERT INTO served_rank ({_RANK_COLUMNS})
    SELECT {_rank_fields("new")} FROM entries e WHERE e.id = new.entry_id;
END;
CREATE TRIGGER served_rank_update AFTER UPDATE ON served BEGIN
    DELETE FROM served_rank WHERE rowid = old.id;
    INSERT INTO served_rank ({_RANK_COLUMNS})
    SELECT {_rank_fields("new")} FROM entries e
    WHERE e.id = new.entry_id AND new.status != 'deleted';
END;
CREATE TRIGGER served_rank_delete AFTER DELETE ON served BEGIN
    DELETE FROM served_rank WHERE rowid = old.id;
END;
"""

MIGRATIONS: Sequence[tuple[str, str]] = (
    (
        "0001_initial",
        """
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY,
            upstream TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            server TEXT NOT NULL,
            meta TEXT,
            status TEXT NOT NULL,
            status_message TEXT,
            status_changed_at TEXT,
            published_at TEXT,
            upstream_updated_at TEXT,
            description TEXT NOT NULL,
            digest BLOB NOT NULL,
            stored_at TEXT NOT NULL,
            first_seen_at TEXT NOT NULL,
            seen_sweep INTEGER NOT NULL DEFAULT 0,
            removed_at TEXT,
            -- name first: it also answers "every version of these names, any upstream"
            UNIQUE (name, upstream, version)
        );

        CREATE TABLE served (
            id INTEGER PRIMARY KEY,
            view TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            entry_id INTEGER NOT NULL,
            upstream TEXT NOT NULL,
            status TEXT NOT NULL,
            is_latest INTEGER NOT NULL,
            published_ts REAL NOT NULL,
            updated_at TEXT NOT NULL,
            description TEXT NOT NULL,
            form BLOB NOT NULL,
            meta TEXT NOT NULL,
            UNIQUE (view, name, version)
        );
        CREATE INDEX served_updated ON served (view, updated_at);
        CREATE INDEX served_latest ON served (view, name, version) WHERE is_latest = 1;
        CREATE INDEX served_version ON served (view, version, name);

        CREATE TABLE upstreams (
            name TEXT PRIMARY KEY,
            checkpoint TEXT,
            last_full_at TEXT,
            last_success_at TEXT,
            last_error TEXT,
            last_error_at TEXT,
            failures INTEGER NOT NULL DEFAULT 0,
            circuit_until TEXT,
            pass_id INTEGER,
            pass_mode TEXT,
            pass_started TEXT,
            pass_since TEXT,
            pass_cursor TEXT,
            pass_sweep INTEGER,
            source_digest TEXT
        );

        CREATE TABLE passes (
            id INTEGER PRIMARY KEY,
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
            resumed_from INTEGER
        );
        CREATE INDEX passes_upstream ON passes (upstream, id);

        CREATE TABLE quarantine (
            upstream TEXT NOT NULL,
            key TEXT NOT NULL,
            reason TEXT NOT NULL,
            raw TEXT NOT NULL,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            PRIMARY KEY (upstream, key)
        );

        CREATE TABLE rule_hits (
            view TEXT NOT NULL,
            rule TEXT NOT NULL,
            hits INTEGER NOT NULL,
            PRIMARY KEY (view, rule)
        );

        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
    ),
    (
        "0002_upstreams_failing_since",
        "ALTER TABLE upstreams ADD COLUMN failing_since TEXT",
    ),
    (
        # Substring search without a scan: a trigram index over the served names and
        # descriptions, kept in step with `served` by triggers.
        "0003_served_search",
        """
        CREATE VIRTUAL TABLE served_search USING fts5(
            name, description, content='served', content_rowid='id', tokenize='trigram'
        );
        INSERT INTO served_search (served_search) VALUES ('rebuild');
        """
        + _SEARCH_TRIGGERS_0003
        + """
        -- Each page commit adds a segment; merging 16 at a time instead of 4 writes about a
        -- third less on a full pass, and queries do not notice.
        INSERT INTO served_search (served_search, rank) VALUES ('automerge', 16);
        """,
    ),
    (
        # Removal by absence needs two complete full passes that agree (`missed`); a name is
        # evaluated only once all of its versions in a pass are stored (`pass_pending`, and
        # the listing order seen so far, kept with each page so a resumed pass knows it).
        "0004_entries_missed",
        """
        ALTER TABLE entries ADD COLUMN missed INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE upstreams ADD COLUMN pass_last_name TEXT;
        ALTER TABLE upstreams ADD COLUMN pass_unordered INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE pass_pending (
            upstream TEXT NOT NULL,
            name TEXT NOT NULL,
            PRIMARY KEY (upstream, name)
        ) WITHOUT ROWID;
        """,
    ),
    (
        # Search folds case for all of Unicode, as ILIKE does (SQLite's LIKE and the trigram
        # tokenizer fold ASCII, or an older Unicode, only): folded copies of the name and the
        # description, filled by `fold`, and the trigram index over them, case-sensitive so
        # that it compares exactly what `fold` made. Left complete and maintained, whatever
        # state a deferred first sync had left it in.
        "0005_served_search_folded",
        """
        DROP TRIGGER IF EXISTS served_search_insert;
        DROP TRIGGER IF EXISTS served_search_update;
        DROP TRIGGER IF EXISTS served_search_delete;
        DROP TABLE served_search;
        ALTER TABLE served ADD COLUMN search_name TEXT NOT NULL DEFAULT '';
        ALTER TABLE served ADD COLUMN search_description TEXT NOT NULL DEFAULT '';
        UPDATE served SET search_name = search_fold(name),
            search_description = search_fold(description);
        CREATE VIRTUAL TABLE served_search USING fts5(
            search_name, search_description, content='served', content_rowid='id',
            tokenize='trigram case_sensitive 1'
        );
        INSERT INTO served_search (served_search) VALUES ('rebuild');
        """
        + SEARCH_TRIGGERS
        + """
        INSERT INTO served_search (served_search, rank) VALUES ('automerge', 16);
        UPDATE settings SET value = 'ready' WHERE key = 'search_index';
        """,
    ),
    (
        # Ranked search: words (not trigrams) of the served rows, for bm25 with column weights;
        # diacritics dropped (`cafe` finds café); prefixes of 2 and 3 characters indexed so
        # that short type-ahead prefixes stay cheap.
        "0006_served_rank",
        f"""
        CREATE VIRTUAL TABLE served_rank USING fts5(
            name, namespace, title, description, packages,
            tokenize='unicode61 remove_diacritics 2', prefix='2 3'
        );
        INSERT INTO served_rank ({_RANK_COLUMNS})
        SELECT {_rank_fields("s")} FROM served s JOIN entries e ON e.id = s.entry_id
        WHERE s.status != 'deleted';
        INSERT INTO served_rank (served_rank, rank) VALUES ('automerge', 16);
        """
        + RANK_TRIGGERS,
    ),
)


def statements(script: str) -> list[str]:
    """Split a script into complete statements (trigger bodies contain ';' themselves)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


async def migrate(db: aiosqlite.Connection) -> list[str]:
    """Apply pending migrations in order; return the names applied."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    await db.commit()
    async with db.execute("SELECT name FROM migrations") as cursor:
        done = {row[0] for row in await cursor.fetchall()}
    # Migrations compute folded text with the very function the writer uses for new rows.
    await db.create_function("search_fold", 1, fold, deterministic=True)
    applied = []
    for name, script in MIGRATIONS:
        if name in done:
            continue
        # executescript would COMMIT on its own; run statement by statement inside one transaction.
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements(script):
                await db.execute(statement)
            await db.execute(
                "INSERT INTO migrations (name, applied_at) "
                "VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                (name,),
            )
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        applied.append(name)
    return applied
