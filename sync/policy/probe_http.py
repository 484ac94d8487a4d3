"""The requests `subregistry doctor --url` makes, and how it reads their answers.

Every request is bounded (a timeout, a body cap) and goes out byte for byte as the client it
imitates would send it (a raw cursor stays raw); redirects are never followed, since the
clients checked do not rely on them. Whatever a server does becomes an `Answer` with a reason,
never an exception.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from sync.errors import CommandFailed
from sync.policy.report import Problem

__all__ = [
    "BODY_CAP",
    "Answer",
    "Failed",
    "Http",
    "answered",
    "base_url",
    "encode_component",
    "header_list",
    "item_key",
    "item_problems",
    "json_body",
    "list_page",
    "short",
]

BODY_CAP = 8 * 1024 * 1024
# JavaScript's encodeURIComponent leaves these alone.
_URI_COMPONENT_SAFE = "-_.!~*'()"


@dataclass(frozen=True, slots=True)
class Answer:
    url: str
    status: int | None
    latency_ms: float
    headers: Mapping[str, str]
    body: bytes
    error: str  # why the answer is unusable ("" when it was read whole and not redirected)

    def record(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "latency_ms": self.latency_ms}


class Failed(Exception):
    def __init__(self, code: str, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.problem = Problem(code, message, fix)


def short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


async def read_capped(response: aiohttp.ClientResponse) -> tuple[bytes, str]:
    declared = response.content_length
    if declared is not None and declared > BODY_CAP:
        return b"", f"body of {declared} bytes is over the {BODY_CAP // 2**20} MiB cap"
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > BODY_CAP:
            return b"", f"body is over the {BODY_CAP // 2**20} MiB cap"
        chunks.append(chunk)
    return b"".join(chunks), ""


class Http:
    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        self.session, self.timeout = session, timeout

    async def send(self, method: str, url: str, headers: Mapping[str, str] | None = None) -> Answer:
        """`url` goes out byte for byte (a raw cursor stays raw), redirects are not followed."""
        started = time.perf_counter()
        status: int | None = None
        head: Mapping[str, str] = {}
        body, error = b"", ""
        try:
            async with self.session.request(
                method,
                URL(url, encoded=True),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                status, head = response.status, response.headers
                body, error = await read_capped(response)
                if 300 <= status < 400 and not error:
                    where = short(response.headers.get("Location", "nowhere"))
                    error = f"answered {status}, a redirect to {where}, which clients do not follow"
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except aiohttp.ClientSSLError as exc:
            error = f"TLS failed: {short(str(exc), 200)}"
        except aiohttp.ClientConnectorError as exc:
            error = f"cannot connect: {exc.os_error.strerror or exc.os_error}"
        except (aiohttp.ClientError, ValueError, UnicodeError) as exc:
            error = f"request failed: {type(exc).__name__}: {short(str(exc), 200)}"
        latency = round((time.perf_counter() - started) * 1000, 1)
        return Answer(url, status, latency, head, body, error)


def answered(answer: Answer, code: str, *, exact: int | None = None) -> None:
    """Fail unless the answer was read whole with a 2xx (or exactly `exact`) status."""
    if answer.error:
        raise Failed(code, f"{answer.url}: {answer.error}")
    status = answer.status
    if (exact is not None and status != exact) or status is None or not 200 <= status < 300:
        raise Failed(code, f"{answer.url}: answered {status}, expected {exact or '2xx'}")


def json_body(answer: Answer, code: str, *, exact: int | None = None) -> Any:
    answered(answer, code, exact=exact)
    try:
        return json.loads(answer.body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        kind = answer.headers.get("Content-Type", "no content type")
        raise Failed(code, f"{answer.url}: the body is not JSON ({short(kind, 60)})") from None


def list_page(
    answer: Answer, code: str, *, exact: int | None = None
) -> tuple[list[Any], dict[str, Any] | None]:
    """A list page's items and its `metadata` object (None when it has none)."""
    page = json_body(answer, code, exact=exact)
    if not isinstance(page, dict) or not isinstance(page.get("servers"), list):
        raise Failed(code, f"{answer.url}: the body has no `servers` array")
    metadata = page.get("metadata")
    return page["servers"], metadata if isinstance(metadata, dict) else None


def item_problems(item: Any) -> list[str]:
    """Why VS Code's v0.1 serializer would reject `item` (empty: it accepts it)."""
    if not isinstance(item, dict):
        return ["is not an object"]
    found: list[str] = []
    server = item.get("server")
    if not isinstance(server, dict):
        found.append("has no `server` object")
    else:
        for key in ("name", "description", "version"):
            value = server.get(key)
            if not isinstance(value, str) or not value:
                found.append(f"`server.{key}` is not a non-empty string")
    if not isinstance(item.get("_meta"), dict):
        found.append("has no item-level `_meta` object (VS Code reads it unguarded)")
    return found


def item_key(item: Any) -> tuple[str, str]:
    """(name, version), each "" unless it is a string."""
    server = item.get("server") if isinstance(item, dict) else None
    if not isinstance(server, dict):
        return ("", "")
    name, version = server.get("name"), server.get("version")
    return (name if isinstance(name, str) else "", version if isinstance(version, str) else "")


def encode_component(text: str) -> str:
    """JavaScript's `encodeURIComponent`: `/` → `%2F`, `@` → `%40`, UTF-8 for the rest."""
    return quote(text, safe=_URI_COMPONENT_SAFE)


def base_url(base: str) -> str:
    """The base as given, encoded; a command error unless it is an http(s) URL with a host and
    without a query or fragment (clients append paths to it)."""
    url = URL(base)
    if url.scheme not in ("http", "https") or not url.host or url.raw_query_string or url.fragment:
        raise CommandFailed(
            f"--url: {short(base, 200)!r} is not an http(s) base URL without a query"
        )
    return str(url)


def header_list(value: str) -> set[str]:
    """A comma-separated header value as lower-case members."""
    return {part.strip().lower() for part in value.split(",") if part.strip()}
