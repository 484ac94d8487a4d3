"""The mirror's `updatedAt` clock, the same for every backend's writer."""

from __future__ import annotations

from datetime import datetime, timedelta

from sync.model import format_stamp, utcnow

__all__ = ["Stamps"]

_TICK = timedelta(microseconds=1)


class Stamps:
    """Hands out mirror timestamps, each strictly later than every one before it: those this
    writer gave and those it was told of (`after`), whatever the wall clock does."""

    def __init__(self) -> None:
        self._last = utcnow()
        self._second = self._last.replace(microsecond=0) - timedelta(seconds=1)
        self._prefix = ""

    def after(self, stored: str | None) -> None:
        """Continue after `stored` (the largest stamp in the store: another leader's, or one
        written while the clock ran ahead)."""
        if stored:
            self._last = max(self._last, datetime.fromisoformat(stored))

    def next(self) -> str:
        now = utcnow()
        if now <= self._last:
            now = self._last + _TICK
        self._last = now
        # Most stamps of a page fall in the same second: reuse its formatted prefix.
        second = now.replace(microsecond=0)
        if second != self._second:
            self._second, self._prefix = second, format_stamp(second)[:19]
        return f"{self._prefix}.{now.microsecond:06d}Z"
