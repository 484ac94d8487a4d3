"""Remote URLs as clients compare them, and `{variable}` templates in them.

A remote's URL may hold variables (`https://{tenant}.example.com/mcp`, the draft schema's
`remotes[].variables`) that the client fills in; an allowlist then needs the wildcard form the
client understands, and the doctor needs to tell whether a configured URL is one filling of a
served template. Both start from the same canonical form: lowercase scheme and host, no
default port, no fragment, no trailing dot on the host, as GitHub's managed settings document
for `serverUrl`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["canonical", "glob", "is_template", "matches", "variables"]

_VAR = re.compile(r"\{([^{}/]+)\}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SPECIAL = re.compile(r"\s*https?:", re.IGNORECASE)
# What a filling may hold: never a component separator (`/ ? #`, and `\`, which WHATWG reads
# as `/`), nor `@` (text before it in the authority is userinfo: the host would come after),
# nor whitespace.
_FILLING = r"[^/?#\\@\s]+"


def variables(url: str) -> list[str]:
    """The template variables of `url`, in order of appearance."""
    return _VAR.findall(url)


def is_template(url: str) -> bool:
    return bool(_VAR.search(url))


def _slashes(url: str) -> str:
    # WHATWG: in an http(s) URL a `\` before the query is a `/` (`https://evil.com\.x.com/`
    # is host evil.com in every browser and in Node's `new URL`), whatever urlsplit thinks.
    if not _SPECIAL.match(url):
        return url
    end = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
    return url[:end].replace("\\", "/") + url[end:]


def canonical(url: str) -> str:
    """`url` as an allowlist compares it; a URL that cannot be parsed comes back unchanged
    (it then matches only itself)."""
    try:
        parts = urlsplit(_slashes(url.strip()))
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def _canonical_template(template: str) -> str:
    # urlsplit would read `{port}` as a bad port and `{host}` as a host: canonicalise with
    # each variable standing in as a plain token, then put the variables back.
    tokens = {f"tplvar{i}x": m.group(0) for i, m in enumerate(_VAR.finditer(template))}
    text = template
    for token, var in tokens.items():
        text = text.replace(var, token, 1)
    text = canonical(text)
    for token, var in tokens.items():
        text = text.replace(token, var, 1)
    return text


def glob(template: str) -> str:
    """The template with each `{variable}` as a `*` wildcard, canonical."""
    return _VAR.sub("*", _canonical_template(template))


def matches(template: str, url: str) -> bool:
    """Whether `url` is `template` with each variable filled by a non-empty value that stays
    within its URL component: never crossing a `/`, `?`, `#` or `\\` (a `/` to a browser), nor
    holding `@` or whitespace, so a filling of the host is never read as another host."""
    want = _canonical_template(template)
    pattern = "".join(
        _FILLING if _VAR.fullmatch(piece) else re.escape(piece)
        for piece in re.split(r"(\{[^{}/]+\})", want)
        if piece
    )
    return re.fullmatch(pattern, canonical(url)) is not None
