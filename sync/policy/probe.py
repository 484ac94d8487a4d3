"""`subregistry doctor --url BASE`: a registry probed the way its clients read one (VS Code's
gallery client, GitHub's registry requirements, ToolHive), one check after another; each check
and its sources are in `sync.policy.probe_checks`.

Every request is bounded (timeout, body size) and never follows a redirect; whatever a server
does is reported as a failed check with its reason, never raised.
"""

from __future__ import annotations

import aiohttp

from sync import __version__
from sync.errors import CommandFailed
from sync.policy.probe_checks import CHECKS, STEPS, Run
from sync.policy.probe_http import Failed, Http, base_url, short
from sync.policy.report import Finding, Problem, Report

__all__ = ["CHECKS", "MAX_TIMEOUT", "probe"]

MAX_TIMEOUT = 300.0  # seconds per request


async def probe(base: str, *, request_timeout: float) -> Report:
    """Every check in `CHECKS`, in order, as one report; a failed version probe leaves the
    rest not run (there is no API to ask), reported as failed so the exit code says so."""
    # aiohttp reads 0 as "no timeout", and 1e308 is none in effect: a probe stays bounded.
    if not 0 < request_timeout <= MAX_TIMEOUT:
        raise CommandFailed(
            f"--timeout: {request_timeout:g} is not a number of seconds above 0 and at most "
            f"{MAX_TIMEOUT:g}"
        )
    try:
        given = base_url(base)
    except ValueError as exc:
        raise CommandFailed(f"--url: {short(base, 200)!r}: {exc}") from None
    # VS Code removes one trailing `/`, whatever comes before it.
    root = given[:-1] if given.endswith("/") else given
    findings: list[Finding] = []
    headers = {"User-Agent": f"subregistry-doctor/{__version__}", "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers, trust_env=True) as session:
        run = Run(Http(session, request_timeout), given, root)
        for subject, step in STEPS:
            if subject != "version-probe" and not run.prefix:
                skip = Problem("skipped", "not run: no API answered the version probe")
                findings.append(
                    Finding(
                        subject, False, "not run: no API prefix answered", (skip,), run.details()
                    )
                )
                continue
            try:
                summary, problems = await step(run)
            except Failed as failed:
                summary, problems = "failed", [failed.problem]
            findings.append(Finding(subject, not problems, summary, tuple(problems), run.details()))
            run.answers, run.extra = [], {}
    prefix = f"/{run.prefix}" if run.prefix else "none"
    return Report(kind="url", target=base, findings=tuple(findings), context={"prefix": prefix})
