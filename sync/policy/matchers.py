"""Allow and deny matchers from a served view: the `serverUrl` / `serverCommand` entries that
GitHub Copilot, VS Code and Claude Code read from `allowedMcpServers` / `deniedMcpServers`.

Sources (see /docs/policy.md):
- GitHub: https://docs.github.com/en/copilot/reference/enterprise-administrators/enterprise-managed-settings
  ("Supports `*` wildcards for subdomains or path prefixes"; `serverCommand` "Matches the exact
  command and each argument"; a server whose URL or command "contains an unresolved variable,
  such as `${VARIABLE}` or `$VARIABLE`" is blocked);
- VS Code: microsoft/vscode `src/vs/platform/mcp/common/allowedMcpServers.ts`
  (`matchesUrlPattern`: anchored, case-insensitive, `*` within the authority or anywhere after
  it; the URL compared as WHATWG `origin + pathname + search`; deny always wins);
- Claude Code: https://code.claude.com/docs/en/managed-mcp (`*` "anywhere in the pattern";
  "A pattern with no path matches any path"; `${VAR}` in `serverUrl` / `serverCommand` is
  expanded).

Every admitted version contributes one `serverUrl` per remote and one `serverCommand` per
package (`sync.launch.argv`); what a client cannot express is a warning, never a broader
entry. Refused versions (deleted; deprecated unless admitted) become deny entries, minus any
that could also match an admitted version: deny wins in every client, so such an entry would
block what the view serves. Names (`serverName`) are never emitted: they match the label a
user types in their own configuration, not the registry name, so they prove nothing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from sync.launch import argv, hint
from sync.policy import templates
from sync.policy.catalogue import ServedVersion, ServerGroup
from sync.policy.export import ExportOptions, ExportResult

__all__ = [
    "CLAUDE",
    "COPILOT",
    "MULTI_TENANT",
    "Dialect",
    "Policy",
    "build",
    "overlap",
    "url_pattern",
]

Entry = tuple[str, str | tuple[str, ...]]  # ("serverUrl", pattern) | ("serverCommand", argv)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What one client's matcher can express."""

    client: str  # for warnings
    # `*` anywhere (Claude); else only within the host, or ending the path (a path prefix).
    anywhere: bool
    # Text the client reads as a variable: the entry would be expanded or blocked.
    variable: re.Pattern[str]


COPILOT = Dialect(
    "GitHub Copilot and VS Code",
    anywhere=False,
    variable=re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*"),
)
CLAUDE = Dialect("Claude Code", anywhere=True, variable=re.compile(r"\$\{"))
# Only to put a served URL in the same form as the patterns, whatever a client can express.
_ANY = Dialect("", anywhere=True, variable=re.compile(r"(?!)"))

# WHATWG percent-encode sets (path, and query of a special URL): what `new URL` encodes, so
# an exact pattern equals the URL the client compares.
_PATH_UNSAFE = set(' "<>`{}#?')
_QUERY_UNSAFE = set(" \"<>'#")


def _encode(text: str, unsafe: set[str]) -> str:
    return "".join(
        quote(c, safe="") if c in unsafe or ord(c) < 0x21 or ord(c) > 0x7E else c for c in text
    )


def _host(host: str) -> str | None:
    try:
        return ".".join(
            label if label.isascii() else label.encode("idna").decode("ascii")
            for label in host.split(".")
        )
    except UnicodeError:
        return None


# Suffixes under which anyone may register a name, beyond what the rule below already catches
# (a short, documented list; there is no public-suffix list here): `*.github.io` admits every
# GitHub Pages site.
MULTI_TENANT = frozenset(
    {
        "github.io", "gitlab.io", "pages.dev", "workers.dev", "vercel.app", "netlify.app",
        "herokuapp.com", "appspot.com", "azurewebsites.net", "cloudfront.net",
        "amazonaws.com", "blogspot.com", "onrender.com", "fly.dev", "ngrok.io", "ngrok.app",
    }
)  # fmt: skip


def _registrable_after_wildcard(host: str) -> bool:
    """Whether the literal labels after a host's last wildcard are at least a registrable
    domain, so the wildcard only chooses subdomains of one owner's domain. The rule, without a
    public-suffix list: at least 2 literal labels; at least 3 when the TLD is a 2-letter
    country code and the label before it has at most 3 letters (`co.uk`, `com.au`, `ne.jp`,
    `gov.br`: `*.co.uk` is refused, `*.example.co.uk` kept); and never only a suffix in
    `MULTI_TENANT` (`*.github.io`)."""
    labels = host.lower().split(".")
    starred = [i for i, label in enumerate(labels) if "*" in label]
    if not starred:
        return True
    literal = labels[starred[-1] + 1 :]
    if len(literal) < 2 or ".".join(literal) in MULTI_TENANT:
        return False
    tld, second = literal[-1], literal[-2]
    return not (len(literal) == 2 and len(tld) == 2 and tld.isalpha() and len(second) <= 3)


def url_pattern(url: str, dialect: Dialect) -> tuple[str | None, str]:
    """The `serverUrl` pattern admitting `url` (a `{variable}` template becomes a `*`), or None
    and why the client cannot express it."""
    if "*" in url:
        return None, "holds a literal `*`, which the client would read as a wildcard"
    if dialect.variable.search(url):
        return None, f"holds `$…`, which {dialect.client} reads as a variable"
    templated = templates.is_template(url)
    text = templates.glob(url) if templated else templates.canonical(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return None, "is not a URL"
    if parts.scheme not in ("http", "https"):
        return None, "is not an http(s) URL"
    if "@" in parts.netloc:
        return None, "holds credentials"
    host, port = parts.netloc, ""
    if not host.endswith("]") and ":" in host:
        host, port = host.rsplit(":", 1)
    if not host or not _registrable_after_wildcard(host):
        return None, "leaves the domain to a template variable"
    if dialect.anywhere and "*" in host + port:
        # Claude's `*` is documented only as "anywhere in the pattern", not as stopping at
        # `/`: `https://*.x.example.com/mcp` would then also match
        # `https://attacker.tld/.x.example.com/mcp`. No host (or port) wildcard is safe.
        return None, (
            f"puts a template variable in the host or port, and {dialect.client}'s `*` is not "
            "documented to stop at `/`: the entry could match a URL on any host"
        )
    ascii_host = _host(host)
    if ascii_host is None:
        return None, "has a host name that cannot be encoded"
    path = _encode(parts.path or "/", _PATH_UNSAFE)
    query = _encode(parts.query, _QUERY_UNSAFE)
    # Documented forms only: `*` for subdomains (within the host) or as a path prefix.
    if not dialect.anywhere and (
        "*" in port or "*" in query or "*" in path[:-1] or ("*" in path and query)
    ):
        return None, f"puts a template variable where {dialect.client} cannot match it"
    netloc = f"{ascii_host}:{port}" if port else ascii_host
    return f"{parts.scheme}://{netloc}{path}" + (f"?{query}" if query else ""), ""


def _overlap_text(a: str, b: str) -> bool:
    # Whether some string matches both `*` globs (`*` = any text), case-insensitively: an
    # over-approximation of every client's rule, so a doubtful deny entry is dropped.
    a, b = a.lower(), b.lower()
    n, m = len(a), len(b)
    if n * m > 4_000_000:
        return True
    # reach[i][j]: the prefixes a[:i] and b[:j] can produce a common string.
    reach = [[False] * (m + 1) for _ in range(n + 1)]
    reach[0][0] = True
    for i in range(n + 1):
        row = reach[i]
        for j in range(m + 1):
            if not row[j]:
                continue
            if i < n and a[i] == "*":
                reach[i + 1][j] = True  # a's star ends here
                if j < m:
                    row[j + 1] = True  # a's star absorbs b[j] (a char, or b's star's text)
            if j < m and b[j] == "*":
                row[j + 1] = True
                if i < n:
                    reach[i + 1][j] = True
            if i < n and j < m and a[i] == b[j] and a[i] != "*":
                reach[i + 1][j + 1] = True
    return reach[n][m]


def overlap(a: str, b: str) -> bool:
    """Whether one URL could match both patterns (each `*` standing for any text)."""
    if "*" not in a and "*" not in b:
        return a.lower() == b.lower()
    head_a, head_b = a.split("*", 1)[0].lower(), b.split("*", 1)[0].lower()
    if not (head_a.startswith(head_b) or head_b.startswith(head_a)):
        return False
    return _overlap_text(a, b)


@dataclass(slots=True)
class Policy:
    """The matchers of one view for one client: JSON-ready, deduplicated and sorted."""

    allowed: list[dict[str, Any]] = field(default_factory=list)
    denied: list[dict[str, Any]] = field(default_factory=list)
    servers: int = 0
    warnings: list[str] = field(default_factory=list)

    def result(self, *more_warnings: str) -> ExportResult:
        """What an allow/deny export reports: its servers, every matcher, its warnings."""
        return ExportResult(
            servers=self.servers,
            entries=len(self.allowed) + len(self.denied),
            warnings=[*self.warnings, *more_warnings],
        )


def _label(version: ServedVersion) -> str:
    return f"{version.name!r} version {version.version!r}"


def _commands(package: dict[str, Any]) -> tuple[tuple[str, ...] | None, str]:
    words = argv(package)
    if words is not None:
        return tuple(words), ""
    kind, ident = package.get("registryType"), package.get("identifier")
    what = f"package {ident!r} ({kind!r})"
    if hint(package) is None:
        return None, f"{what} has no launcher a client builds a command line for"
    return None, f"{what} needs a value the user supplies at install time"


def _entries(version: ServedVersion, dialect: Dialect, warn: list[str] | None) -> list[Entry]:
    found: list[Entry] = []
    for remote in version.remotes:
        pattern, why = url_pattern(remote.url, dialect)
        if pattern is not None:
            found.append(("serverUrl", pattern))
        elif warn is not None:
            warn.append(
                f"{_label(version)}: remote URL {remote.url!r} {why}; no serverUrl entry "
                f"for {dialect.client}."
            )
    for package in version.packages:
        words, why = _commands(package)
        if words is not None and dialect.variable.search("\0".join(words)):
            words, why = (
                None,
                f"command line holds `$…`, which {dialect.client} reads as a variable",
            )
        if words is not None:
            found.append(("serverCommand", words))
        elif warn is not None:
            warn.append(f"{_label(version)}: {why}; no serverCommand entry for {dialect.client}.")
    if not found and warn is not None and not version.remotes and not version.packages:
        warn.append(f"{_label(version)} has no package or remote to match; nothing admits it.")
    return found


def _served_urls(version: ServedVersion) -> Iterable[str]:
    # What a client may reach for an admitted version, expressible or not (as a pattern, in the
    # patterns' form when it has one): a deny entry matching any of it would block the version.
    for remote in version.remotes:
        pattern, _ = url_pattern(remote.url.replace("*", "%2A"), _ANY)
        yield pattern or (
            templates.glob(remote.url) if templates.is_template(remote.url) else remote.url
        )


def _json(entry: Entry) -> dict[str, Any]:
    kind, value = entry
    return {kind: list(value) if isinstance(value, tuple) else value}


def _order(entry: Entry) -> tuple[str, str, tuple[str, ...]]:
    kind, value = entry
    return (kind, value, ()) if isinstance(value, str) else (kind, "", value)


async def build(
    servers: AsyncIterator[ServerGroup], options: ExportOptions, dialect: Dialect
) -> Policy:
    """The allow and deny matchers of a view for `dialect`'s clients."""
    policy = Policy()
    allow: set[Entry] = set()
    deny: set[Entry] = set()
    served_urls: list[str] = []
    served_commands: set[tuple[str, ...]] = set()
    deprecated = options.include_deprecated
    async for group in servers:
        admitted = False
        for version in group.allowed(include_deprecated=deprecated):
            entries = _entries(version, dialect, policy.warnings)
            admitted = admitted or bool(entries)
            allow.update(entries)
            served_urls.extend(_served_urls(version))
            served_commands.update(e[1] for e in entries if isinstance(e[1], tuple))
        for version in group.refused(include_deprecated=deprecated):
            deny.update(_entries(version, dialect, None))
        policy.servers += admitted
    exact = {u.lower() for u in served_urls if "*" not in u}
    wild = sorted({u for u in served_urls if "*" in u})

    def blocks_served(entry: Entry) -> bool:
        value = entry[1]
        if isinstance(value, tuple):
            return value in served_commands
        if "*" not in value and value.lower() in exact:
            return True
        return any(overlap(value, u) for u in wild) or (
            "*" in value and any(overlap(value, u) for u in exact)
        )

    policy.allowed = [_json(e) for e in sorted(allow, key=_order)]
    policy.denied = [_json(e) for e in sorted(deny - allow, key=_order) if not blocks_served(e)]
    return policy
