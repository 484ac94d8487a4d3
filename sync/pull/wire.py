"""Reading registry pages off the wire without losing a byte.

The official registry re-marshals `server` from its Go model, other registries may not, and
tomorrow's schema adds fields we do not know: so each entry's `server` and `_meta` are kept as
the exact text received. The page is walked with the C JSON scanner (`raw_decode`), which parses
every value once and tells where it ends, so the raw spans cost no second parse.

Accepted shapes: the current envelope `{"servers": [{"server", "_meta"}], "metadata":
{"nextCursor"}}`; the 2025-07 flat envelope (server objects carrying their official `_meta`
inside, `next_cursor`); and a bare JSON list of either (dumps, seed files).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sync.model import OFFICIAL, STATUSES, Entry, Rejected

__all__ = [
    "MalformedPage",
    "Page",
    "decode_body",
    "parse_page",
    "read_cursor",
    "reject",
]

NAME = re.compile(r"^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+$")
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class MalformedPage(ValueError):
    """The body is not a registry page at all (HTML, truncated, wrong shape)."""


# A cursor longer than this cannot be an honest position in a listing; it would also make the
# next request's URL longer than servers accept.
MAX_CURSOR_CHARS = 4096
_SURROGATE = re.compile("[\ud800-\udfff]")
# Strings and brackets only: enough to find where a value ends without decoding it.
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.DOTALL)


@dataclass(slots=True)
class Page:
    entries: list[Entry] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    next_cursor: str | None = None
    # Set when `nextCursor` is there but unusable (a number, an object, invalid text): the
    # listing is malformed, which is never the same as "the end of the list".
    cursor_error: str | None = None
    # `nextCursor` given explicitly as null or "": the end, unless the page is full.
    cursor_null: bool = False

    @property
    def size(self) -> int:
        """Items the upstream sent, readable or not: what its `limit` counts."""
        return len(self.entries) + len(self.rejected)


def _skip(text: str, i: int) -> int:
    match = _WS.match(text, i)
    return match.end() if match else i


def _key(text: str, i: int) -> tuple[str, int]:
    """Read `"key" :` at text[i]; return the key and where its value starts."""
    key, i = _DECODER.raw_decode(text, i)
    if not isinstance(key, str):
        raise MalformedPage("object key is not a string")
    i = _skip(text, i)
    if not text.startswith(":", i):
        raise MalformedPage(f"expected ':' at offset {i}")
    return key, _skip(text, i + 1)


def _next(text: str, i: int, close: str) -> int | None:
    """After a value: the start of the next one, or None when `close` ends the container."""
    i = _skip(text, i)
    if text.startswith(",", i):
        return _skip(text, i + 1)
    if text.startswith(close, i):
        return None
    raise MalformedPage(f"expected ',' or '{close}' at offset {i}")


_Members = dict[str, tuple[Any, int, int]]


def _members(text: str, i: int) -> tuple[_Members, int]:
    """Each member of the object at text[i] == '{' as key -> (value, start, end), and its end."""
    members: _Members = {}
    i = _skip(text, i + 1)
    if text.startswith("}", i):
        return members, i + 1
    while True:
        key, start = _key(text, i)
        value, end = _DECODER.raw_decode(text, start)
        members[key] = (value, start, end)
        nxt = _next(text, end, "}")
        if nxt is None:
            return members, _skip(text, end) + 1
        i = nxt


def decode_body(body: bytes) -> str:
    """UTF-8 text of a body; invalid bytes survive as lone surrogates (surrogateescape), so
    the entries that hold them can be rejected one by one instead of losing the page."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("utf-8", errors="surrogateescape")


def parse_page(body: str | bytes, *, max_entry_chars: int = 1 << 20) -> Page:
    """Split a page body into entries, rejected entries and the next cursor.

    Raises MalformedPage when the body as a whole is unreadable, which callers treat as a
    transient upstream fault; a single bad entry is only rejected, whatever it holds.
    """
    text = decode_body(body) if isinstance(body, bytes) else body
    text = text.removeprefix("\ufeff")
    i = _skip(text, 0)
    page = Page()
    try:
        if text.startswith("[", i):
            end = _collect(text, i, page, max_entry_chars)
        elif text.startswith("{", i):
            end = _envelope(text, i, page, max_entry_chars)
        else:
            raise MalformedPage("response is not JSON (expected an object or a list)")
    except MalformedPage:
        raise
    except (ValueError, RecursionError, IndexError) as exc:
        raise MalformedPage(f"invalid JSON: {_brief(exc)}") from None
    if _skip(text, end) != len(text):
        raise MalformedPage("trailing data after the JSON document")
    return page


def _envelope(text: str, i: int, page: Page, max_chars: int) -> int:
    """Walk `{"servers": [...], "metadata": {...}}`; return the offset after its '}'."""
    seen_list = False
    i = _skip(text, i + 1)
    while not text.startswith("}", i):
        key, start = _key(text, i)
        if key == "servers" and text.startswith("[", start):
            seen_list = True
            end = _collect(text, start, page, max_chars)
        else:
            value, end = _DECODER.raw_decode(text, start)
            if key == "metadata" and isinstance(value, dict):
                for name in ("nextCursor", "next_cursor"):
                    if name in value:
                        read_cursor(page, value[name])
                        break
        nxt = _next(text, end, "}")
        if nxt is None:
            i = _skip(text, end)
            break
        i = nxt
    if not seen_list:
        raise MalformedPage("no 'servers' list in the response")
    return i + 1


def _collect(text: str, i: int, page: Page, max_chars: int) -> int:
    """Parse each element of the array at text[i] == '['; return the offset after its ']'."""
    i = _skip(text, i + 1)
    if text.startswith("]", i):
        return i + 1
    while True:
        try:
            if text.startswith("{", i):
                members, end = _members(text, i)
                outcome = _entry(text, members, i, end, max_chars)
            else:
                _, end = _DECODER.raw_decode(text, i)
                outcome = reject("entry is not a JSON object", text[i:end])
        except Exception as exc:
            # Whatever one entry holds (thousands of digits, nesting past the decoder's depth,
            # control characters, a key that is not a string, a value of a type no check
            # foresaw), step over it by its brackets and keep the rest of the page; only a
            # body whose brackets do not close is lost.
            end = _value_end(text, i)
            reason = (
                "nested deeper than the decoder allows"
                if isinstance(exc, RecursionError)
                else f"unreadable JSON: {_brief(exc)}"
            )
            outcome = reject(reason, text[i:end].rstrip())
        if isinstance(outcome, Entry):
            page.entries.append(outcome)
        else:
            page.rejected.append(outcome)
        nxt = _next(text, end, "]")
        if nxt is None:
            return _skip(text, end) + 1
        i = nxt


def _value_end(text: str, i: int) -> int:
    """Where the JSON value at text[i] ends, found by its brackets alone: no recursion and no
    number conversion, so it steps over anything the decoder refused."""
    depth = 0
    for match in _STRUCTURE.finditer(text, i):
        token = match.group()
        if token in "[{":
            depth += 1
        elif token in "]}":
            if depth == 0:
                return match.start()
            depth -= 1
            if depth == 0:
                return match.end()
        elif token == "," and depth == 0:
            return match.start()
    raise MalformedPage(f"unterminated value at offset {i}")


def _brief(exc: BaseException) -> str:
    return str(exc)[:200]


def read_cursor(page: Page, value: object) -> None:
    if value is None or value == "":
        page.cursor_null = True
    elif not isinstance(value, str):
        page.cursor_error = (
            f"nextCursor is a JSON {_JSON_TYPES.get(type(value), 'value')}, not a string"
        )
    elif len(value) > MAX_CURSOR_CHARS:
        page.cursor_error = f"nextCursor is {len(value)} characters long"
    elif _SURROGATE.search(value) or any(ord(c) < 0x20 for c in value):
        page.cursor_error = "nextCursor is not valid text (control characters or invalid UTF-8)"
    else:
        page.next_cursor = value


_JSON_TYPES = {dict: "object", list: "array", int: "number", float: "number", bool: "boolean"}


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    # surrogateescape puts an invalid byte b at U+DC00 + b; any other surrogate came as \\uXXXX.
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _safe(raw: str) -> str:
    """Lone surrogates cannot be stored or shown: write them as escapes."""
    return raw if raw.isascii() else _SURROGATE.sub(_escape, raw)


def reject(reason: str, raw: str, name: object = None, version: object = None) -> Rejected:
    raw = _safe(raw)
    if isinstance(name, str) and isinstance(version, str):
        key = _safe(f"{name}@{version}")
    else:
        key = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()[:24]
    return Rejected(key=key[:600], reason=reason, raw=raw[:4096])


def _text(value: str | None) -> str | None:
    """A copy for indexes and served `_meta`: a lone surrogate (a `\\ud800` escape) cannot be
    encoded, so it becomes U+FFFD there; the stored raw JSON keeps the escape as sent."""
    if value is None or value.isascii():
        return value
    return _SURROGATE.sub("\ufffd", value)


def _entry(text: str, spans: _Members, start: int, end: int, max_chars: int) -> Entry | Rejected:
    raw = text[start:end]
    if end - start > max_chars:
        return reject(f"entry is {end - start} characters, over the {max_chars} cap", raw)
    if not raw.isascii() and _SURROGATE.search(raw):
        # Only invalid UTF-8 in the body puts a surrogate in the raw text itself.
        return reject("entry is not valid UTF-8", raw)
    if "server" in spans:
        server, s, e = spans["server"]
        server_raw = text[s:e]
        meta_value = spans.get("_meta", (None, 0, 0))
        meta, meta_raw = meta_value[0], text[meta_value[1] : meta_value[2]] or None
    else:  # 2025-07 flat shape: the item is the server, official facts in its own _meta
        server, server_raw, meta, meta_raw = {k: v[0] for k, v in spans.items()}, raw, None, None
    if not isinstance(server, dict):
        return reject("'server' is not a JSON object", raw)
    name, version = server.get("name"), server.get("version")
    if not isinstance(name, str) or not name:
        return reject("missing or non-string 'name'", raw, name, version)
    if not isinstance(version, str) or not version:
        return reject("missing or non-string 'version'", raw, name, version)
    if not (3 <= len(name) <= 200 and NAME.match(name)):
        reason = "name does not match the server.json pattern namespace/name"
        return reject(reason, raw, name, version)
    if len(version) > 255:
        return reject("version is longer than 255 characters", raw, name, version)
    if _text(version) != version:
        return reject("version is not valid Unicode (a lone surrogate)", raw, name, version)
    if meta is not None and not isinstance(meta, dict):
        return reject("'_meta' is not a JSON object", raw, name, version)
    description = server.get("description", "")
    if not isinstance(description, str):
        return reject("'description' is not a string", raw, name, version)
    facts = _official(meta, server)
    if isinstance(facts, str):
        return reject(facts, raw, name, version)
    status, message, changed, published, updated = facts
    digest = hashlib.blake2b(
        server_raw.encode() + b"\0" + (meta_raw or "").encode(), digest_size=16
    ).digest()
    return Entry(
        name,
        version,
        server_raw,
        meta_raw,
        status,
        _text(message),
        changed,
        published,
        updated,
        _text(description) or "",
        digest,
    )


_Facts = tuple[str, str | None, str | None, str | None, str | None]


def _official(meta: dict[str, Any] | None, server: dict[str, Any]) -> _Facts | str:
    """The official facts, from the current nesting or the 2025-07 snake_case one."""
    official: dict[str, Any] = {}
    for source in (meta, server.get("_meta")):
        if isinstance(source, dict) and isinstance(source.get(OFFICIAL), dict):
            official = source[OFFICIAL]
            break
    status = official.get("status", server.get("status", "active"))
    if not isinstance(status, str) or status not in STATUSES:
        return f"unknown status {status!r}"
    values: list[str | None] = []
    for camel, snake in (
        ("statusMessage", "status_message"),
        ("statusChangedAt", "status_changed_at"),
        ("publishedAt", "published_at"),
        ("updatedAt", "updated_at"),
    ):
        value = official.get(camel, official.get(snake))
        if value is not None and not isinstance(value, str):
            return f"official '{camel}' is not a string"
        if value is not None and camel != "statusMessage" and not _is_timestamp(value):
            return f"official '{camel}' is not an RFC 3339 timestamp: {value[:40]!r}"
        values.append(value)
    return (status, values[0], values[1], values[2], values[3])


def _is_timestamp(value: str) -> bool:
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False
