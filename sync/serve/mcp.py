"""The catalogue as an MCP server: Streamable HTTP at `/mcp` of every view, read-only tools.

Built on the official `mcp` SDK, run statelessly with JSON answers and reached through
`sync.serve.mcpbridge`, so `/mcp` is one more view route: the view comes from the path as for
every other route (`sync.serve.routing`), its auth gate runs first, and the middlewares apply.
One MCP server answers every view; each call reads the view, the reader and the configuration
in force from the request it came in, so a view a reload adds has its `/mcp` at once.

The tools answer what the REST API answers: the same stored bytes, parsed (`server` as
published, `_meta` as the mirror computed it), and the same explain report as the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from aiohttp import web
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from sync import __version__
from sync.curate.explain import explain
from sync.serve.api import LIVE, READER
from sync.serve.mcpbridge import call_asgi
from sync.serve.routing import BASE, VIEW_ROUTES, guards_default, view_of
from sync.serve.search import find
from sync.store import ServedItem

__all__ = ["MCP_PATH", "add_mcp_routes", "build_server", "find", "mcp_ctx", "quietly"]

MCP_PATH = "/mcp"
# The SDK's own default: a tool call is a name and a few short arguments.
_MAX_BODY = 64 * 1024
_STATE_KEY = "aiohttp_request"
_READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


class _Holder:
    """The running session manager: made when the application starts, as `MCPServer()`
    configures logging (it must come after the daemon's own configuration)."""

    manager: StreamableHTTPSessionManager | None = None


MANAGER = web.AppKey("mcp_manager", _Holder)


# --- the tools' answers: the REST API's shapes -------------------------------------------


class ServerEntry(BaseModel):
    """One served version, as `GET /v0.1/servers/{name}/versions/{version}` answers it."""

    model_config = ConfigDict(populate_by_name=True)

    server: dict[str, Any] = Field(description="The server.json as its upstream published it.")
    meta: dict[str, Any] = Field(
        alias="_meta",
        description="The registry's metadata (status, publishedAt, updatedAt, isLatest) as the "
        "mirror computed it, and the mirror's own key (enrichment, provenance).",
    )


class ListMetadata(BaseModel):
    count: int = Field(description="How many servers this answer holds.")


class ServerList(BaseModel):
    """A list of served versions in the REST API's list envelope."""

    servers: list[ServerEntry]
    metadata: ListMetadata


class Verdict(BaseModel):
    rule: str = Field(description="The rule, as `subregistry status` names it.")
    verdict: Literal["no objection", "drop", "change status", "enrich"]
    reason: str | None = Field(default=None, description="Why the rule acted (absent if not).")


class InView(BaseModel):
    """The view's own rules on the copy as the default view serves it, and the outcome."""

    view: str
    rules: list[Verdict]
    served: bool
    served_status: str | None
    is_latest: bool
    reason: str


class CopyReport(BaseModel):
    """One stored version of one upstream: every rule's verdict, and the decision."""

    version: str
    upstream_status: str = Field(description="The status the upstream gives it.")
    removed_at: str | None = Field(description="When the upstream stopped listing it.")
    rules: list[Verdict]
    served: bool = Field(description="Whether the default view serves it.")
    served_status: str | None
    is_latest: bool
    reason: str
    in_view: InView | None = Field(default=None, description="For a named view: its verdict.")


class UpstreamReport(BaseModel):
    upstream: str
    versions: list[CopyReport]


class Explanation(BaseModel):
    """`subregistry explain NAME --view VIEW --json`, without the served form."""

    name: str
    view: str
    upstreams: list[UpstreamReport] = Field(description="Each upstream holding the name.")


# --- the tools ----------------------------------------------------------------------------


def _request(ctx: Context) -> web.Request:
    """The aiohttp request the call came in (the bridge put it in the ASGI scope's state)."""
    request = ctx.request_context.request
    assert request is not None  # every call comes over HTTP, through the bridge
    found: web.Request = getattr(request.state, _STATE_KEY)
    return found


def _entry(item: ServedItem) -> ServerEntry:
    return ServerEntry(server=json.loads(item[2]), _meta=json.loads(item[3]))


def _listing(items: list[ServedItem]) -> ServerList:
    return ServerList(servers=[_entry(i) for i in items], metadata=ListMetadata(count=len(items)))


_Name = Annotated[
    str, Field(min_length=1, max_length=200, description="A server name, e.g. io.github.x/y.")
]


def build_server() -> MCPServer:
    """The MCP server every view's `/mcp` answers through: read-only tools over the view the
    request names."""
    server = MCPServer(
        "mcp-subregistry",
        title="MCP server catalogue",
        version=__version__,
        instructions="Find MCP servers in this curated registry: search_servers to discover, "
        "get_server and list_versions for details, why_not_served when one is missing.",
        log_level="WARNING",
    )

    @server.tool(title="Search servers", annotations=_READ_ONLY)
    async def search_servers(
        query: Annotated[str, Field(max_length=200, description="Words to look for.")],
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=100, description="At most this many.")] = 10,
    ) -> ServerList:
        """Search the servers this registry serves by name and description; the latest
        version of each server found."""
        request = _request(ctx)
        rows = await find(request.app[READER], view_of(request), query, limit)
        return _listing(rows)

    @server.tool(title="Get a server", annotations=_READ_ONLY)
    async def get_server(
        name: _Name,
        ctx: Context,
        version: Annotated[
            str, Field(min_length=1, max_length=200, description='A version, or "latest".')
        ] = "latest",
    ) -> ServerEntry:
        """One version of a server (the latest by default): its server.json, with packages,
        remotes and repository, and the registry's metadata."""
        request = _request(ctx)
        row = await request.app[READER].version(
            view_of(request), name, version, include_deleted=False
        )
        if row is None:
            which = "" if version == "latest" else f" version {version!r}"
            raise ToolError(f"this registry serves no server {name!r}{which}")
        return _entry(row)

    @server.tool(title="List a server's versions", annotations=_READ_ONLY)
    async def list_versions(name: _Name, ctx: Context) -> ServerList:
        """Every version this registry serves of a server, newest published first."""
        request = _request(ctx)
        rows = await request.app[READER].versions(view_of(request), name, include_deleted=False)
        if not rows:
            raise ToolError(f"this registry serves no server {name!r}")
        return _listing(rows)

    @server.tool(title="Why is a server (not) served", annotations=_READ_ONLY)
    async def why_not_served(name: _Name, ctx: Context) -> Explanation:
        """For each upstream holding the server: every curation rule's verdict on every
        version, and whether and why this registry serves it."""
        request = _request(ctx)
        config, view = request.app[LIVE].config, view_of(request)
        if guards_default(config, view):
            raise ToolError(
                "why_not_served tells what the default view holds, which has its own auth: "
                "ask the default view's /mcp"
            )
        entries = await request.app[READER].entries_for([name])
        if not entries:
            raise ToolError(f"no upstream of this registry holds {name!r}")
        report = explain(config, entries, None, view=view)
        return Explanation.model_validate(report)

    return server


def quietly(build: Callable[[], MCPServer]) -> MCPServer:
    """`build()` without the SDK's logging set-up: `MCPServer()` calls `logging.basicConfig`,
    which, on a root logger without handlers, would install its own handler and level over
    whatever the embedding program does next. A handler present for the call makes it a no-op.
    The SDK's loggers stay at WARNING: in stateless mode they log every request at INFO."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        server = build()
    finally:
        root.removeHandler(guard)
    logging.getLogger("mcp").setLevel(logging.WARNING)
    return server


# --- HTTP ---------------------------------------------------------------------------------


async def handle(request: web.Request) -> web.Response:
    manager = request.app[MANAGER].manager
    if manager is None:  # only between a stop's start and the last request's end
        raise web.HTTPServiceUnavailable()
    return await call_asgi(manager.handle_request, request, {_STATE_KEY: request})


async def not_allowed(request: web.Request) -> web.Response:
    # Stateless: no stream to open (GET) and no session to end (DELETE); the
    # Streamable HTTP transport lets a server answer both with 405.
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


def add_mcp_routes(app: web.Application) -> None:
    """`/mcp` at the root and under any view's base, as view routes (after `add_routes`)."""
    app[MANAGER] = _Holder()
    added: list[web.AbstractRoute] = []
    for base in ("", "/" + BASE):
        path = base + MCP_PATH
        added.append(app.router.add_post(path, handle))
        added.append(app.router.add_get(path, not_allowed, allow_head=False))
        added.append(app.router.add_delete(path, not_allowed))
    app[VIEW_ROUTES].update(route.resource.canonical for route in added if route.resource)


async def mcp_ctx(app: web.Application) -> AsyncIterator[None]:
    """The session manager runs for the application's lifetime, in a task of its own: its
    task group must be left in the task that entered it, and aiohttp may start and clean up
    an application in different tasks."""
    holder = app[MANAGER]
    server = quietly(build_server)
    server.streamable_http_app(
        stateless_http=True,
        json_response=True,
        max_request_body_size=_MAX_BODY,
        # Off: it only checks Host and Origin against a list, and every read route of the
        # mirror is open to any origin anyway (CORS `*`); a view's data is behind its auth.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    manager = server.session_manager
    ready, stop = asyncio.Event(), asyncio.Event()

    async def own() -> None:
        async with manager.run():
            ready.set()
            await stop.wait()

    task = asyncio.create_task(own(), name="mcp-session-manager")
    waiter = asyncio.ensure_future(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # a failure to start is the application's
    holder.manager = manager
    try:
        yield
    finally:
        holder.manager = None
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
