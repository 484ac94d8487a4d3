"""A one-entry page too large to read: named from its two ends and stepped over.

A page that stays over `max_response_bytes` is re-read in smaller pages; when a page of one
entry is still over it, that entry alone is the cause. Its body is read to the end keeping only
its first and last 64 KiB, so an entry of any size costs a bounded amount of memory.
"""

from __future__ import annotations

import json
import re

from sync.pull.wire import MalformedPage, Page, decode_body, read_cursor, reject

__all__ = ["ENDS", "salvage_page"]


ENDS = 64 * 1024
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.){1,200})"')
_VERSION = re.compile(r'"version"\s*:\s*"((?:[^"\\]|\\.){1,255})"')
_TAIL_CURSOR = re.compile(r'"(?:nextCursor|next_cursor)"\s*:\s*("(?:[^"\\]|\\.)*"|null)')


def salvage_page(head: bytes, tail: bytes, size: int, cap: int) -> Page:
    """A one-entry page too large to read: the entry is rejected, named from the head of
    the body where it can be, and the listing goes on from the cursor in its tail. Only the
    two ends are ever held, so an entry of any size costs a bounded amount of memory."""
    start, end = decode_body(head), decode_body(tail)
    name, version = _NAME.search(start), None
    if name is not None:
        version = _VERSION.search(start, name.end())
    cursor = _TAIL_CURSOR.search(end)
    if cursor is None:
        raise MalformedPage(f"a {size}-byte single-entry page whose end holds no nextCursor")
    page = Page()
    read_cursor(page, json.loads(cursor.group(1)))
    label = name.group(1) if name else None
    found = version.group(1) if version else None
    if found is None and label and page.next_cursor and page.next_cursor.startswith(label + ":"):
        # The official cursor of a one-entry page is that entry's own "name:version".
        found = page.next_cursor[len(label) + 1 :]
    reason = f"entry alone is a {size}-byte page, over the {cap}-byte response cap"
    page.rejected.append(reject(reason, start[:4096], label, found))
    return page
