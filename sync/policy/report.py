"""What `subregistry doctor` reports, for a terminal and for CI (`--json`): one finding per
configured server or per probe, each with the problems that block it and how to fix them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Finding", "Problem", "Report", "clean", "render", "to_json"]


@dataclass(frozen=True, slots=True)
class Problem:
    # Stable, for scripts: name-mismatch, unknown-server, not-in-view, deleted, deprecated,
    # remote-mismatch, package-mismatch, unresolved-variable, unreadable-entry, or a probe's
    # own code (cors, cursor, latest-lookup, ...).
    code: str
    message: str  # what is wrong, one sentence
    fix: str = ""  # what to change, one sentence ("" when there is nothing to do)


@dataclass(frozen=True, slots=True)
class Finding:
    subject: str  # the configured server's key, or the probe's name
    ok: bool  # allowed (a server) or passed (a probe)
    summary: str  # one line: what was matched or measured
    problems: tuple[Problem, ...] = ()
    # Extras for --json only (matched registry name, status codes, latency in ms, ...).
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Report:
    kind: str  # "mcp-json" or "url"
    target: str  # the file or base URL checked
    findings: tuple[Finding, ...]
    # Context for the header line ("client vscode, view default"); also in the JSON.
    context: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)


def to_json(report: Report) -> dict[str, Any]:
    return {
        "kind": report.kind,
        "target": report.target,
        **report.context,
        "ok": report.ok,
        "findings": [
            {
                "subject": f.subject,
                "ok": f.ok,
                "summary": f.summary,
                "problems": [
                    {"code": p.code, "message": p.message, "fix": p.fix} for p in f.problems
                ],
                **f.details,
            }
            for f in report.findings
        ],
    }


def clean(text: str) -> str:
    """`text` with every non-printable character as `?`: keys and URLs come from files and
    servers we do not control, and no escape sequence of theirs may reach the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def render(report: Report) -> str:
    context = ", ".join(f"{k} {v}" for k, v in report.context.items())
    lines = [f"{clean(report.target)}" + (f" ({clean(context)})" if context else "")]
    for f in report.findings:
        mark = "ok  " if f.ok else "FAIL"
        lines.append(f"  {mark} {clean(f.subject)}: {clean(f.summary)}")
        for p in f.problems:
            lines.append(f"       - {clean(p.message)}")
            if p.fix:
                lines.append(f"         fix: {clean(p.fix)}")
    passed = sum(f.ok for f in report.findings)
    noun = "servers allowed" if report.kind == "mcp-json" else "checks passed"
    lines.append(f"{passed}/{len(report.findings)} {noun}")
    return "\n".join(lines) + "\n"
