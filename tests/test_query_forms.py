"""Query forms an aggregator sends: the official registry's cursors, and search that folds case
for all of Unicode as the official service's ILIKE does (issue #10, properties 10 and 11)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sync.app import create_app
from sync.config import Config
from sync.metrics import Metrics
from sync.pull.engine import Engine
from sync.serve.api import _decode_cursor, encode_cursor
from sync.store import ListQuery, Reader, Store
from sync.store.sqlite.reader import SqliteReader
from sync.store.sqlite.schema import MIGRATIONS
from sync.store.sqlite.writer import SqliteStore
from sync.store.text import fold
from tests.fake_upstream import OFFICIAL, FakeRegistry
from tests.helpers import build_mirror, mirror_config, no_sleep

Key = tuple[str, str]

# Versions with `:` and `+` (five or more per name, so that every walk of five per page ends
# a page on each kind), a version with a space beside its `+` twin, and descriptions in several
# scripts. Names are ASCII, as the server.json pattern requires; "aa." sorts them first.
EXTRAS: list[tuple[str, str, str]] = [
    *[("aa.query-forms/colons", f"1.0.{i}:rc{i}", "Versions with colons") for i in range(6)],
    *[
        ("aa.query-forms/plus", f"2.0.0+build.{i}", "Versions with build metadata")
        for i in range(6)
    ],
    *[("aa.query-forms/both", f"3.{i}.0+git:{i}", "Both separators") for i in range(6)],
    ("aa.query-forms/space", "1.0 beta", "A version with a space"),
    ("aa.query-forms/space", "1.0+beta", "Its twin with a plus"),
    ("aa.query-forms/french", "1.0.0", "ÉTÉ À PARIS : données météo, Île-de-France"),
    ("aa.query-forms/russian", "1.0.0", "ЖУРНАЛ событий Москвы"),
    ("aa.query-forms/greek", "1.0.0", "ΟΔΟΣ ΣΟΦΙΑΣ, χάρτης της Αθήνας"),
    ("aa.query-forms/turkish", "1.0.0", "İSTANBUL trafik, IĞDIR hava durumu"),
    ("aa.query-forms/digraph", "1.0.0", "ǅemal i ǄUNGLA"),
    ("aa.query-forms/deseret", "1.0.0", "𐐀𐐁𐐂 in the Deseret alphabet"),
    ("aa.query-forms/cherokee", "1.0.0", "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ syllabary"),
    ("aa.query-forms/georgian", "1.0.0", "ᲥᲐᲠᲗᲣᲚᲘ and ქართული"),
    ("aa.query-forms/fullwidth", "1.0.0", "ＭＣＰ ｓｅｒｖｅｒ in full width"),
    ("aa.query-forms/german", "1.0.0", "Straße am Markt"),
    ("aa.query-forms/literal", "1.0.0", "100% pure_python in C:\\tools, 'single' \"double\""),
    ("aa.query-forms/MixedCase", "1.0.0", "An ASCII name in mixed case"),
]


def extra_items(template: dict[str, Any]) -> list[dict[str, Any]]:
    items = []
    for i, (name, version, description) in enumerate(EXTRAS):
        server = {**template["server"], "name": name, "version": version}
        server["description"] = description
        stamp = f"2025-11-01T00:00:{i:02d}Z"
        meta = {"status": "active", "publishedAt": stamp, "updatedAt": stamp, "isLatest": False}
        items.append({"server": server, "_meta": {OFFICIAL: meta}})
    return items


@pytest.fixture(scope="module")
def forms_db(tmp_path_factory: pytest.TempPathFactory, catalogue: list[dict[str, Any]]) -> Path:
    """The real catalogue plus EXTRAS, mirrored once by the real engine."""
    path = tmp_path_factory.mktemp("forms") / "mirror.db"
    asyncio.run(build_mirror(path, catalogue + extra_items(catalogue[0])))
    return path


@pytest.fixture
async def api(tmp_path: Path, forms_db: Path) -> AsyncIterator[TestClient[Any, Any]]:
    path = tmp_path / "mirror.db"
    shutil.copy(forms_db, path)
    client = TestClient(TestServer(create_app(mirror_config(path), sync=False)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def page(api: TestClient[Any, Any], query: str) -> dict[str, Any]:
    response = await api.get(f"/v0.1/servers?{query}")
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def keys(body: dict[str, Any]) -> list[Key]:
    return [(i["server"]["name"], i["server"]["version"]) for i in body["servers"]]


async def everything(api: TestClient[Any, Any]) -> list[Key]:
    """Every visible version, paged by the mirror's own cursors."""
    found: list[Key] = []
    cursor = ""
    while True:
        body = await page(api, f"limit=100{cursor}")
        found += keys(body)
        if "nextCursor" not in body["metadata"]:
            return found
        cursor = f"&cursor={body['metadata']['nextCursor']}"


def after(full: list[Key], position: tuple[str, str | None], limit: int) -> list[Key]:
    """The official meaning: (name, version) → after it; (name, None) → name > cursor."""
    name, version = position
    if version is None:
        return [k for k in full if k[0] > name][:limit]
    return [k for k in full if k > (name, version)][:limit]


async def walk(
    api: TestClient[Any, Any],
    full: list[Key],
    cursor: Callable[[Key, dict[str, Any]], str],
    meaning: Callable[[Key], tuple[str, str | None]],
) -> tuple[list[Key], list[Key]]:
    """Five per page, each next cursor made by `cursor` from the previous page's last item, as
    an aggregator that saved an official cursor does; each page must be exactly what its
    cursor means (`meaning`). Returns the items walked and the items cursors were made from."""
    walked: list[Key] = []
    boundaries: list[Key] = []
    query = "limit=5"
    while True:
        body = await page(api, query)
        got = keys(body)
        if boundaries:
            assert got == after(full, meaning(boundaries[-1]), 5), boundaries[-1]
        walked += got
        if "nextCursor" not in body["metadata"]:
            return walked, boundaries
        boundaries.append(got[-1])
        query = f"limit=5&cursor={cursor(got[-1], body)}"


def separators(boundaries: list[Key]) -> set[str]:
    kinds = {"".join(sep for sep in ":+" if sep in version) for _, version in boundaries}
    return kinds & {":", "+", ":+"}


class TestOfficialCursor:
    async def test_official_name_version_cursors_page_as_ours(
        self, api: TestClient[Any, Any]
    ) -> None:
        full = await everything(api)
        assert len(full) == 2627 + len(EXTRAS) and full == sorted(full)
        ours, ours_at = await walk(
            api, full, lambda _, body: body["metadata"]["nextCursor"], lambda key: key
        )
        official, official_at = await walk(
            api, full, lambda key, _: quote(f"{key[0]}:{key[1]}", safe=""), lambda key: key
        )
        assert ours == official == full and ours_at == official_at
        assert separators(official_at) == {":", "+", ":+"}, official_at

    async def test_bare_name_cursors_mean_after_every_version_of_the_name(
        self, api: TestClient[Any, Any]
    ) -> None:
        full = await everything(api)
        walked, _ = await walk(
            api, full, lambda key, _: quote(key[0], safe=""), lambda key: (key[0], None)
        )
        assert walked == [key for key in full if key in set(walked)]
        assert {name for name, _ in walked} == {name for name, _ in full}

    async def test_an_unencoded_plus_reads_as_the_official_service_reads_it(
        self, api: TestClient[Any, Any]
    ) -> None:
        """Appended raw, a `+` arrives as a space, as at the official service. A space sorts
        before `+`, so the page starts at or before the version the cursor came from: it may
        repeat items, never skip one. (Reading the space as `+` would skip rows after a
        version that really contains a space, sent correctly encoded.)"""
        full = await everything(api)
        plus = [key for key in full if "+" in key[1]]
        assert len(plus) >= 15
        for name, version in plus:
            body = await page(api, f"limit=5&cursor={name}:{version}")  # `+`, `/`, `:` raw
            assert keys(body) == after(full, (name, version.replace("+", " ")), 5)
            assert keys(body)[0] <= (name, version)
        twin = [("aa.query-forms/space", "1.0+beta")]
        assert keys(await page(api, "limit=1&cursor=aa.query-forms/space:1.0+beta")) == twin
        spaced = quote("aa.query-forms/space:1.0 beta", safe="")
        assert keys(await page(api, f"limit=1&cursor={spaced}")) == twin
        encoded = quote("aa.query-forms/space:1.0+beta", safe="")
        assert keys(await page(api, f"limit=1&cursor={encoded}")) == after(full, twin[0], 1)

    async def test_any_cursor_with_a_slash_is_official_and_never_rejected(
        self, api: TestClient[Any, Any]
    ) -> None:
        full = await everything(api)
        rng = random.Random(10)
        alphabet = "/:+ %._-azAZ09éЖ€𐐀\\'\""
        cursors = ["/", ":/", "a/b:", ":x/y", "zzz/zzz", "aa.query-forms/colons:1.0.2:rc2"]
        cursors += ["a/b:c:d", "ü/ü", "io.github.x/y:1.0 beta", "%2F/", "aa.query-forms/both:"]
        while len(cursors) < 150:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            if "/" not in text:
                cut = rng.randint(0, len(text))
                text = text[:cut] + "/" + text[cut:]
            cursors.append(text)
        for text in cursors:
            response = await api.get("/v0.1/servers", params={"cursor": text, "limit": "4"})
            assert response.status == 200, (text, await response.text())
            name, sep, version = text.partition(":")
            position = (name, version) if sep else (name, None)
            assert keys(await response.json()) == after(full, position, 4), text

    async def test_every_served_position_in_every_form(self, forms_db: Path) -> None:
        """Ours never contain `/` or `:` (so the forms cannot be confused), and each form
        names the same position, for every served version."""
        reader = await SqliteReader.open(forms_db, connections=1)
        try:
            rows = [(n, v) async for n, v, _, _ in reader.export("default")]
        finally:
            await reader.close()
        for name, version in rows:
            ours = encode_cursor(name, version)
            assert "/" not in ours and ":" not in ours
            assert _decode_cursor(ours) == (name, version)
            assert _decode_cursor(f"{name}:{version}") == (name, version)
            assert _decode_cursor(name) == (name, None)

    @pytest.mark.parametrize("cursor", ["%%%", "a b", "ü", "Zm9v:YmFy", "bm90LWEtY3Vyc29y", "a+b"])
    async def test_undecodable_cursors_without_a_slash_stay_400(
        self, api: TestClient[Any, Any], cursor: str
    ) -> None:
        response = await api.get("/v0.1/servers", params={"cursor": cursor})
        assert response.status == 400
        body = await response.json(content_type=None)
        assert body["title"] == "Bad Request" and "cursor" in body["detail"]


# --- search ----------------------------------------------------------------------------------


def simple_lower(text: str) -> str:
    """The reference: each character's own lowercase, cut to one character (only `İ` has a
    longer one, `i` + a combining dot), never its neighbours' context."""
    return "".join(ch.lower()[:1] for ch in text)


TERMS = [
    # the real catalogue
    "POKÉMON", "FÜR", "ELÉCTRICA", "É", "Ü", "SPOTDB", "GitHub",
    # inserted entries
    "été", "ÉTÉ", "été à paris", "ÎLE", "données", "Ж", "журнал", "ЖУРНАЛ", "МОСКВ",
    "ΟΔΟΣ", "σοφιασ", "οδοσ σοφιασ",
    "ΑΘΉΝΑΣ", "ΑΘΉΝΑς", "İSTANBUL", "istanbul", "İ", "iğdir", "ǅ", "ǆung", "ǄUNGLA", "𐐨𐐩𐐪", "𐐀",
    "ꮳꮃꭹ", "ᏣᎳᎩ", "ქართ", "ᲥᲐᲠᲗ", "ｍｃｐ", "ＳＥＲＶＥＲ", "STRASSE", "straße", "STRAẞE",
    "mixedcase", "QUERY-FORMS/MIXED",
    # literal substrings: wildcards, escapes and quotes match themselves
    "%", "0% p", "_", "e_p", "\\", "C:\\T", "'single'", '"double"', "' OR 1=1 --",
]  # fmt: skip


async def matches(reader: Reader, term: str) -> list[Key]:
    found: list[Key] = []
    position: tuple[str, str | None] | None = None
    while True:
        rows = await reader.list_servers(ListQuery("default", 100, after=position, search=term))
        found += [(r[0], r[1]) for r in rows[:100]]
        if len(rows) <= 100:
            return found
        position = (rows[99][0], rows[99][1])


async def reference(reader: Reader, term: str) -> list[Key]:
    folded = simple_lower(term)
    found = []
    async for name, version, server, meta in reader.export("default"):
        if json.loads(meta)[OFFICIAL]["status"] == "deleted":
            continue
        description = json.loads(server).get("description", "")
        if folded in simple_lower(name) or folded in simple_lower(description):
            found.append((name, version))
    return found


async def both_paths(reader: Reader, term: str) -> tuple[list[Key], list[Key], str, str]:
    """Results and plans with the trigram index forced (for terms of 3+ characters) and with
    the index-ordered scan forced."""
    query = ListQuery("default", 30, search=term)
    reader.search_sort_max = 10**9
    indexed, indexed_plan = await matches(reader, term), " | ".join(await reader.plan(query))
    reader.search_sort_max = -1
    scanned, scanned_plan = await matches(reader, term), " | ".join(await reader.plan(query))
    return indexed, scanned, indexed_plan, scanned_plan


POKEAPI = "io.github.Asthanaji05/pokeapi-mcp-server"


class TestFoldedSearch:
    def test_fold_is_each_characters_simple_lowercase_for_all_of_unicode(self) -> None:
        """One character for one, whatever its neighbours: every substring of a text stays a
        substring of its folded form."""
        every = "".join(chr(c) for c in range(0x110000))
        for ch in every:
            assert fold(ch) == simple_lower(ch), hex(ord(ch))
        assert fold(every) == simple_lower(every)
        assert fold("ΟΔΟΣ ΣΟΦΙΑΣ") == "οδοσ σοφιασ"  # str.lower() would end words with ς
        assert fold("İSTANBUL") == "istanbul"  # str.lower() would add a combining dot

    @pytest.mark.parametrize("term", TERMS)
    async def test_both_paths_fold_case_and_agree(self, forms_db: Path, term: str) -> None:
        reader = await SqliteReader.open(forms_db, connections=1)
        try:
            expected = await reference(reader, term)
            indexed, scanned, indexed_plan, scanned_plan = await both_paths(reader, term)
        finally:
            await reader.close()
        assert scanned == expected, term
        assert indexed == expected, term
        assert "s USING INDEX sqlite_autoindex_served_1" in scanned_plan, scanned_plan
        assert "TEMP B-TREE" not in scanned_plan, scanned_plan
        if len(term) >= 3:
            assert "VIRTUAL TABLE" in indexed_plan, indexed_plan

    @pytest.mark.parametrize(
        ("term", "found"),
        [
            ("DONNÉES", {"aa.query-forms/french"}),
            ("ж", {"aa.query-forms/russian"}),
            ("istanbul", {"aa.query-forms/turkish"}),
            ("ǆ", {"aa.query-forms/digraph"}),
            ("ꮳꮃꭹ", {"aa.query-forms/cherokee"}),
            ("𐐨", {"aa.query-forms/deseret"}),
            ("STRAẞE", {"aa.query-forms/german"}),
            ("STRASSE", set()),  # lowercase, not case folding: ß is not ss
            ("POKÉMON", {"ai.smithery/MetehanGZL-pokemcp", POKEAPI}),
        ],
    )  # fmt: skip
    async def test_the_api_finds_every_case(
        self, api: TestClient[Any, Any], term: str, found: set[str]
    ) -> None:
        body = await page(api, f"limit=100&search={quote(term)}")
        assert {name for name, _ in keys(body)} == found


# --- the folded index over a mirror's life ----------------------------------------------------


def fts_integrity(path: Path) -> None:
    """FTS5 checks that its index holds exactly the content table's folded columns."""
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO served_search (served_search, rank) VALUES ('integrity-check', 1)")
    db.close()


def downgrade(path: Path, *, deferred: bool) -> None:
    """Put a mirror back in the state 0005 finds: 0003's index over the raw columns, or, in a
    first sync that deferred it, no triggers and the index marked stale."""
    script = dict(MIGRATIONS)["0003_served_search"]
    with sqlite3.connect(path) as db:
        for trigger in ("insert", "update", "delete"):
            db.execute(f"DROP TRIGGER served_search_{trigger}")
        db.execute("DROP TABLE served_search")
        db.execute("ALTER TABLE served DROP COLUMN search_name")
        db.execute("ALTER TABLE served DROP COLUMN search_description")
        db.executescript(script)
        if deferred:
            for trigger in ("insert", "update", "delete"):
                db.execute(f"DROP TRIGGER served_search_{trigger}")
            db.execute(
                "INSERT INTO settings (key, value) VALUES ('search_index', 'stale') "
                "ON CONFLICT (key) DO UPDATE SET value = 'stale'"
            )
        db.execute("DELETE FROM migrations WHERE name = '0005_served_search_folded'")
    db.close()


class TestMigration:
    @pytest.mark.parametrize("deferred", [False, True])
    async def test_an_existing_mirror_is_folded_and_indexed(
        self, tmp_path: Path, forms_db: Path, deferred: bool
    ) -> None:
        path = tmp_path / "old.db"
        shutil.copy(forms_db, path)
        downgrade(path, deferred=deferred)
        store = await SqliteStore.open(path)
        try:
            assert await store.setting("search_index") == "ready"
            assert not await store.rebuild_search_index()  # complete and maintained already
        finally:
            await store.close()
        fts_integrity(path)
        with sqlite3.connect(path) as db:
            triggers = db.execute(  # the trigram index's (the ranked index has its own)
                "SELECT count(*) FROM sqlite_master "
                "WHERE type = 'trigger' AND name LIKE 'served\\_search\\_%' ESCAPE '\\'"
            )
            assert triggers.fetchone()[0] == 3
        db.close()
        old, new = await SqliteReader.open(forms_db, connections=1), await SqliteReader.open(path)
        try:
            for term in ("ÉTÉ", "ЖУРНАЛ", "İSTANBUL", "ᏣᎳᎩ", "ＳＥＲＶＥＲ", "0% p", "FÜR"):
                migrated = await both_paths(new, term)
                assert migrated[0] and migrated == await both_paths(old, term), term
        finally:
            await old.close()
            await new.close()


def hang_on_page(fake: FakeRegistry, number: int) -> asyncio.Event:
    release = asyncio.Event()

    async def hang(count: int) -> None:
        if count == number:
            await release.wait()

    fake.after_page = hang
    return release


class TestWrites:
    async def test_deferred_first_sync_then_incremental_changes_stay_folded(
        self,
        config: Config,
        store: Store,
        reader: Reader,
        fake: FakeRegistry,
        catalogue: list[dict[str, Any]],
    ) -> None:
        """Mid-way through a first sync (index deferred) the scan folds; the index built at
        its end folds; rows written later by the triggers fold too."""
        for item in extra_items(catalogue[0]):
            fake.publish(item["server"])
        hang_on_page(fake, 4)
        engine = Engine(config, store, Metrics(), sleep=no_sleep)
        task = asyncio.create_task(engine.run("official"))
        query = ListQuery("default", 100, search="ЖУРНАЛ")
        while not await reader.list_servers(query):
            await asyncio.sleep(0.01)
        assert "VIRTUAL TABLE" not in " ".join(await reader.plan(query))
        assert await matches(reader, "ǄUNGLA") == [("aa.query-forms/digraph", "1.0.0")]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.close()
        fake.after_page = None

        await run_pass(config, store)
        fts_integrity(config.storage.path)
        indexed, scanned, plan, _ = await both_paths(reader, "ЖУРНАЛ")
        assert indexed == scanned == [("aa.query-forms/russian", "1.0.0")] and "VIRTUAL" in plan

        template = {**extra_items(catalogue[0])[0]["server"], "name": "aa.query-forms/later"}
        fake.publish({**template, "version": "9.0.0", "description": "ΝΈΟ ΣΤΟΙΧΕΊΟ"})
        fake.edit("aa.query-forms/russian", "1.0.0", description="ÜBER ALLES")
        await run_pass(config, store)
        fts_integrity(config.storage.path)
        for term, expected in (
            ("νέο στοιχείο", [("aa.query-forms/later", "9.0.0")]),
            ("über", [("aa.query-forms/russian", "1.0.0")]),
            ("журнал", []),
        ):
            indexed, scanned, _, _ = await both_paths(reader, term)
            assert indexed == scanned == expected, term


async def run_pass(config: Config, store: Store) -> None:
    engine = Engine(config, store, Metrics(), sleep=no_sleep)
    try:
        assert (await engine.run("official")).outcome == "ok"
    finally:
        await engine.close()
