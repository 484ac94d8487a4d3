"""HTTP as real clients and browsers use it (issue #10), over real sockets.

A redirect never leaves the host nor changes the query; no valid input gets a 5xx;
Accept-Encoding and If-None-Match follow RFC 9110; every real name and version is reachable
with the encodings real clients use. The properties run hypothesis against the real app,
served from its own thread so that raw bytes (backslashes, tabs) reach it unchanged.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import shutil
import socket
import string
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.app import create_app
from sync.middleware import canonical_location
from tests.helpers import mirror_config

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
