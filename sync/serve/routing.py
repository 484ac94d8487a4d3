"""Which view a request is for: its path's base, looked up in the configuration in force.

aiohttp's router is frozen once the application starts, so it cannot learn the base paths a
reload (SIGHUP) adds, removes or moves. The registry routes are therefore registered twice:
plainly (`/v0.1/servers`: the default view when `api.base_path` is empty) and under a dynamic
`/{base}` prefix that matches any base a view could have. Each request's base is looked up in
`app[LIVE].config` at request time; a base no view has is a 404, as a path is that no route has.
"""

from __future__ import annotations

from aiohttp import web

from sync.config import DEFAULT_VIEW, Config
from sync.viewconfig import AuthConfig

__all__ = [
    "BASE",
    "BASE_PARAM",
    "VIEW_KEY",
    "VIEW_ROUTES",
    "ViewAt",
    "base_of",
    "guards_default",
    "route_label",
    "view_at",
    "view_of",
]

BASE_PARAM = "base"
# Every base `check_base_path` allows (segments of unreserved characters, none of them a
# segment the API's own paths use), without its leading `/`. Excluding the reserved segments
# keeps the dynamic routes apart from the plain ones: `/v0.1/servers/x/versions` can never be
# read as a view whose base is `/v0.1/servers/x`.
_SEGMENT = r"(?!(?:v0|v0\.1|\.well-known)/)[A-Za-z0-9._~-]+"
BASE = f"{{{BASE_PARAM}:{_SEGMENT}(?:/{_SEGMENT})*}}"
_PREFIX = "/{" + BASE_PARAM + "}"
# The canonical paths (aiohttp's `resource.canonical`) of the routes a view answers.
VIEW_ROUTES: web.AppKey[set[str]] = web.AppKey("view_routes")
VIEW_KEY = web.RequestKey("view", str)


class ViewAt:
    """The view a base path names in one configuration, and how its readers authenticate."""

    __slots__ = ("auth", "base_path", "description", "name")

    def __init__(self, name: str, base_path: str, auth: AuthConfig, description: str = "") -> None:
        self.name, self.base_path, self.auth = name, base_path, auth
        self.description = description


def view_at(config: Config, base_path: str) -> ViewAt | None:
    """The view served at `base_path` ("" is the server's root), or None."""
    if base_path == config.api.base_path:
        return ViewAt(DEFAULT_VIEW, base_path, config.api.auth)
    for view in config.views:
        if view.base_path == base_path:
            return ViewAt(view.name, base_path, view.auth, view.description)
    return None


def base_of(request: web.Request) -> str | None:
    """The base path a view route was reached under; None for every other route (the
    operational ones, protected-resource metadata, a path no route has)."""
    resource = request.match_info.route.resource
    if resource is None or resource.canonical not in request.app[VIEW_ROUTES]:
        return None
    base = request.match_info.get(BASE_PARAM)
    return "" if base is None else "/" + base


def guards_default(config: Config, view: str) -> bool:
    """Whether readers of `view` must not be told what the default view holds: a named view
    while the default view has auth of its own (what it holds is then for its readers only;
    an explain report, the upstreams' state and their quarantine all describe it)."""
    return view != DEFAULT_VIEW and config.api.auth.enabled


def view_of(request: web.Request) -> str:
    """The name of the view answering `request`; "" when none does (its handlers, the
    response cache and the metrics all read it here)."""
    view: str = request.get(VIEW_KEY, "")
    return view


def route_label(request: web.Request) -> str:
    """The route's template without the view's base, so a route has one metric label
    whichever view answers (the view has its own label)."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    canonical = resource.canonical
    return canonical.removeprefix(_PREFIX) if canonical.startswith(_PREFIX + "/") else canonical
