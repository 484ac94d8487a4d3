"""HTTP as real clients and browsers use it (issue #10), over real sockets.

A redirect never leaves the host nor changes the query; no valid input gets a 5xx;
Accept-Encoding and If-None-Match follow RFC 9110; every real name and version is reachable
with the encodings real clients use. The properties run hypothesis against the real app,
served from its own thread so that raw bytes (backslashes, tabs) reach it unchanged.
"""

from __future__ import annotations

import asyncio
import calendar
import gzip
import json
import re
import shutil
import socket
import string
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from sync.app import create_app
from sync.serve.middleware import canonical_location
from tests.fake_upstream import OFFICIAL
from tests.helpers import DEPRECATED, MULTI, build_mirror, mirror_config

HOST = "127.0.0.1"
PROPERTY = settings(max_examples=150, deadline=None, database=None)


class Mirror:
    """The real app over a copy of the real catalogue's mirror, on its own thread and loop."""

    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(create_app(mirror_config(path), sync=False))
        self.port = 0
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, HOST, 0)
            self.loop.run_until_complete(site.start())
            self.port = self.runner.addresses[0][1]
        except BaseException as exc:  # surfaced by start(), in the test's thread
            self.error = exc
            return
        finally:
            self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, mirror_db: Path) -> Iterator[Mirror]:
    path = tmp_path_factory.mktemp("client_http") / "mirror.db"
    shutil.copy(mirror_db, path)
    served = Mirror(path)
    served.start()
    try:
        yield served
    finally:
        served.stop()


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(port: int, target: bytes, headers: dict[str, str] | None = None) -> Answer:
    """One request with the target's bytes exactly as given (no client normalises them)."""
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]
    with socket.create_connection((HOST, port), timeout=120) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed = {
        name.strip().lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)
    }
    return Answer(int(status_line.split(" ")[1]), parsed, body)


def get(mirror: Mirror, target: str, headers: dict[str, str] | None = None) -> Answer:
    return send(mirror.port, target.encode("ascii"), headers)


# --- 6. No redirect leaves the host, and none changes the query ---------------------------

_C0_AND_SPACE = "".join(map(chr, range(0x21)))


def browser_resolves(location: str, port: int) -> tuple[str | None, int | None]:
    """Where a browser goes for this Location (WHATWG URL): tab, CR and LF removed, leading
    and trailing C0 controls and spaces trimmed, `\\` read as `/`, resolved against the page."""
    cleaned = re.sub("[\t\r\n]", "", location).strip(_C0_AND_SPACE).replace("\\", "/")
    target = urlsplit(urljoin(f"http://{HOST}:{port}/", cleaned))
    return target.hostname, target.port


# Pieces of hostile paths, sent as raw bytes: raw tabs and non-ASCII get the parser's 400.
_PATH_PIECES = [
    *["/", "//", "\\", "\\\\", "%2F", "%2f", "%5C", "%5c", "%09", "%0A", "%0d", "%0D%0A"],
    *["%20", "%00", ".", "..", "%2E%2E", "@", ":", "evil.com", "127.0.0.2:1", "v0.1"],
    *["servers", "%", "%2", "%252F", "%E2%80%A8", "%C0%AF", "\t", "\xe9", "{", "|", "^"],
]
# A valid query (RFC 3986): it must come back byte for byte.
_QUERY_PIECES = [
    *(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?"),
    *["%23", "%26", "%2B", "%25", "%20", "%3F", "%2F", "%5C", "%0D%0A", "limit=2", "&"],
]
hostile_paths = st.lists(st.sampled_from(_PATH_PIECES), max_size=8).map(
    lambda pieces: "/" + "".join(pieces) + "/"
)
valid_queries = st.lists(st.sampled_from(_QUERY_PIECES), max_size=12).map("".join)


@PROPERTY
@given(path=hostile_paths, query=valid_queries)
def test_no_redirect_leaves_the_host_nor_changes_the_query(
    mirror: Mirror, path: str, query: str
) -> None:
    target = path + ("?" + query if query else "")
    answer = send(mirror.port, target.encode("latin-1"))
    assert answer.status in (308, 400), (target, answer)  # 400: NUL, or bytes no URL holds
    if answer.status == 308:
        location = answer.headers["location"]
        assert browser_resolves(location, mirror.port) == (HOST, mirror.port), location
        assert location.partition("?")[2] == query, location


@PROPERTY
@given(path=st.text(), query=st.text())
def test_location_stays_on_this_host_for_any_text(path: str, query: str) -> None:
    """Below the socket: paths and queries no request line can carry (raw CR, LF, spaces,
    lone surrogates) still give a printable, same-host Location."""
    location = canonical_location("/" + path + "/", query)
    assert re.fullmatch(r"/(?![/\\])[!-~]*", location), location
    assert browser_resolves(location, 8080) == (HOST, 8080), location


@pytest.mark.parametrize(
    ("target", "location"),
    [
        (b"//evil.com/", "/evil.com"),
        (b"/\\evil.com/", "/%5Cevil.com"),
        (b"/\\\\evil.com/", "/%5C%5Cevil.com"),
        (b"/%2F%2Fevil.com/", "/%2F%2Fevil.com"),
        (b"/%5C%5Cevil.com/", "/%5C%5Cevil.com"),
        (b"/%09/evil.com/", "/%09/evil.com"),
        (b"/%0D%0A//evil.com/", "/%0D%0A//evil.com"),
        (b"/v0.1/servers//?limit=2", "/v0.1/servers?limit=2"),
        (
            b"/v0.1/servers/?search=a%23b&cursor=x%26y+z",
            "/v0.1/servers?search=a%23b&cursor=x%26y+z",
        ),
    ],
)
def test_trailing_slash_redirect_examples(mirror: Mirror, target: bytes, location: str) -> None:
    answer = send(mirror.port, target)
    assert answer.status == 308
    assert answer.headers["location"] == location
    assert browser_resolves(location, mirror.port) == (HOST, mirror.port)


def test_redirect_target_serves_the_same_query(mirror: Mirror) -> None:
    moved = get(mirror, "/v0.1/servers/?search=ai.exa%2Fexa&limit=2")
    landed = get(mirror, moved.headers["location"])
    assert landed.status == 200
    assert [i["server"]["name"] for i in landed.json()["servers"]] == ["ai.exa/exa"] * 2


# --- 7. No valid input gets a 5xx ---------------------------------------------------------


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """Any RFC 3339 date-time, edges first: years 0000, 0001 and 9999, offsets up to
    ±23:59, fractions of any length, lowercase `t` and `z`, leap seconds (:60)."""
    year = draw(st.sampled_from([0, 1, 1970, 9998, 9999]) | st.integers(0, 9999))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, calendar.monthrange(year or 400, month)[1]))  # 0000 is leap
    clock = draw(st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 60)))
    fraction = draw(st.none() | st.text("0123456789", min_size=1, max_size=40))
    zone = draw(
        st.sampled_from(["Z", "z", "+23:59", "-23:59", "-00:00"])
        | st.builds(
            "{}{:02d}:{:02d}".format, st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)
        )
    )
    separator = draw(st.sampled_from("Tt"))
    text = (
        f"{year:04d}-{month:02d}-{day:02d}{separator}{clock[0]:02d}:{clock[1]:02d}:{clock[2]:02d}"
    )
    return text + ("" if fraction is None else "." + fraction) + zone


@dataclass(frozen=True)
class Stamps:
    """The mirror's own `updatedAt` stamps, and the first page of everything."""

    all: list[str]
    first_page: list[tuple[str, str]]


def _keys(answer: Answer) -> list[tuple[str, str]]:
    return [(i["server"]["name"], i["server"]["version"]) for i in answer.json()["servers"]]


@pytest.fixture(scope="module")
def stamps(mirror: Mirror) -> Stamps:
    found: list[str] = []
    cursor = ""
    first: list[tuple[str, str]] = []
    while True:
        page = get(mirror, f"/v0.1/servers?limit=100&include_deleted=true&cursor={cursor}")
        first = first or _keys(page)
        found += [i["_meta"][OFFICIAL]["updatedAt"] for i in page.json()["servers"]]
        cursor = page.json()["metadata"].get("nextCursor", "")
        if not cursor:
            return Stamps(sorted(found), first)


def _since(mirror: Mirror, since: str, *extra: str) -> Answer:
    return get(
        mirror,
        "/v0.1/servers?"
        + "&".join(["limit=100", *extra, "updated_since=" + quote(since, safe="")]),
    )


@PROPERTY
@given(since=rfc3339())
def test_every_rfc3339_stamp_is_answered(mirror: Mirror, stamps: Stamps, since: str) -> None:
    answer = _since(mirror, since)
    assert answer.status == 200, (since, answer.body[:300])
    year = int(since[:4])  # an offset moves a moment by less than a day
    if year < int(stamps.all[0][:4]) - 1:
        assert _keys(answer) == stamps.first_page, since
    elif year > int(stamps.all[-1][:4]) + 1:
        assert _keys(answer) == [], since


@pytest.mark.parametrize(
    "since",
    [
        "0001-01-01T00:00:00+01:00",  # before 0001-01-01 UTC: overflowed into a 500
        "0001-01-01T00:00:00+23:59",
        "0000-01-01T00:00:00Z",
        "0000-02-29T23:59:60.999-23:59",
        "0001-01-01t00:00:00.0000000000000000000001z",
        "1970-01-01T00:00:00-00:00",
        "2016-12-31T23:59:60Z",
    ],
)
def test_a_bound_before_every_stamp_means_everything(
    mirror: Mirror, stamps: Stamps, since: str
) -> None:
    answer = _since(mirror, since)
    assert answer.status == 200, answer.body[:300]
    assert _keys(answer) == stamps.first_page


@pytest.mark.parametrize(
    "since",
    [
        "9999-12-31T23:59:59-01:00",  # after 9999-12-31 UTC: overflowed into a 500
        "9999-12-31T23:59:60.999999999999-23:59",
        "9999-12-31t23:59:59.999999z",
        "3000-01-01T00:00:00+23:59",
    ],
)
def test_a_bound_after_every_stamp_means_nothing(mirror: Mirror, since: str) -> None:
    answer = _since(mirror, since)
    assert answer.status == 200, answer.body[:300]
    assert answer.json() == {"servers": [], "metadata": {"count": 0}}


def test_bounds_at_any_offset_and_precision_are_exact(mirror: Mirror, stamps: Stamps) -> None:
    """Digits past the microsecond and any offset name the same moment: still strictly after."""
    pivot = stamps.all[-10]
    newer = sum(1 for s in stamps.all if s > pivot)
    moment = datetime.fromisoformat(pivot)
    for minutes in (0, 23 * 60 + 59, -(23 * 60 + 59), 330):
        zone = timezone(timedelta(minutes=minutes))
        local = moment.astimezone(zone)
        offset = "z" if minutes == 0 else local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:]
        since = local.strftime("%Y-%m-%dt%H:%M:%S.%f") + "999999999999" + offset
        answer = _since(mirror, since)
        assert answer.status == 200 and answer.json()["metadata"]["count"] == newer, since


@pytest.mark.parametrize(
    "since",
    [
        "2025-02-29T00:00:00Z",
        "2025-13-01T00:00:00Z",
        "2025-00-10T00:00:00Z",
        "2025-01-32T00:00:00Z",
        "2025-01-01T24:00:00Z",
        "2025-01-01T00:60:00Z",
        "2025-01-01T00:00:61Z",
        "2025-01-01T00:00:00+24:00",
        "2025-01-01T00:00:00+01:60",
        "2025-01-01T00:00:00.Z",
        "2025-01-01T00:00:00",
        "\u0662\u0660\u0662\u0665-01-01T00:00:00Z",
        "2025-01-01T00:00:00Z\n",
        "10000-01-01T00:00:00Z",
    ],
)
def test_invalid_stamps_are_a_clear_400(mirror: Mirror, since: str) -> None:
    answer = _since(mirror, since)
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "updated_since" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("limit=", 30),  # empty is absent, as huma reads it: the default
        ("include_deleted=", 30),
        ("updated_since=", 30),
        ("search=&version=&cursor=", 30),
        ("limit=5&limit=abc", 5),  # repeated: the first, as Go's Query().Get
        ("limit=%2B5", 5),  # strconv.ParseInt takes a sign
        ("limit=0000000000000000000000000000005", 5),
        ("include_deleted=true&include_deleted=maybe", 30),
    ],
)
def test_parameter_forms_that_mean_a_value(mirror: Mirror, query: str, count: int) -> None:
    answer = get(mirror, "/v0.1/servers?" + query)
    assert answer.status == 200, answer.body[:300]
    assert answer.json()["metadata"]["count"] == count


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc&limit=5",
        "limit=" + "9" * 5000,
        "limit=-" + "9" * 5000,
        "limit=99999999999999999999",
        "include_deleted=maybe",
        "include_deleted=%00",
    ],
)
def test_parameter_forms_that_are_a_clear_4xx(mirror: Mirror, query: str) -> None:
    answer = get(mirror, "/v0.1/servers?" + query)
    assert 400 <= answer.status < 500
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert len(answer.body) < 500  # the value is not echoed back whole


_VALUES = st.one_of(
    st.just(""),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20).map(lambda t: quote(t, safe="")),
    st.binary(max_size=8).map(lambda raw: "".join(f"%{b:02X}" for b in raw)),
    st.integers(-(10**30), 10**30).map(str),
    st.text("0123456789", min_size=10, max_size=1200),
    st.sampled_from(["true", "True", "TRUE", "t", "1", "0", "f", "yes", "on", "+1", "latest"]),
    rfc3339().map(lambda s: quote(s, safe="")),
)
_KEYS = ["limit", "cursor", "search", "updated_since", "version", "include_deleted", "other"]
_ROUTES = [
    "/v0.1/servers",
    f"/v0/servers/{quote(MULTI, safe='')}/versions",
    f"/v0.1/servers/{quote(DEPRECATED[0], safe='')}/versions/latest",
]


@PROPERTY
@given(
    route=st.sampled_from(_ROUTES),
    pairs=st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=5),
)
def test_no_parameter_form_gets_a_5xx(
    mirror: Mirror, route: str, pairs: list[tuple[str, str]]
) -> None:
    target = route + "?" + "&".join(f"{key}={value}" for key, value in pairs)
    answer = get(mirror, target)
    assert answer.status < 500, (target, answer.body[:300])
    if answer.status >= 400:
        assert answer.headers["content-type"].startswith("application/problem+json"), target


# --- 8. HTTP semantics as the RFCs say -----------------------------------------------------

LARGE = "/v0.1/servers?limit=50"  # well over the size worth compressing


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [
        ("gzip", True),
        ("GZip", True),
        ("deflate, gzip;q=1.0, br", True),
        (" gzip ; q=0.5 ", True),
        ("gzip;Q=0.001", True),
        ("x-gzip", True),
        ("*", True),
        ("*;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("gzip;q=0, *", False),
        ("gzip;q=0.5, identity", False),  # identity is preferred
        ("identity;q=0", False),  # no coding acceptable: identity anyway, never 406
        ("*;q=0", False),
        ("identity;q=0, *;q=0", False),
        ("gzip;q=abc", False),  # a malformed member says nothing
        ("gzip;q=1.5", False),
        ("br, deflate", False),
        ("", False),
    ],
)
def test_accept_encoding_qvalues(mirror: Mirror, accept: str, gzipped: bool) -> None:
    plain = get(mirror, LARGE)
    answer = get(mirror, LARGE, {"Accept-Encoding": accept})
    assert answer.status == 200
    assert answer.headers.get("content-encoding") == ("gzip" if gzipped else None)
    assert "Accept-Encoding" in answer.headers["vary"]
    body = gzip.decompress(answer.body) if gzipped else answer.body
    assert body == plain.body


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ("{tag}", True),
        ("W/{tag}", True),  # a proxy that gzipped our response weakened the tag
        ('"other", W/{tag}', True),
        ('"other",{tag}', True),
        ("  {tag}  ", True),
        ("*", True),
        ('"other"', False),
        ('W/"other"', False),
        ("{bare}", False),  # not a quoted entity-tag
        ("", False),
    ],
)
def test_if_none_match_weak_comparison(mirror: Mirror, header: str, matches: bool) -> None:
    first = get(mirror, LARGE)
    tag = first.headers["etag"]
    answer = get(mirror, LARGE, {"If-None-Match": header.format(tag=tag, bare=tag.strip('"'))})
    assert answer.status == (304 if matches else 200)
    assert answer.headers["etag"] == tag
    if matches:
        assert answer.body == b""


# --- 9. Every real version and name is reachable by its path -------------------------------

_URI_COMPONENT_KEEPS = frozenset(string.ascii_letters + string.digits + "-_.!~*'()")
_PATH_SEGMENT_KEEPS = frozenset(string.ascii_letters + string.digits + "-_.~" + "$&+:=@")


def encode_uri_component(text: str) -> str:
    """JavaScript's encodeURIComponent (ECMA-262): UTF-8, all but A-Za-z0-9 -_.!~*'()."""
    return "".join(c if c in _URI_COMPONENT_KEEPS else quote(c, safe="") for c in text)


def go_path_escape(text: str) -> str:
    """Go's url.PathEscape (shouldEscape, encodePathSegment): unreserved and $&+:=@ stay;
    `/`, `;`, `,` and `?` are escaped, as is every other byte."""
    return "".join(
        chr(b) if chr(b) in _PATH_SEGMENT_KEEPS else f"%{b:02X}" for b in text.encode("utf-8")
    )


def python_quote(text: str) -> str:
    return quote(text, safe="")


ENCODERS: list[Callable[[str], str]] = [encode_uri_component, go_path_escape, python_quote]


async def test_every_real_version_is_reachable_with_every_client_encoding(
    mirror: Mirror, catalogue: list[dict[str, Any]]
) -> None:
    keys = [(i["server"]["name"], i["server"]["version"]) for i in catalogue]
    gate = asyncio.Semaphore(16)

    async def fetch(
        session: aiohttp.ClientSession, encode: Callable[[str], str], name: str, version: str
    ) -> str | None:
        path = f"/v0.1/servers/{encode(name)}/versions/{encode(version)}?include_deleted=true"
        async with gate, session.get(URL(mirror.base + path, encoded=True)) as response:
            if response.status != 200:
                return f"{response.status} {path}"
            server = (await response.json())["server"]
            return None if (server["name"], server["version"]) == (name, version) else path

    async with aiohttp.ClientSession() as session:
        failures = await asyncio.gather(
            *(fetch(session, e, n, v) for e in ENCODERS for n, v in keys)
        )
    assert len(failures) == 3 * len(keys) == 3 * 2628
    assert [f for f in failures if f] == []


def test_unencoded_braces_reach_the_entry(mirror: Mirror) -> None:
    listed = get(mirror, "/v0.1/servers?version=%7B%7BVERSION%7D%7D").json()["servers"]
    name = quote(listed[0]["server"]["name"], safe="")
    raw = send(mirror.port, f"/v0.1/servers/{name}/versions/{{{{VERSION}}}}".encode())
    assert raw.status == 200 and raw.json()["server"]["version"] == "{{VERSION}}"


SYNTHETIC = ("9.0%41", "9.0A", "9.1%41", "50%off")


@pytest.fixture
async def synthetic(
    tmp_path: Path, catalogue: list[dict[str, Any]]
) -> AsyncIterator[TestClient[Any, Any]]:
    """A mirror whose one server also holds versions with `%` in them."""
    items = [i for i in catalogue if i["server"]["name"] in (MULTI, DEPRECATED[0])]
    template = next(i for i in items if i["server"]["name"] == DEPRECATED[0])
    for version in SYNTHETIC:
        item = json.loads(json.dumps(template))
        item["server"]["version"] = version
        items.append(item)
    await build_mirror(tmp_path / "mirror.db", items)
    client = TestClient(TestServer(create_app(mirror_config(tmp_path / "mirror.db"), sync=False)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def _version_at(client: TestClient[Any, Any], path: str) -> str | None:
    response = await client.get(URL(path, encoded=True))
    if response.status != 200:
        return None
    return str((await response.json())["server"]["version"])


async def test_a_literal_percent_escape_is_reachable_encoded_once(
    synthetic: TestClient[Any, Any],
) -> None:
    """The official handler decodes twice, so `%2541` asks for `A`; when no such version
    exists, the once-decoded `%41` is what the client meant."""
    base = f"/v0.1/servers/{quote(DEPRECATED[0], safe='')}/versions/"
    assert await _version_at(synthetic, base + quote("9.1%41", safe="")) == "9.1%41"
    assert await _version_at(synthetic, base + quote("50%off", safe="")) == "50%off"
    assert await _version_at(synthetic, base + quote("9.0%41", safe="")) == "9.0A"  # official
    twice = quote(quote("9.0%41", safe=""), safe="")
    assert await _version_at(synthetic, base + twice) == "9.0%41"
