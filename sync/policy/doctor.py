"""`subregistry doctor --mcp-json`: would a registry-only client allow each configured server,
and an allowlist exported from this view, and if not, exactly why and how to fix it.

What is checked, and where each rule comes from:
- A registry-only VS Code (`chat.mcp.access` = `registry`) keeps a server only when its local
  name equals a registry entry's `name` exactly, and, for a remote, when its configured URL is
  one of that entry's `remotes[].url` (string equality). Source: microsoft/vscode
  `src/vs/workbench/contrib/mcp/browser/mcpWorkbenchService.ts` (`getEnablementStatus`) and
  GitHub's "local servers must be included in your registry with the correct server ID, which
  must exactly match the installed server ID" (docs.github.com/en/copilot/how-tos/
  administer-copilot/manage-mcp-usage/restrict-based-on-registry).
- An allowlist exported from the view (`allowedMcpServers`: Copilot managed settings, VS Code
  `chat.mcp.allowedServers`, Claude Code managed settings) admits a local server by its exact
  argv ("Commands match exactly. Every argument, in order": code.claude.com/docs/en/managed-mcp)
  as `sync.launch.argv` builds it for an admitted version, and leaves out deleted versions and,
  unless exported with `--include-deprecated`, deprecated ones.
- A URL or command still holding `${...}` is blocked by Copilot when the variable stays
  unresolved (docs.github.com configure-enterprise-allowlist, evaluation rule 4): noted, not
  counted as a block, since the client normally fills it in.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync.config import Config
from sync.curate.explain import explain
from sync.launch import argv
from sync.policy.catalogue import ServedVersion, ServerGroup, groups, version_of
from sync.policy.doctor_index import Index, host_of
from sync.policy.invocation import (
    Invocation,
    identify,
    image_repository,
    package_key,
    served_key,
)
from sync.policy.mcpconfig import ConfiguredServer, read, references
from sync.policy.report import Finding, Problem, Report
from sync.policy.templates import is_template, matches
from sync.store import Reader

__all__ = ["diagnose"]


def _dropped(report: dict[str, Any]) -> list[str]:
    """Why explain says no copy is served in the view: the rules that dropped it (with their
    reasons), else the decision's own reason."""
    out: list[str] = []
    for block in report["upstreams"]:
        for copy in block["versions"]:
            own = copy.get("in_view")
            if not copy["served"]:
                rules, reason = copy["rules"], copy["reason"]
            elif own is not None and not own["served"]:
                rules, reason = own["rules"], own["reason"]
            else:
                return []  # some copy is served: the view does hold it
            drops = [
                f"rule {r['rule']} dropped it ({r.get('reason', '')})"
                for r in rules
                if r["verdict"] == "drop"
            ]
            out += drops or [str(reason)]
    return list(dict.fromkeys(out))


def _details(name: str | None, version: str | None, status: str | None) -> dict[str, Any]:
    return {"name": name, "version": version, "status": status}


def _shell(words: Iterable[str]) -> str:
    # Shown, never run: quoted so that an argument with a space reads as one argument.
    return shlex.join(words)


def _pinned(rows: list[ServedVersion], invocation: Invocation) -> ServedVersion | None:
    """The served version whose package the configured command pins (its package version,
    an image tag within the identifier, or else the server version itself)."""
    want = package_key(invocation.registry_type, invocation.identifier)
    hits: list[ServedVersion] = []
    for v in rows:
        for p in v.packages:
            if served_key(p) != want:
                continue
            ident = p.get("identifier") if isinstance(p.get("identifier"), str) else ""
            tag = image_repository(str(ident))[1] if invocation.registry_type == "oci" else ""
            if invocation.version in {p.get("version"), tag} or (
                not p.get("version") and not tag and v.version == invocation.version
            ):
                hits.append(v)
    order = {"active": 0, "deprecated": 1, "deleted": 2}
    return min(hits, key=lambda v: order.get(v.status, 3), default=None)


def _status_problem(v: ServedVersion, current: ServedVersion | None, view: str) -> Problem:
    then = f"version {current.version}" if current else None
    if v.status == "deleted":
        return Problem(
            "deleted",
            f"{v.name} {v.version} is deleted in view {view}: no client and no exported "
            "allowlist will run it",
            f"move to {then}" if then else "remove the server: the view serves no version of it",
        )
    return Problem(
        "deprecated",
        f"{v.name} {v.version} is deprecated in view {view}: an allowlist exported without "
        "--include-deprecated leaves it out",
        (f"move to {then}, or " if then else "") + "export the allowlist with --include-deprecated",
    )


def _remote_problems(server: ConfiguredServer, target: ServedVersion) -> tuple[list[Problem], str]:
    """A remote's URL against the served remotes: exact equality, or a filling of a
    template; otherwise the closest served URL (same host first)."""
    urls = [r.url for r in target.remotes]
    if not urls:
        launch = next((argv(p) for p in target.packages if argv(p)), None)
        fix = f"configure it as a local server: {_shell(launch)}" if launch else ""
        return [
            Problem(
                "remote-mismatch",
                f"{target.name} {target.version} is not hosted: the registry lists no remote "
                f"URL for it, only packages, so {server.url} matches nothing",
                fix,
            )
        ], ""
    if server.url in urls:
        return [], ""
    for url in urls:
        if is_template(url) and matches(url, server.url):
            return [], url
    same_host = [u for u in urls if host_of(u) == host_of(server.url)]
    near = difflib.get_close_matches(server.url, same_host or urls, n=1, cutoff=0.0)
    best = near[0] if near else urls[0]
    return [
        Problem(
            "remote-mismatch",
            f"{server.url} is not one of the remote URLs {target.name} {target.version} "
            f"serves ({', '.join(urls)})",
            f"set the url to {best}" + (" (filling in its variables)" if is_template(best) else ""),
        )
    ], ""


def _package_problems(
    server: ConfiguredServer,
    invocation: Invocation | None,
    target: ServedVersion,
    admitted: list[ServedVersion],
) -> list[Problem]:
    """A local server's command against the served packages: the same package (registry type
    and identifier), then the exact argv an exported allowlist admits."""
    if not target.packages:
        urls = [r.url for r in target.remotes]
        return [
            Problem(
                "package-mismatch",
                f"{target.name} {target.version} publishes no package to run locally"
                + (f"; it is hosted at {urls[0]}" if urls else ""),
                f"configure it as a remote server with url {urls[0]}" if urls else "",
            )
        ]
    served = [(p, served_key(p)) for p in target.packages]
    if invocation is not None and all(
        k != package_key(invocation.registry_type, invocation.identifier) for _, k in served
    ):
        listed = ", ".join(f"{p.get('registryType')} {p.get('identifier')}" for p, _ in served)
        return [
            Problem(
                "package-mismatch",
                f"`{_shell(server.argv)}` runs {invocation.registry_type} package "
                f"{invocation.identifier}, but {target.name} {target.version} publishes "
                f"{listed}",
                f"run the published package instead: {_shell(argv(target.packages[0]) or [])}"
                if argv(target.packages[0])
                else f"run the published package ({listed})",
            )
        ]
    exact = {tuple(a) for v in admitted for p in v.packages if (a := argv(p))}
    if not exact or tuple(server.argv) in exact:
        return []
    want = next((a for p in target.packages if (a := argv(p))), None)
    return [
        Problem(
            "command-mismatch",
            f"`{_shell(server.argv)}` is not a command an allowlist exported from this view "
            "admits (they match the exact argv, every argument in order)",
            f"run exactly `{_shell(want)}`" if want else "",
        )
    ]


def _notes(server: ConfiguredServer) -> list[Problem]:
    return [
        Problem(
            "unresolved-variable",
            f"`{ref}` in the {where} is filled in by the client at start; Copilot blocks the "
            "server if it stays unresolved",
            "make sure the input or variable is defined where the client runs",
        )
        for where, value in [("url", server.url), ("command", _shell(server.argv))]
        for ref in references(value)
    ]


def _blocked(server: ConfiguredServer, problem: Problem, notes: list[Problem]) -> Finding:
    name = server.key if problem.code == "not-in-view" else None
    return Finding(
        server.key, False, f"blocked: {problem.code}", (problem, *notes), _details(name, None, None)
    )


@dataclass(frozen=True, slots=True)
class _Doctor:
    config: Config
    reader: Reader
    view: str
    index: Index
    client: str

    async def finding(self, server: ConfiguredServer) -> Finding:
        """One configured server's verdict. Problems block it; notes (an unresolved variable,
        a key Claude Code does not match on) are shown beside them and block nothing."""
        notes = _notes(server)
        if server.errors:
            problem = Problem("unreadable-entry", "; ".join(server.errors), "fix the entry")
            return _blocked(server, problem, [])
        invocation = None if server.remote else identify(server.command, server.args)
        named = await self._name(server, invocation)
        if isinstance(named, Problem):
            return _blocked(server, named, notes)
        name, mismatch = named
        problems: list[Problem] = []
        if mismatch is not None and self.client == "claude-code":
            # Claude Code has no registry-only mode; its allowlists match a URL or a command
            # ("A `serverName` match counts only when the allowlist contains no `serverUrl`
            # entries": code.claude.com/docs/en/managed-mcp). The key is only a note there.
            message = mismatch.message.replace("a registry-only", "only a registry-only")
            notes.insert(
                0,
                Problem(
                    mismatch.code,
                    message + " (Claude Code itself matches the URL or command)",
                    mismatch.fix + " if the same entry also goes to VS Code or Copilot",
                ),
            )
        elif mismatch is not None:
            problems.append(mismatch)
        return await self._check(server, invocation, name, problems, notes)

    async def _name(
        self, server: ConfiguredServer, invocation: Invocation | None
    ) -> tuple[str, Problem | None] | Problem:
        """The served name the entry stands for (with a name-mismatch when its key is not
        that name), or the problem that ends its diagnosis."""
        view, index = self.view, self.index
        name = server.key if server.key in index.names else None
        # A name the view does not serve, or serves only as tombstones: a view rule may drop it.
        held = [] if server.key in index.live else await self.reader.entries_for([server.key])
        why = _dropped(explain(self.config, held, None, view=view)) if held else []
        if held and (name is None or any(w.startswith("rule ") for w in why)):
            return Problem(
                "not-in-view",
                f"the mirror holds {server.key} but view {view} does not serve it: "
                + "; ".join(why or ["no copy of it is served"]),
                "ask the view's owner to change that rule, or use a server the view serves",
            )
        if name is not None:
            return name, None
        known = index.recognise(server, invocation)
        if not known:
            near = index.closest(server)
            return Problem(
                "unknown-server",
                f"view {view} serves no server named {server.key}, "
                + (
                    "nor one with this URL"
                    if server.remote
                    else "nor one publishing this package"
                    if invocation
                    else "and its command runs no registry package"
                ),
                f"did you mean {', '.join(near)}?" if near else "add it to the registry",
            )
        name = known[0]
        also = f" (also: {', '.join(known[1:3])})" if len(known) > 1 else ""
        return name, Problem(
            "name-mismatch",
            f"the key {server.key} is not a served name, but the server is {name}{also}; "
            "a registry-only client matches the name exactly",
            f"rename the key to {name}",
        )

    async def _check(
        self,
        server: ConfiguredServer,
        invocation: Invocation | None,
        name: str,
        problems: list[Problem],
        notes: list[Problem],
    ) -> Finding:
        """The served versions of `name` against the entry: the pinned (or latest) version's
        status, then its remotes or packages."""
        reader, view = self.reader, self.view
        rows = [version_of(r) for r in await reader.versions(view, name, include_deleted=True)]
        latest_row = await reader.version(view, name, "latest", include_deleted=True)
        group = ServerGroup(name, tuple(rows))
        current = group.current(include_deprecated=False)
        chosen = version_of(latest_row) if latest_row else None
        if invocation is not None and invocation.version:
            chosen = _pinned(rows, invocation) or chosen
        blocked_by_status = chosen is not None and chosen.status in {"deleted", "deprecated"}
        if chosen is not None and blocked_by_status:
            problems.append(_status_problem(chosen, current, view))
        target = chosen if chosen is not None and chosen.status != "deleted" else current
        template = ""
        if target is not None:
            if server.remote:
                more, template = _remote_problems(server, target)
                problems += more
            elif not blocked_by_status:
                admitted = group.allowed(include_deprecated=False)
                problems += _package_problems(server, invocation, target, admitted)
        shown = chosen or target
        details = _details(name, shown.version if shown else None, shown.status if shown else None)
        if template:
            details["template"] = template
        codes = [p.code for p in problems]
        label = f"{name} {shown.version}" if shown else name
        if codes:
            summary = f"blocked: {', '.join(codes)} (matched {label})"
        else:
            summary = f"allowed: {label}" + (
                f" (the URL fills template {template})" if template else ""
            )
        return Finding(server.key, not codes, summary, (*problems, *notes), details)


async def diagnose(
    config: Config, reader: Reader, path: Path, *, client: str | None, view: str
) -> Report:
    """One finding per configured server, in file order. The view is read once, streamed,
    into compact indexes; each server then costs one or two lookups by name."""
    parsed = read(path, client)
    index = Index()
    async for group in groups(reader, view):
        index.add(group)
    doctor = _Doctor(config, reader, view, index, parsed.client)
    findings = [await doctor.finding(s) for s in parsed.servers]
    shown = parsed.client + (f" (guessed from `{parsed.where}`)" if parsed.assumed else "")
    return Report("mcp-json", str(path), tuple(findings), {"client": shown, "view": view})
