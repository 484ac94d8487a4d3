"""Durations as operators write them: seconds, "1h30m", or ISO 8601 ("PT1H30M", "P1D")."""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SHORT = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_NUMBER = r"(\d+(?:[.,]\d+)?)"
# ISO 8601 durations of fixed length only: years and months have none (a month is 28 to 31
# days), so P1M would be a guess. Weeks may be combined with the rest (ISO 8601-2 allows it).
_ISO = re.compile(
    rf"P(?:{_NUMBER}W)?(?:{_NUMBER}D)?(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?"
)
_ISO_UNITS = (604800.0, 86400.0, 3600.0, 60.0, 1.0)
_HINT = "use seconds, a string such as '15m' or '1h30m', or ISO 8601 such as 'PT15M'"


def _iso(text: str) -> float | None:
    """Seconds from an ISO 8601 duration (already upper-cased), or None if it is not one."""
    match = _ISO.fullmatch(text)
    if match is None or text.endswith("T"):
        return None
    given = [(part, unit) for part, unit in zip(match.groups(), _ISO_UNITS, strict=True) if part]
    # ISO 8601 allows a decimal fraction on the smallest unit written, and only there.
    if not given or any(not part.isdigit() for part, _ in given[:-1]):
        return None
    return sum(float(part.replace(",", ".")) * unit for part, unit in given)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string: "90", "15m", "1h30m", "2d", or ISO 8601 ("PT1H",
    "P1D", "PT0.5S", any case). Always finite: an infinite interval would stop a schedule."""
    seconds: float | None = None
    if isinstance(value, bool):
        pass  # TOML's `true` is no duration, though Python counts it as 1
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text[:1] in ("P", "p"):
            if re.fullmatch(r"P(\d+[YM])+.*", text.upper()):
                raise ValueError(
                    f"invalid duration {value!r}: years and months have no fixed length; "
                    "use days or weeks (P30D, P4W)"
                )
            seconds = _iso(text.upper())
        else:
            lowered = text.lower()
            try:
                seconds = float(lowered) if re.fullmatch(r"[0-9.eE+-]+", lowered) else None
            except ValueError:
                seconds = None
            parts = _SHORT.findall(lowered)
            if seconds is None and parts and _SHORT.sub("", lowered).strip() == "":
                seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds is None:
        raise ValueError(f"invalid duration {value!r}: {_HINT}")
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: must be a finite number of seconds")
    return seconds
