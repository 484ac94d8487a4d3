"""Query forms an aggregator sends: the official registry's cursors (issue #10, property 10)."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sync.api import _decode_cursor, encode_cursor
from sync.app import create_app
from sync.store import Reader
from tests.fake_upstream import OFFICIAL
from tests.helpers import build_mirror, mirror_config

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
        reader = await Reader.open(forms_db, connections=1)
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
