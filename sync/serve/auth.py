"""Who may read a view: the view's own authentication, checked before anything is served.

The gate resolves each registry request's view (see `sync.serve.routing`) and, for a view with
`auth`, lets it through only with a valid bearer token: one of the configured static tokens, or
an OIDC access token. It sits before the response cache, so a cached body never reaches a
request that did not authenticate, and it marks what it lets through as private to the reader.

Following the MCP registry's authorization document (modelcontextprotocol/registry PR #756,
docs/reference/api/registry-authorization.md): a registry is an OAuth 2.1 resource server exactly
as an MCP server is under the MCP Authorization specification, so it publishes RFC 9728
protected-resource metadata naming its authorization server, answers 401 with a
`WWW-Authenticate` challenge pointing at that metadata, and reads under the scope
`mcp-registry:read`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import SecretStr

from sync.serve.api import LIVE, Problem, problem
from sync.serve.oidc import OIDC, Forbidden, KeysUnavailable, TokenRejected
from sync.serve.routing import BASE, BASE_PARAM, VIEW_KEY, ViewAt, base_of, view_at
from sync.viewconfig import B64TOKEN

__all__ = ["READ_SCOPE", "add_metadata_routes", "gate", "token_matches"]

log = structlog.get_logger("sync.serve.auth")

READ_SCOPE = "mcp-registry:read"
METADATA_PATH = "/.well-known/oauth-protected-resource"
# What a quoted-string of a challenge may carry as it is (RFC 6750 §3: no `"` nor `\`).
_UNQUOTABLE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


def token_matches(token: str, tokens: Sequence[SecretStr]) -> bool:
    """Whether `token` is one of `tokens`, in time independent of which (if any) it is:
    digests of equal length, compared in constant time, against every token, no early exit."""
    digest = hashlib.sha256(token.encode("utf-8")).digest()
    found = False
    for candidate in tokens:
        other = hashlib.sha256(candidate.get_secret_value().encode("utf-8")).digest()
        found |= hmac.compare_digest(digest, other)
    return found


def _bearer(header: str | None) -> tuple[bool, str | None]:
    """(whether a bearer token was sent, the token if well-formed)."""
    if header is None:
        return False, None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False, None  # another scheme is no bearer token (RFC 6750 §3)
    value = value.strip()
    return True, value if B64TOKEN.fullmatch(value) else None


def _origin(request: web.Request) -> str:
    public = request.app[LIVE].config.api.public_url
    return public if public is not None else f"{request.scheme}://{request.host}"


def _quoted(value: str) -> str:
    return '"' + _UNQUOTABLE.sub("", value) + '"'


def _challenge(
    request: web.Request, view: ViewAt, status: int, detail: str, error: str | None
) -> web.Response:
    """401/403 as problem JSON with the RFC 6750 §3 challenge; its `resource_metadata`
    (RFC 9728 §5.1) tells a client where to learn which authorization server to ask."""
    params = [
        f"realm={_quoted(view.name)}",
        f"resource_metadata={_quoted(_origin(request) + METADATA_PATH + view.base_path)}",
        f"scope={_quoted(READ_SCOPE)}",
    ]
    if error is not None:
        params += [f"error={_quoted(error)}", f"error_description={_quoted(detail)}"]
    log.info("auth.denied", view=view.name, status=status, reason=detail)
    return problem(status, detail, {"WWW-Authenticate": "Bearer " + ", ".join(params)})


async def _denied(request: web.Request, view: ViewAt) -> web.Response | None:
    """Why `request` may not read `view`, as the response to send; None when it may."""
    sent, token = _bearer(request.headers.get("Authorization"))
    if not sent:
        return _challenge(request, view, 401, "this view needs a bearer token", None)
    if token is None:
        return _challenge(request, view, 401, "malformed bearer token", "invalid_token")
    auth = view.auth
    if auth.type == "bearer":
        if token_matches(token, auth.tokens):
            return None
        return _challenge(request, view, 401, "unknown bearer token", "invalid_token")
    try:
        await request.app[OIDC].verify(token, auth)
    except TokenRejected as exc:
        return _challenge(request, view, 401, str(exc), "invalid_token")
    except Forbidden as exc:
        return _challenge(request, view, 403, str(exc), "insufficient_scope")
    except KeysUnavailable as exc:
        # Not the client's fault: its token may be fine, so no 401 (it would drop it).
        log.warning("auth.keys_unavailable", view=view.name, issuer=auth.issuer)
        return problem(
            503,
            "the authorization server's keys cannot be fetched; try again later",
            {"Retry-After": str(exc.retry_after)},
        )
    return None


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each registry request answered by the view its path names now, if the reader may."""
    base = base_of(request)
    if base is None:
        return await handler(request)
    view = view_at(request.app[LIVE].config, base)
    if view is None:
        raise web.HTTPNotFound()
    request[VIEW_KEY] = view.name
    if view.name in request.app[LIVE].settling:
        return problem(
            503,
            "this view is being re-evaluated after a configuration change; try again shortly",
            {"Retry-After": "1"},
        )
    if not view.auth.enabled:
        return await handler(request)
    response: web.StreamResponse | None = await _denied(request, view)
    if response is None:
        try:
            response = await handler(request)
        except Problem as exc:  # answered here, so it carries the headers below too
            response = problem(exc.status, exc.detail)
    # Shared caches must not hand one reader's response to another (RFC 9111 §5.2.2.7).
    response.headers["Cache-Control"] = "private"
    vary = response.headers.get("Vary")
    response.headers["Vary"] = f"{vary}, Authorization" if vary else "Authorization"
    return response


async def protected_resource(request: web.Request) -> web.Response:
    """RFC 9728 §3 metadata of a view with auth; never behind auth itself."""
    base = request.match_info.get(BASE_PARAM)
    view = view_at(request.app[LIVE].config, "/" + base if base else "")
    if view is None or not view.auth.enabled:
        raise web.HTTPNotFound()
    body: dict[str, Any] = {"resource": _origin(request) + view.base_path}
    if view.auth.type == "oidc":
        body["authorization_servers"] = [view.auth.issuer]
    body |= {
        "scopes_supported": [READ_SCOPE],
        "bearer_methods_supported": ["header"],
        "resource_name": view.description or f"MCP registry ({view.name} view)",
    }
    return web.json_response(body)


def add_metadata_routes(app: web.Application) -> None:
    app.router.add_get(METADATA_PATH, protected_resource)
    app.router.add_get(f"{METADATA_PATH}/{BASE}", protected_resource)
