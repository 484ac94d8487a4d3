"""What `subregistry status` reports: the served view, who writes (on PostgreSQL: the elected
leader), and per upstream its checkpoint, failures, quarantine, resume point and recent
passes. Read-only: it opens no writer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sync.config import DEFAULT_VIEW, Config
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
    by_status, servers = await reader.served_counts(DEFAULT_VIEW)
    report: dict[str, Any] = {
        "served": {"versions": by_status, "servers": servers},
        "upstreams": [],
        "rule_hits": await reader.rule_hits(DEFAULT_VIEW),
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


def _served_line(served: dict[str, Any]) -> str:
    versions: dict[str, int] = served["versions"]
    order = [s for s in _STATUSES if s in versions] + sorted(set(versions) - set(_STATUSES))
    parts = ", ".join(f"{versions[s]} {s}" for s in order)
    total = sum(versions.values())
    return f"served: {total} versions ({parts or 'none'}), {served['servers']} servers\n"


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
    """The report for a person: served counts, then one block per upstream, then rule hits."""
    text = _served_line(report["served"])
    if "leader" in report:
        text += _leader_line(report["leader"])
    text += "".join(_upstream_lines(u) for u in report["upstreams"])
    hits: dict[str, int] = report["rule_hits"]
    if hits:
        text += "rule hits:\n" + "".join(f"  {r}: {n}\n" for r, n in sorted(hits.items()))
    return text
