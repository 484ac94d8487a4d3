"""The checks of `subregistry doctor --url BASE`, in the order they run (`STEPS`).

Each check asks what one client documents or does, so a failure names who breaks and why:

- VS Code's gallery client (microsoft/vscode
  `src/vs/platform/mcp/common/mcpGalleryManifestService.ts` `checkVersion`,
  `src/vs/platform/mcp/common/mcpGalleryService.ts` `queryRawGalleryMcpServers`,
  `getLatestServerVersionUrl`, `McpServerSchemaVersion_v0_1.Serializer`): strips one trailing
  `/` from the base, probes `/v0.1` then `/v0` with `servers?limit=1` (2xx), appends the cursor
  unencoded, looks names up through `encodeURIComponent`, and rejects a page whose first item
  lacks a non-empty `name`, `description`, `version` or an item-level `_meta` object.
- GitHub's registry requirements (source:
  https://docs.github.com/en/copilot/how-tos/administer-copilot/manage-mcp-usage/configure-mcp-registry):
  the v0.1 routes with CORS `*`, methods `GET, OPTIONS` and headers `Authorization, Content-Type`.
- ToolHive (stacklok/toolhive `pkg/config/registry.go` `isValidAPIResponse`,
  `pkg/registry/api/client.go`;
  stacklok/toolhive-registry-server `internal/sources/api_upstream.go` `Validate`): a JSON list
  with a `servers` array and a `metadata` object, percent-encoded cursors, and an
  `/openapi.yaml` whose `info.version` is `1.0.0` and whose description links the official repo.

Every request is bounded (timeout, body size) and never follows a redirect; whatever a server
does is reported as a failed check with its reason, never raised.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import yaml
from yarl import URL

from sync.policy.probe_http import (
    Answer,
    Failed,
    Http,
    answered,
    encode_component,
    header_list,
    item_key,
    item_problems,
    json_body,
    list_page,
    short,
)
from sync.policy.report import Problem

__all__ = ["CHECKS", "STEPS", "Run"]

PREFIXES = ("v0.1", "v0")  # VS Code's SUPPORTED_VERSIONS, in its probing order
ORIGIN = "vscode-file://vscode-app"  # what VS Code's renderer sends
REQUESTED_HEADERS = ("authorization", "content-type")
PAGE_SIZE = 50  # VS Code's DefaultPageSize
SAMPLE = 5
OFFICIAL_REPO = "https://github.com/modelcontextprotocol/registry"
# What a query value or path segment may hold unencoded (RFC 3986 unreserved).
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")


@dataclass
class Run:
    """One check's requests (its details) and what earlier checks learned."""

    http: Http
    base: str  # as given, encoded
    root: str  # the base as VS Code uses it: one trailing `/` removed
    prefix: str = ""
    names: list[str] = field(default_factory=list)
    listed: bool = False  # the first page was read (the names are all there are)
    answers: list[Answer] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # a check's own details

    @property
    def servers_url(self) -> str:
        return f"{self.root}/{self.prefix}/servers"

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> Answer:
        return await self.send("GET", url, headers)

    async def send(self, method: str, url: str, headers: Mapping[str, str] | None = None) -> Answer:
        answer = await self.http.send(method, url, headers)
        self.answers.append(answer)
        return answer

    def details(self) -> dict[str, Any]:
        """The last request's facts, and every request's when there were several."""
        facts: dict[str, Any] = {"url": None, "status": None, "latency_ms": None}
        if self.answers:
            facts = self.answers[-1].record()
        if len(self.answers) > 1:
            facts["requests"] = [a.record() for a in self.answers]
        return facts | self.extra


async def _version_probe(run: Run) -> tuple[str, list[Problem]]:
    reasons: list[str] = []
    for prefix in PREFIXES:
        answer = await run.get(f"{run.root}/{prefix}/servers?limit=1")
        try:
            answered(answer, "version-probe")
        except Failed as failed:
            reasons.append(failed.problem.message)
            continue
        run.prefix = prefix
        if prefix == PREFIXES[0]:
            return f"/{prefix}/servers?limit=1 answered {answer.status}: VS Code uses /{prefix}", []
        problem = Problem(
            "version-probe",
            f"{reasons[0]}; VS Code falls back to /{prefix}, but GitHub's registry requirements "
            "and ToolHive read /v0.1 only",
            "serve the read API under /v0.1",
        )
        return f"only /{prefix} answered: VS Code uses /{prefix}", [problem]
    raise Failed(
        "version-probe",
        "; ".join(reasons),
        "check the base URL: VS Code appends /v0.1/servers to it",
    )


async def _base_url(run: Run) -> tuple[str, list[Problem]]:
    base = run.base
    slashed = base if base.endswith("/") else base + "/"
    # VS Code removes exactly one trailing `/` and appends the rest to what is left.
    url = f"{slashed[:-1]}/{run.prefix}/servers?limit=1"
    path = URL(base).raw_path.rstrip("/")
    if not URL(url, encoded=True).raw_path.startswith(f"{path}/{run.prefix}/"):
        raise Failed("base-url", f"{url} loses the base path {path}")
    list_page(await run.get(url), "base-url")
    kept = f", path {path} kept" if path else ""
    return f"{slashed} → {url}{kept}", []


def _origin_problems(answer: Answer, code: str) -> list[Problem]:
    allow_origin = answer.headers.get("Access-Control-Allow-Origin")
    if allow_origin in ("*", ORIGIN):
        return []
    return [
        Problem(
            code,
            f"Access-Control-Allow-Origin is {short(allow_origin or 'missing', 60)}: VS Code's "
            "web views and vscode.dev cannot read the answer",
            "send Access-Control-Allow-Origin: * on every /v0.1/servers route",
        )
    ]


async def _cors_preflight(run: Run) -> tuple[str, list[Problem]]:
    answer = await run.send(
        "OPTIONS",
        f"{run.servers_url}?limit=1",
        {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": ",".join(REQUESTED_HEADERS),
        },
    )
    if answer.error:
        raise Failed("cors", f"{answer.url}: {answer.error}")
    problems = _origin_problems(answer, "cors")
    if answer.status is None or not 200 <= answer.status < 300:
        # The Fetch standard fails a preflight without an ok status, whatever its headers.
        problems.insert(
            0,
            Problem(
                "cors",
                f"OPTIONS answered {answer.status}: a browser's preflight fails",
                "answer OPTIONS on every /v0.1/servers route with 204 and the CORS headers",
            ),
        )
    fix = "answer OPTIONS with Access-Control-Allow-Methods: GET, OPTIONS"
    methods = header_list(answer.headers.get("Access-Control-Allow-Methods", ""))
    if not methods & {"get", "*"}:
        problems.append(Problem("cors", "Access-Control-Allow-Methods does not list GET", fix))
    headers = header_list(answer.headers.get("Access-Control-Allow-Headers", ""))
    # `*` covers every request header but Authorization (Fetch standard).
    missing = [
        h
        for h in REQUESTED_HEADERS
        if h not in headers and (h == "authorization" or "*" not in headers)
    ]
    if missing:
        problems.append(
            Problem(
                "cors",
                f"Access-Control-Allow-Headers does not allow {', '.join(missing)}",
                "allow the headers GitHub documents: Authorization, Content-Type",
            )
        )
    return f"OPTIONS answered {answer.status} for Origin {ORIGIN}", problems


async def _cors_get(run: Run) -> tuple[str, list[Problem]]:
    answer = await run.get(f"{run.servers_url}?limit=1", {"Origin": ORIGIN})
    answered(answer, "cors")
    origin = answer.headers.get("Access-Control-Allow-Origin", "none")
    return f"GET answered {answer.status}, Access-Control-Allow-Origin {short(origin, 60)}", (
        _origin_problems(answer, "cors")
    )


async def _list_shape(run: Run) -> tuple[str, list[Problem]]:
    answer = await run.get(f"{run.servers_url}?limit={PAGE_SIZE}&version=latest")
    items, metadata = list_page(answer, "list-shape")
    names = [k[0] for k in map(item_key, items) if k[0]]
    distinct = list(dict.fromkeys(names))
    # Spread over the page, so the sample is not one publisher's servers.
    step = max(1, len(distinct) // SAMPLE)
    run.names, run.listed = distinct[::step][:SAMPLE], True
    problems: list[Problem] = []
    kind = answer.headers.get("Content-Type", "")
    if "application/json" not in kind.lower():
        problems.append(
            Problem(
                "list-shape",
                f"Content-Type is {short(kind or 'missing', 60)}, not application/json",
                "",
            )
        )
    if metadata is None:
        problems.append(
            Problem("list-shape", "the body has no `metadata` object", "add {metadata: {count}}")
        )
    first = item_problems(items[0]) if items else []
    if first:
        problems.append(
            Problem(
                "item-shape",
                f"the first item {short(item_key(items[0])[0] or '?', 80)} {'; '.join(first)}: "
                "VS Code rejects the whole page",
                "serve every item as {server: {name, description, version, ...}, _meta: {...}}",
            )
        )
    skipped = [item_key(i)[0] or "?" for i in items[1:] if item_problems(i)]
    if skipped:
        problems.append(
            Problem(
                "item-shape",
                f"{len(skipped)} later item(s) that VS Code skips, e.g. {short(skipped[0], 80)}",
                "give every server a non-empty name, description and version, and a `_meta`",
            )
        )
    if not items:
        return "an empty list (nothing for VS Code to show)", problems
    verdict = "invalid" if first else "valid"
    return f"{len(items)} item(s) on VS Code's first page, the first one {verdict}", problems


def _page(answer: Answer, *, exact: int | None = None) -> tuple[list[tuple[str, str]], Any]:
    items, metadata = list_page(answer, "cursor", exact=exact)
    return [item_key(i) for i in items], (metadata or {}).get("nextCursor")


async def _cursor(run: Run) -> tuple[str, list[Problem]]:
    first_url = f"{run.servers_url}?limit=1&version=latest"
    keys, cursor = _page(await run.get(first_url))
    if not cursor:
        if len(keys) <= 1:
            return "one item only: no cursor to follow", []
        raise Failed("cursor", f"{first_url}: {len(keys)} items at limit=1 and no nextCursor")
    if not isinstance(cursor, str):
        raise Failed("cursor", f"metadata.nextCursor is not a string: {short(repr(cursor), 60)}")
    problems: list[Problem] = []
    if not _UNRESERVED.fullmatch(cursor):
        bad = " ".join(sorted({repr(c) for c in cursor if not _UNRESERVED.fullmatch(c)}))
        problems.append(
            Problem(
                "cursor",
                f"nextCursor holds {short(bad, 60)}: VS Code appends it unencoded, where `+` "
                "reads as a space and `&`, `#`, `%`, `/` change or risk the URL",
                "make cursors base64url without padding, or hex",
            )
        )
    # VS Code: `&cursor=${nextCursor}`; ToolHive: url.Values.Encode (Go's QueryEscape).
    tries = {"raw": f"{first_url}&cursor={cursor}"}
    try:
        encoded = quote_plus(cursor, safe="")
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form to send
        raise Failed(
            "cursor", f"metadata.nextCursor {short(ascii(cursor), 60)} is not valid Unicode"
        ) from None
    if encoded != cursor:
        tries["percent-encoded"] = f"{first_url}&cursor={encoded}"
    if not (cursor.isascii() and cursor.isprintable() and " " not in cursor):
        problems.append(Problem("cursor", "the raw cursor cannot even go into a request line"))
        del tries["raw"]
    for how, url in tries.items():
        try:
            second, _ = _page(await run.get(url), exact=200)
        except Failed as failed:
            problems.append(Problem("cursor", f"with the {how} cursor: {failed.problem.message}"))
            continue
        if not second or second[:1] == keys[:1]:
            problems.append(Problem("cursor", f"page 2 with the {how} cursor is not the next page"))
    if problems:
        return "page 2 is not reached the way every client asks for it", problems
    both = " (the same when percent-encoded)" if len(tries) == 1 else " and percent-encoded"
    return f"page 2 reached with the cursor sent raw{both}", []


async def _latest_lookup(run: Run) -> tuple[str, list[Problem]]:
    if not run.listed:
        raise Failed("latest-lookup", "not run: the list could not be read, so no names to look up")
    if not run.names:
        return "no servers listed: nothing to look up", []
    problems: list[Problem] = []
    latencies: list[float] = []
    looked: list[dict[str, Any]] = []
    for name in run.names:
        record: dict[str, Any] = {"name": name, "status": None, "latency_ms": None}
        looked.append(record)
        try:
            # A lone surrogate has no UTF-8 form: encodeURIComponent throws URIError on it.
            url = f"{run.servers_url}/{encode_component(name)}/versions/latest"
        except UnicodeEncodeError:
            problems.append(
                Problem(
                    "latest-lookup",
                    f"the listed name {short(ascii(name), 80)} is not valid Unicode (a lone "
                    "surrogate): no client can put it in a URL",
                    "serve names as valid Unicode text",
                )
            )
            continue
        try:
            answer = await run.get(url)
            record.update(status=answer.status, latency_ms=answer.latency_ms)
            item = json_body(answer, "latest-lookup", exact=200)
            latencies.append(answer.latency_ms)
            if (found := item_key(item)[0]) != name:
                raise Failed("latest-lookup", f"{url}: answered server.name {short(found, 80)!r}")
            if shape := item_problems(item):
                raise Failed("latest-lookup", f"{url}: the item {'; '.join(shape)}")
        except Failed as failed:
            problems.append(failed.problem)
    run.extra["names"] = looked
    passed = len(run.names) - len(problems)
    if any(a.status == 404 for a in run.answers):
        problems.append(
            Problem(
                "latest-lookup",
                "a listed name answered 404: `%2F` in the name was most likely decoded on the way",
                "route encoded slashes unchanged (nginx: proxy_pass without a URI; Apache: "
                "AllowEncodedSlashes NoDecode)",
            )
        )
    slowest = f", slowest {max(latencies):g} ms" if latencies else ""
    return f"{passed}/{len(run.names)} name(s) found by /versions/latest{slowest}", problems


async def _openapi(run: Run) -> tuple[str, list[Problem]]:
    answer = await run.get(f"{run.root}/openapi.yaml")
    answered(answer, "openapi", exact=200)
    try:
        spec = yaml.safe_load(answer.body)
    except (yaml.YAMLError, RecursionError) as exc:
        raise Failed("openapi", f"{answer.url}: not YAML: {short(str(exc), 120)}") from None
    info = spec.get("info") if isinstance(spec, dict) else None
    if not isinstance(info, dict):
        raise Failed("openapi", f"{answer.url}: no `info` section")
    version, description = info.get("version"), info.get("description")
    problems: list[Problem] = []
    if version != "1.0.0":
        problems.append(
            Problem(
                "openapi",
                f"info.version is {short(repr(version), 40)}, ToolHive expects '1.0.0'",
                'serve an openapi.yaml whose info.version is "1.0.0", as the official service does',
            )
        )
    if not isinstance(description, str) or OFFICIAL_REPO not in description:
        problems.append(
            Problem(
                "openapi",
                f"info.description does not contain {OFFICIAL_REPO}",
                "link the official repository in info.description, as the official service does",
            )
        )
    return f"info.version {short(repr(version), 40)}", problems


Step = Callable[[Run], Awaitable[tuple[str, list[Problem]]]]
STEPS: tuple[tuple[str, Step], ...] = (
    ("version-probe", _version_probe),
    ("base-url", _base_url),
    ("cors-preflight", _cors_preflight),
    ("cors-get", _cors_get),
    ("list-shape", _list_shape),
    ("cursor", _cursor),
    ("latest-lookup", _latest_lookup),
    ("openapi", _openapi),
)
CHECKS = tuple(subject for subject, _ in STEPS)
