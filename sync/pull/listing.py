"""What makes a run of pages a listing: every pass terminates, and a name is decided only
once all of its versions in the pass are stored.

Pure bookkeeping over what the pages said; the engine asks, and fails the pass with
`MalformedListing` where a listing cannot be trusted. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sync.errors import MalformedListing
from sync.pull.upstream import Fetched

__all__ = ["ListingGuard", "NameOrder"]

# Slack for a listing's ends: the official off-by-one empty page, a short first or last page.
_SLACK_PAGES = 10


class ListingGuard:
    """Refuses a listing that cannot end: a cursor this pass already followed (a cycle of
    any length), an unusable cursor, a full page without one, more pages than the entries
    they brought can explain, or more entries than `max_entries`."""

    def __init__(
        self, page_size: int, start: str | None, *, max_entries: int, upstream: str
    ) -> None:
        self._page_size = page_size
        self._max_entries = max_entries
        self._upstream = upstream
        # Digests, not the cursors: a hostile upstream's cursors may be kilobytes each.
        self._seen: set[bytes] = {_digest(start)} if start else set()
        self.pages = 0.0
        self.distinct = 0

    def follow(self, fetched: Fetched) -> str | None:
        """The cursor to follow after this page (None: the listing ended), or raise."""
        page = fetched.page
        self.pages += fetched.limit / self._page_size  # pages narrowed round a bad entry weigh less
        if page.cursor_error:
            raise MalformedListing(f"{self._upstream}: malformed listing: {page.cursor_error}")
        cursor = page.next_cursor
        if cursor is None:
            if page.cursor_null and fetched.full:
                raise MalformedListing(
                    f"{self._upstream}: malformed listing: a full page of {fetched.limit} "
                    "ends with a null nextCursor (is that the end, or a lost position?)"
                )
            return None
        digest = _digest(cursor)
        if digest in self._seen:
            raise MalformedListing(
                f"{self._upstream}: malformed listing: nextCursor {cursor[:80]!r} revisits a "
                "cursor this pass already followed (the pages go round in a cycle)"
            )
        self._seen.add(digest)
        return cursor

    def counted(self, entries: int, repeated: int) -> None:
        """Entries a stored page brought, and how many of them this pass had seen before."""
        self.distinct += entries - repeated
        if self.distinct > self._max_entries:
            raise MalformedListing(
                f"{self._upstream}: malformed listing: over max_entries "
                f"({self._max_entries}) distinct entries in one pass"
            )

    def plausible(self, held: int | None = None) -> bool:
        """Whether the pages so far fit what the entries can explain: twice the pages the
        distinct entries (and, when given, the entries held) fill, plus slack."""
        entries = self.distinct + (held or 0)
        return self.pages <= 2 * -(-entries // self._page_size) + _SLACK_PAGES

    def overrun(self) -> MalformedListing:
        return MalformedListing(
            f"{self._upstream}: malformed listing: {self.pages:.0f} pages brought only "
            f"{self.distinct} distinct entries (fresh cursors, the same content)"
        )


class NameOrder:
    """Pages come in (name, version) order, so once a later name appears an earlier one has
    all its versions: only then may rules that look at every version (`latest_versions`,
    `isLatest`) decide it. A listing found out of order defers every name to the pass end."""

    def __init__(self, last: str | None = None, unordered: bool = False) -> None:
        self.last = last
        self.unordered = unordered

    def boundary(self, names: Sequence[str]) -> str | None:
        """Names sorting before the result are complete; None: none is known to be."""
        if not self.unordered:
            previous = self.last
            for name in names:
                if previous is not None and name < previous:
                    self.unordered = True
                    break
                previous = name
        if names and not self.unordered:
            self.last = names[-1]
        return None if self.unordered else self.last


def _digest(cursor: str) -> bytes:
    return hashlib.blake2b(cursor.encode(), digest_size=16).digest()
