"""What `subregistry status` reports: each view (where it is served, who may read it, what it
serves, how often its rules acted), who writes (on PostgreSQL: the elected leader), and per
upstream its checkpoint, failures, quarantine, resume point and recent passes. Read-only: it
opens no writer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sync.config import DEFAULT_VIEW, AuthConfig, Config
from sync.store import Reader, records

__all__ = ["collect", "render"]

_RECENT = 10  # passes in the report
_SHOWN = 5  # of which the text shows
_STATUSES = ("active", "deprecated", "deleted")
_COUNTS = ("pages", "inserted", "updated", "unchanged", "removed", "quarantined")


async def collect(config: Config, reader: Reader) -> dict[str, Any]:
    """The whole report as plain data (what `status --json` prints)."""
    states = await reader.upstream_states()
    held = await reader.held()
    quarantine = await reader.quarantine()
    views = await _views(config, reader)
    report: dict[str, Any] = {
        # The default view's, at the top as before views existed: scripts read them there.
        "served": views[0]["served"],
        "views": views,
        "upstreams": [],
        "rule_hits": views[0]["rule_hits"],
    }
    if config.storage.postgres:
        report["leader"] = await leader(reader)
    for upstream in config.upstreams:
        state = states.get(upstream.name, records.UpstreamState(upstream.name))
        kept, removed = held.get(upstream.name, (0, 0))
        passes = await reader.passes(upstream.name, limit=_RECENT)
        # A resume point outlives a failed or interrupted pass; only a pass record still
        # marked running says one is under way.
        running = [p.id for p in passes if p.outcome == "running"]
        report["upstreams"].append(
            {
                "name": upstream.name,
                "source": upstream.url or str(upstream.path),
                "headers": dict.fromkeys(upstream.headers, "***"),
                "checkpoint": state.checkpoint,
                "last_success": state.last_success_at,
                "last_full": state.last_full_at,
                "last_error": state.last_error,
                "last_error_at": state.last_error_at,
                "consecutive_failures": state.failures,
                "circuit_open_until": state.circuit_until,
                "pass_in_progress": bool(running),
                "running_pass": running[0] if running else None,
                "resume_point": _resume_point(state),
                "versions_held": kept,
                "versions_removed": removed,
                "quarantined": [
                    {"key": q.key, "reason": q.reason, "last_seen": q.last_seen}
                    for q in quarantine
                    if q.upstream == upstream.name
                ],
                "recent_passes": [
                    {
                        "id": p.id,
                        "mode": p.mode,
                        "started": p.started_at,
                        "ended": p.ended_at,
                        "outcome": p.outcome,
                        "error": p.error,
                        "checkpoint": p.checkpoint,
                        "resumed_from": p.resumed_from,
                        **p.counts,
                    }
                    for p in passes
                ],
            }
        )
    return report


async def _views(config: Config, reader: Reader) -> list[dict[str, Any]]:
    """Every configured view, the default one first."""
    shown = [(DEFAULT_VIEW, config.api.base_path, "", config.api.auth)]
    shown += [(v.name, v.base_path, v.description, v.auth) for v in config.views]
    views = []
    for name, base_path, description, auth in shown:
        by_status, servers = await reader.served_counts(name)
        views.append(
            {
                "name": name,
                "base_path": base_path,
                "description": description,
                "auth": _auth(auth),
                "served": {"versions": by_status, "servers": servers},
                "rule_hits": await reader.rule_hits(name),
            }
        )
    return views


def _auth(auth: AuthConfig) -> dict[str, Any]:
    """How a view's readers prove who they are; how many tokens, never which."""
    if auth.type == "bearer":
        return {"type": "bearer", "tokens": len(auth.tokens)}
    if auth.type == "oidc":
        return {
            "type": "oidc",
            "issuer": auth.issuer,
            "audience": auth.audience,
            "required_claims": {k: list(v) for k, v in auth.required_claims.items()},
        }
    return {"type": "none"}


async def leader(reader: Reader) -> dict[str, Any]:
    """Who leads a PostgreSQL store now: holder, since, epoch and until when the lease runs
    (`leading` false: nobody does, the last holder's lease ran out or it resigned)."""
    row = await reader.leader()
    if row is None:
        return {}

    def stamp(moment: datetime | None) -> str | None:
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None

    return {
        "leading": row.leading,
        "holder": row.holder,
        "epoch": row.epoch,
        "since": stamp(row.since),
        "lease_until": stamp(row.lease_until),
        "serial": row.serial,
    }


def _leader_line(leader: dict[str, Any]) -> str:
    if "error" in leader:
        return f"leader:          unknown ({leader['error']})\n"
    if leader["leading"]:
        return (
            f"leader:          {leader['holder']} (epoch {leader['epoch']}, since "
            f"{leader['since']}, lease until {leader['lease_until']})\n"
        )
    last = f"; last: {leader['holder']}, epoch {leader['epoch']}" if leader["holder"] else ""
    return f"leader:          none{last}\n"


def _resume_point(state: records.UpstreamState) -> dict[str, Any] | None:
    """Where the next pass of this upstream starts if the last one did not complete."""
    if state.pass_id is None:
        return None
    return {
        "pass_id": state.pass_id,
        "mode": state.pass_mode,
        "started": state.pass_started,
        "since": state.pass_since,
        "cursor": state.pass_cursor,
        "after_name": state.pass_last_name,
    }


def _served_text(served: dict[str, Any]) -> str:
    versions: dict[str, int] = served["versions"]
    order = [s for s in _STATUSES if s in versions] + sorted(set(versions) - set(_STATUSES))
    parts = ", ".join(f"{versions[s]} {s}" for s in order)
    total = sum(versions.values())
    return f"{total} versions ({parts or 'none'}), {served['servers']} servers"


def _auth_text(auth: dict[str, Any]) -> str:
    if auth["type"] == "bearer":
        return f"bearer, {auth['tokens']} token{'s' if auth['tokens'] != 1 else ''}"
    if auth["type"] == "oidc":
        claims = "".join(
            f", {claim} in {values}" for claim, values in auth["required_claims"].items()
        )
        return f"oidc, issuer {auth['issuer']}, audience {auth['audience']}{claims}"
    return "none"


def _view_line(view: dict[str, Any]) -> str:
    return (
        f"  {view['name']} at {view['base_path'] or '/'} (auth: {_auth_text(view['auth'])}): "
        f"{_served_text(view['served'])}\n"
    )


def _hit_lines(views: list[dict[str, Any]]) -> str:
    """Every view's rule hits in one list: a named view's rules are named
    `views.<name>.…`, so no two views' rules share a name."""
    hits: dict[str, int] = {}
    for view in views:
        prefix = "" if view["name"] == DEFAULT_VIEW else f"views.{view['name']}."
        for rule, count in view["rule_hits"].items():
            hits[rule if rule.startswith(prefix) else prefix + rule] = count
    if not hits:
        return ""
    return "rule hits:\n" + "".join(f"  {r}: {n}\n" for r, n in sorted(hits.items()))


def _pass_line(p: dict[str, Any]) -> str:
    counts = ", ".join(f"{p.get(k, 0)} {k}" for k in _COUNTS)
    error = f" — {p['error']}" if p["error"] else ""
    return f"    #{p['id']:<5} {p['mode']:<11} {p['outcome']:<11} {p['started']}  {counts}{error}\n"


def _upstream_lines(u: dict[str, Any]) -> str:
    text = (
        f"{u['name']} ({u['source']})\n"
        f"  checkpoint:      {u['checkpoint'] or '-'}\n"
        f"  last success:    {u['last_success'] or 'never'}\n"
        f"  last error:      {u['last_error'] or '-'}"
        f"{' at ' + u['last_error_at'] if u['last_error_at'] else ''}\n"
        f"  versions held:   {u['versions_held']} ({u['versions_removed']} removed)\n"
        f"  quarantined:     {len(u['quarantined'])}\n"
    )
    text += "".join(f"    {q['key']}: {q['reason']}\n" for q in u["quarantined"][:20])
    if u["circuit_open_until"]:
        text += f"  circuit open until {u['circuit_open_until']}\n"
    resume = u["resume_point"]
    if u["pass_in_progress"]:
        text += f"  pass running:    #{u['running_pass']}\n"
    elif resume is not None:
        where = f", after {resume['after_name']}" if resume["after_name"] else ""
        text += (
            f"  resume point:    pass #{resume['pass_id']} ({resume['mode']}, started "
            f"{resume['started']}{where}); the next pass continues it\n"
        )
    if u["recent_passes"]:
        text += "  recent passes:\n"
        text += "".join(_pass_line(p) for p in u["recent_passes"][:_SHOWN])
    return text


def render(report: dict[str, Any]) -> str:
    """The report for a person: the default view's counts, one line per view, the leader, one
    block per upstream, then every view's rule hits."""
    text = f"served: {_served_text(report['served'])}\n"
    text += "views:\n" + "".join(_view_line(v) for v in report["views"])
    if "leader" in report:
        text += _leader_line(report["leader"])
    text += "".join(_upstream_lines(u) for u in report["upstreams"])
    return text + _hit_lines(report["views"])
