"""The doctor's view index: compact facts about every served name, gathered in one streamed
pass, so each configured server is recognised under another key (same remote URL, a filling of
a template, same package, its title) without holding whole entries."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from sync.policy.catalogue import ServerGroup
from sync.policy.invocation import Invocation, package_key, served_key
from sync.policy.mcpconfig import ConfiguredServer
from sync.policy.templates import canonical, is_template, matches

__all__ = ["Index", "host_of"]


def host_of(url: str) -> str:
    """The canonical host (and port) of `url`: a configured URL on a served host but another
    path most likely means that server."""
    return canonical(url).partition("://")[2].partition("/")[0]


@dataclass
class Index:
    """Compact facts about every name of the view, gathered in one streamed pass: enough to
    recognise a configured server under another key, never whole entries."""

    names: set[str] = field(default_factory=set)
    live: set[str] = field(default_factory=set)  # names with a version that is not deleted
    folded: dict[str, set[str]] = field(default_factory=dict)  # casefolded name or title
    titles: dict[str, set[str]] = field(default_factory=dict)
    packages: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    remotes: dict[str, set[str]] = field(default_factory=dict)  # canonical URL -> names
    templates: list[tuple[str, str]] = field(default_factory=list)
    hosts: dict[str, set[str]] = field(default_factory=dict)  # URL host -> names

    def add(self, group: ServerGroup) -> None:
        self.names.add(group.name)
        self.folded.setdefault(group.name.casefold(), set()).add(group.name)
        for v in group.versions:
            if v.status == "deleted":
                continue
            self.live.add(group.name)
            if v.title:
                self.titles.setdefault(v.title.casefold(), set()).add(group.name)
            for p in v.packages:
                key = served_key(p)
                if key is not None:
                    self.packages.setdefault(key, set()).add(group.name)
            for r in v.remotes:
                if is_template(r.url):
                    if (r.url, group.name) not in self.templates:
                        self.templates.append((r.url, group.name))
                else:
                    self.remotes.setdefault(canonical(r.url), set()).add(group.name)
                    self.hosts.setdefault(host_of(r.url), set()).add(group.name)

    def recognise(self, server: ConfiguredServer, invocation: Invocation | None) -> list[str]:
        """The served names this server recognisably is, strongest evidence first: same
        remote URL (or a filling of a template), same package, then the key as a title."""
        found: list[str] = []
        if server.url:
            found += sorted(self.remotes.get(canonical(server.url), ()))
            found += sorted(n for t, n in self.templates if matches(t, server.url))
        if invocation is not None:
            key = package_key(invocation.registry_type, invocation.identifier)
            found += sorted(self.packages.get(key, ()))
        found += sorted(self.titles.get(server.key.casefold(), ()))
        found += sorted(self.folded.get(server.key.casefold(), ()))
        return list(dict.fromkeys(found))

    def closest(self, server: ConfiguredServer) -> list[str]:
        """Up to 3 served names the entry may have meant: names and titles close to its key,
        and, for a remote, names served on the same host (same host, another path)."""
        key = server.key
        pool = {n.casefold(): {n} for n in self.names}
        for title, names in self.titles.items():
            pool.setdefault(title, set()).update(names)
        near = difflib.get_close_matches(key.casefold(), list(pool), n=6, cutoff=0.5)
        out = [n for k in near for n in sorted(pool[k])]
        if server.url:
            out = sorted(self.hosts.get(host_of(server.url), ()))[:2] + out
        return list(dict.fromkeys(out))[:3]
