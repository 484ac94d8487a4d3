"""How search compares text, the same on every backend."""

from __future__ import annotations

__all__ = ["fold"]


def fold(text: str) -> str:
    """The case-insensitive form search compares: each character's simple lowercase mapping.

    PostgreSQL's ILIKE, which the official service's search runs, lowercases both sides one
    character at a time, for all of Unicode (`É` finds `é`, `Ж` finds `ж`). Mapping character
    by character, never by context, keeps every substring of a text a substring of its folded
    form, so a term folded alone matches inside a folded description. `str.lower()` is that,
    except for its two contextual or longer results: a final capital sigma (U+03A3) becomes
    final sigma (U+03C2) by context, and `İ` (U+0130) becomes `i` + U+0307, two characters.
    Their simple mappings, sigma (U+03C3) and `i`, keep the fold one character for one, as
    ILIKE's is.
    """
    if text.isascii():
        return text.lower()
    return text.replace("\u03a3", "\u03c3").replace("\u0130", "i").lower()
