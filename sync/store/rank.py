"""How ranked search reads a query, the same on every backend.

A query is reduced to its words (runs of letters and digits, case folded), so that nothing a
user types ever reaches a full-text query parser as syntax: `NEAR(`, `OR`, `-`, `*`, quotes
and `:` are separators like spaces. Every word is a prefix (`postg` finds postgres), and all
of them must match.
"""

from __future__ import annotations

import re

from sync.store.records import ServedItem
from sync.store.text import fold

__all__ = ["MAX_WORDS", "RankedItem", "words"]

MAX_WORDS = 16  # more words only narrow a match further; bound the work a query can ask for
_WORD = re.compile(r"[^\W_]+")

# A served item and its relevance: higher is better. Scales differ between backends
# (SQLite: -bm25, unbounded; PostgreSQL: ts_rank_cd normalised to 0..1): compare orders only.
RankedItem = tuple[ServedItem, float]


def words(query: str) -> list[str]:
    """The query's words, folded as the indexes fold text, at most `MAX_WORDS` of them."""
    return _WORD.findall(fold(query))[:MAX_WORDS]
