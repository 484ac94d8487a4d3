"""Reading a view behind authentication (issue #13): static bearer tokens, and OIDC access
tokens from a real provider on a loopback port (tests/oidc_provider.py), over a real mirror
with two views: the default one open, `payments` behind bearer tokens, `data` behind OIDC."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import trustme
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from sync.app import create_app
from sync.config import Config
from sync.serve.oidc import FETCH_LIMIT
from tests.cli_helpers import free_port, spawn, write_config
from tests.oidc_provider import AUDIENCE, Provider, make_key, running_provider
from tests.test_views_api import db, views_config, views_db  # noqa: F401 - fixtures

TOKENS = ("payments-token-1", "payments-token-2")
PAYMENTS = "/teams/payments/v0.1/servers"
DATA = "/teams/data/catalogue/v0.1/servers"
METADATA = "/.well-known/oauth-protected-resource"


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    async with running_provider() as running:
        yield running


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# one per line\n" + "\n".join(TOKENS) + "\n")
    return path


@pytest.fixture
def make_config(db: Path, tokens_file: Path, provider: Provider) -> Callable[..., Config]:  # noqa: F811
    def make(*, api: dict[str, Any] | None = None, **oidc: Any) -> Config:
        return views_config(
            db,
            api=api,
            payments={"auth": {"type": "bearer", "tokens_file": str(tokens_file)}},
            data={
                "description": "The data platform's servers",
                "auth": {
                    "type": "oidc",
                    "issuer": provider.issuer,
                    "audience": AUDIENCE,
                    "required_claims": {"groups": ["payments", "data"]},
                    "jwks_refresh": "1h",
                    **oidc,
                },
            },
        )

    return make


@pytest.fixture
async def make_client(make_config: Callable[..., Config]) -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def make(**options: Any) -> TestClient[Any, Any]:
        client = TestClient(TestServer(create_app(make_config(**options), sync=False)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def api(make_client: Callable[..., Any]) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_client()
    return client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def challenge(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer k="v", …` challenge."""
    header = response.headers["WWW-Authenticate"]
    assert header.startswith("Bearer ")
    params = {}
    for part in header[len("Bearer ") :].split('", '):
        key, _, value = part.partition("=")
        params[key] = value.strip('"')
    return params


async def assert_denied(
    response: aiohttp.ClientResponse, status: int, error: str | None
) -> dict[str, str]:
    """A 401/403 as problem JSON with the challenge, readable by a browser client."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    assert (await response.json())["status"] == status
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]
    params = challenge(response)
    assert params.get("error") == error
    assert params["scope"] == "mcp-registry:read"
    return params


class TestBearer:
    async def test_each_configured_token_reads_and_the_response_is_private(
        self, api: TestClient[Any, Any]
    ) -> None:
        for token in TOKENS:
            response = await api.get(PAYMENTS, headers=bearer(token))
            assert response.status == 200
            assert (await response.json())["servers"]
            assert response.headers["Cache-Control"] == "private"
            assert "Authorization" in response.headers["Vary"]
            assert "Accept-Encoding" in response.headers["Vary"]

    async def test_no_token_is_a_401_naming_the_views_metadata(
        self, api: TestClient[Any, Any]
    ) -> None:
        response = await api.get(PAYMENTS)
        params = await assert_denied(response, 401, None)
        assert params["realm"] == "payments"
        url = params["resource_metadata"]
        assert url == f"{api.make_url('')}".rstrip("/") + METADATA + "/teams/payments"
        # The metadata it names answers without a token.
        metadata = await (await api.get(METADATA + "/teams/payments")).json()
        assert metadata["resource"] == str(api.make_url("/teams/payments"))

    @pytest.mark.parametrize(
        ("header", "error"),
        [
            ("Bearer wrong-token", "invalid_token"),
            (f"Bearer {TOKENS[0]}x", "invalid_token"),
            (f"Bearer {TOKENS[0][:-1]}", "invalid_token"),
            ("Bearer two words", "invalid_token"),
            ("Bearer ", "invalid_token"),
            (f"Basic {TOKENS[0]}", None),  # another scheme: no bearer token was sent
        ],
    )
    async def test_a_wrong_or_malformed_token_is_a_401(
        self, api: TestClient[Any, Any], header: str, error: str | None
    ) -> None:
        response = await api.get(PAYMENTS, headers={"Authorization": header})
        await assert_denied(response, 401, error)

    async def test_a_cached_body_never_reaches_an_unauthenticated_request(
        self, api: TestClient[Any, Any]
    ) -> None:
        path = PAYMENTS + "?limit=3"
        first = await api.get(path, headers=bearer(TOKENS[0]))
        etag = first.headers["ETag"]
        again = await api.get(path, headers=bearer(TOKENS[0]))
        assert again.headers["ETag"] == etag  # from the response cache
        for headers in ({}, {"If-None-Match": etag}, bearer("nope")):
            response = await api.get(path, headers=headers)
            assert response.status == 401
            assert "servers" not in await response.text()
        revalidated = await api.get(path, headers={**bearer(TOKENS[1]), "If-None-Match": etag})
        assert revalidated.status == 304
        assert revalidated.headers["Cache-Control"] == "private"

    async def test_every_route_of_the_view_is_behind_its_auth(
        self, api: TestClient[Any, Any]
    ) -> None:
        for path in ("/teams/payments/v0/servers", "/teams/payments/v0.1/health"):
            await assert_denied(await api.get(path), 401, None)
        await assert_denied(await api.get("/teams/payments/openapi.yaml"), 401, None)
        assert (await api.get("/teams/payments/v0/ping", headers=bearer(TOKENS[0]))).status == 200

    async def test_preflight_and_operational_routes_need_no_token(
        self, make_client: Callable[..., Any], tokens_file: Path
    ) -> None:
        api = await make_client(api={"auth": {"type": "bearer", "tokens_file": str(tokens_file)}})
        preflight = await api.options(
            PAYMENTS,
            headers={"Origin": "https://x.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status == 204
        for path in ("/healthz", "/readyz", "/metrics", METADATA, METADATA + "/teams/payments"):
            assert (await api.get(path)).status == 200, path
        # The default view is behind [api.auth] now; an open view stays open.
        await assert_denied(await api.get("/v0.1/servers"), 401, None)
        assert (await api.get("/v0.1/servers", headers=bearer(TOKENS[1]))).status == 200

    async def test_an_open_view_is_neither_challenged_nor_private(
        self, api: TestClient[Any, Any]
    ) -> None:
        response = await api.get("/v0.1/servers")
        assert response.status == 200
        assert "Cache-Control" not in response.headers
        assert "Authorization" not in response.headers.get("Vary", "")
        assert (await api.get(METADATA)).status == 404  # no auth: no metadata


class TestProtectedResourceMetadata:
    async def test_oidc_view_names_its_issuer_and_the_read_scope(
        self, api: TestClient[Any, Any], provider: Provider
    ) -> None:
        response = await api.get(METADATA + "/teams/data/catalogue")
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert await response.json() == {
            "resource": str(api.make_url("/teams/data/catalogue")),
            "authorization_servers": [provider.issuer],
            "scopes_supported": ["mcp-registry:read"],
            "bearer_methods_supported": ["header"],
            "resource_name": "The data platform's servers",
        }

    async def test_public_url_makes_the_urls_absolute_to_it(
        self, make_client: Callable[..., Any]
    ) -> None:
        api = await make_client(api={"public_url": "https://registry.example.com"})
        metadata = await (await api.get(METADATA + "/teams/payments")).json()
        assert metadata["resource"] == "https://registry.example.com/teams/payments"
        assert "authorization_servers" not in metadata  # static tokens: no server to ask
        params = challenge(await api.get(PAYMENTS))
        assert params["resource_metadata"] == (
            "https://registry.example.com/.well-known/oauth-protected-resource/teams/payments"
        )


def forge_hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 token keyed with `secret` (PyJWT refuses to make one with a PEM key)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


class TestOidc:
    async def test_a_valid_token_reads_the_view(
        self, api: TestClient[Any, Any], provider: Provider
    ) -> None:
        response = await api.get(DATA, headers=bearer(provider.token()))
        assert response.status == 200
        assert (await response.json())["servers"]
        assert response.headers["Cache-Control"] == "private"
        # Groups as one string hold too; the keys were fetched once for both.
        token = provider.token(groups="data")
        assert (await api.get(DATA, headers=bearer(token))).status == 200
        assert provider.requests == {"discovery": 1, "jwks": 1}

    @pytest.mark.parametrize(
        ("claims", "description"),
        [
            # Times as offsets from the moment the token is made: parameters are built at
            # collection, which may be many minutes before the test runs.
            ({"exp": -120}, "expired"),
            ({"nbf": 300}, "not valid yet"),
            ({"iat": 300}, "not valid yet"),
            ({"aud": "another-service"}, "another audience"),
            ({"iss": "https://evil.example"}, "another issuer"),
            ({"exp": None}, "'exp'"),
            ({"aud": None}, "'aud'"),
        ],
    )
    async def test_claims_out_of_bounds_are_a_401(
        self,
        api: TestClient[Any, Any],
        provider: Provider,
        claims: dict[str, Any],
        description: str,
    ) -> None:
        now = int(time.time())
        made = {
            k: now + v if k in ("exp", "nbf", "iat") and v is not None else v
            for k, v in claims.items()
        }
        response = await api.get(DATA, headers=bearer(provider.token(**made)))
        params = await assert_denied(response, 401, "invalid_token")
        assert description in params["error_description"]

    async def test_leeway_absorbs_small_clock_skew(
        self, api: TestClient[Any, Any], provider: Provider
    ) -> None:
        token = provider.token(exp=int(time.time()) - 5, nbf=int(time.time()) + 5)
        assert (await api.get(DATA, headers=bearer(token))).status == 200

    async def test_alg_none_and_hs256_keyed_with_the_public_key_are_refused(
        self, api: TestClient[Any, Any], provider: Provider
    ) -> None:
        claims = jwt.decode(provider.token(), options={"verify_signature": False})
        unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": provider.key.kid})
        forged = forge_hs256(claims, provider.key.public_pem(), provider.key.kid)
        for token in (unsigned, forged):
            response = await api.get(DATA, headers=bearer(token))
            params = await assert_denied(response, 401, "invalid_token")
            assert "algorithm" in params["error_description"]

    async def test_a_token_signed_by_another_key_with_a_published_kid_is_refused(
        self, api: TestClient[Any, Any], provider: Provider
    ) -> None:
        impostor = make_key()
        impostor.kid = provider.key.kid
        response = await api.get(DATA, headers=bearer(provider.token(key=impostor)))
        params = await assert_denied(response, 401, "invalid_token")
        assert "signature" in params["error_description"]

    async def test_an_algorithm_off_the_allow_list_is_refused(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        api = await make_client(algorithms=["ES256"])
        response = await api.get(DATA, headers=bearer(provider.token()))
        await assert_denied(response, 401, "invalid_token")

    async def test_a_rotated_key_is_fetched_on_its_first_use(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        api = await make_client(jwks_refresh=0)
        old = provider.token()
        assert (await api.get(DATA, headers=bearer(old))).status == 200
        provider.rotate("ES256")
        new = provider.token()
        assert (await api.get(DATA, headers=bearer(new))).status == 200
        assert provider.requests["jwks"] == 2
        # The old key's token: its kid is no longer published.
        await assert_denied(await api.get(DATA, headers=bearer(old)), 401, "invalid_token")

    async def test_a_kid_flood_fetches_the_keys_at_most_once_per_interval(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        interval = 2.0
        api = await make_client(jwks_refresh=f"{interval}s")
        assert (await api.get(DATA, headers=bearer(provider.token()))).status == 200
        assert provider.requests["jwks"] == 1
        strangers = [provider.token(headers={"kid": f"made-up-{i}"}) for i in range(50)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        for token in strangers:
            await assert_denied(await api.get(DATA, headers=bearer(token)), 401, "invalid_token")
        # At most one fetch per interval that passed, however slow the machine is: 50 unknown
        # kids within one interval ask the issuer once, not 50 times.
        asked = provider.requests["jwks"]
        assert asked <= 1 + int((loop.time() - started) // interval)
        await asyncio.sleep(interval + 0.1)  # the interval passes: the next unknown kid may ask
        started = loop.time()
        statuses = await asyncio.gather(*(api.get(DATA, headers=bearer(t)) for t in strangers[:20]))
        assert {s.status for s in statuses} == {401}
        now = provider.requests["jwks"]
        assert asked + 1 <= now <= asked + 1 + int((loop.time() - started) // interval)

    async def test_a_token_without_the_required_group_is_a_403(
        self, api: TestClient[Any, Any], provider: Provider
    ) -> None:
        for claims in ({"groups": ["staff"]}, {"groups": None}, {"groups": "staff"}):
            response = await api.get(DATA, headers=bearer(provider.token(**claims)))
            params = await assert_denied(response, 403, "insufficient_scope")
            assert "groups" in params["error_description"]

    async def test_issuer_down_is_a_503_not_a_401_and_it_recovers(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        api = await make_client(jwks_refresh=0)
        provider.down = True
        response = await api.get(DATA, headers=bearer(provider.token()))
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        assert int(response.headers["Retry-After"]) >= 1
        assert "WWW-Authenticate" not in response.headers
        provider.down = False
        assert (await api.get(DATA, headers=bearer(provider.token()))).status == 200

    async def test_an_unreachable_or_foreign_issuer_is_a_503(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        unreachable = await make_client(issuer=f"http://127.0.0.1:{free_port()}")
        response = await unreachable.get(DATA, headers=bearer(provider.token()))
        assert response.status == 503
        # Discovery that names another issuer is no source of keys for this one.
        provider.claimed_issuer = "https://impostor.example"
        foreign = await make_client()
        assert (await foreign.get(DATA, headers=bearer(provider.token()))).status == 503

    async def test_bearer_and_oidc_views_do_not_accept_each_others_tokens(
        self, api: TestClient[Any, Any], provider: Provider
    ) -> None:
        await assert_denied(await api.get(DATA, headers=bearer(TOKENS[0])), 401, "invalid_token")
        response = await api.get(PAYMENTS, headers=bearer(provider.token()))
        await assert_denied(response, 401, "invalid_token")
        assert (await api.get("/v0.1/servers")).status == 200  # the default view is open


class TestIssuerFaults:
    """What the issuer sends is input like any other: read whole, bounded, and any failure to
    fetch or use it is a failed fetch (503, the issuer asked again at most once per
    `jwks_refresh`, one log line), never an error escaping the request."""

    async def test_documents_sent_in_pieces_are_read_whole(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        provider.pieces = 8
        api = await make_client()
        assert (await api.get(DATA, headers=bearer(provider.token()))).status == 200
        assert provider.requests == {"discovery": 1, "jwks": 1}

    @pytest.mark.parametrize(
        ("route", "body"),
        [
            ("discovery", b"[" * 200_000),
            ("jwks", b"[" * 200_000),
            ("jwks", b'{"keys": ' + b'{"k": ' * 100_000 + b"1" + b"}" * 100_001),
            # Over the limit, in pieces: refused, not read to the end and used.
            ("jwks", b'{"keys": []' + b" " * FETCH_LIMIT + b"}"),
            ("discovery", b"\xff\xfe\x00not json"),
            ("discovery", b'"a string"'),
            ("jwks", b'{"keys": {"kid": "x"}}'),
        ],
        ids=[
            "nested-discovery",
            "nested-jwks",
            "nested-object",
            "oversized",
            "bytes",
            "str",
            "dict",
        ],
    )
    async def test_a_body_that_cannot_be_used_is_a_failed_fetch(
        self, make_client: Callable[..., Any], provider: Provider, route: str, body: bytes
    ) -> None:
        provider.bodies[route] = body
        provider.pieces = 4
        api = await make_client()  # jwks_refresh = 1h
        with capture_logs() as events:
            responses = [await api.get(DATA, headers=bearer(provider.token())) for _ in range(3)]
        for response in responses:
            assert response.status == 503, await response.text()
            assert response.content_type == "application/problem+json"
            assert int(response.headers["Retry-After"]) > 3000
        assert provider.requests[route] == 1  # once per jwks_refresh, not once per request
        [failed] = [e for e in events if e["event"] == "oidc.keys_unavailable"]
        assert "\n" not in failed["error"] and len(failed["error"]) < 400
        assert "exc_info" not in failed

    async def test_a_published_key_that_cannot_be_used_is_skipped(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        key = provider.rotate("ES256")
        broken = [
            {**key.jwk(), "crv": ["P-256"]},
            {**key.jwk(), "x": 5},
            {**key.jwk(), "kty": {"EC": 1}},
        ]
        provider.bodies["jwks"] = json.dumps({"keys": broken}).encode()
        only_broken = await make_client()
        response = await only_broken.get(DATA, headers=bearer(provider.token()))
        await assert_denied(response, 401, "invalid_token")
        provider.bodies["jwks"] = json.dumps({"keys": [*broken, key.jwk()]}).encode()
        with_good = await make_client()
        assert (await with_good.get(DATA, headers=bearer(provider.token()))).status == 200


async def eventually(check: Callable[[], bool]) -> None:
    """Wait for something a background task does (bounded: a hang fails the test)."""
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("it never happened")


class TestJwksUri:
    """The JWKS is fetched as securely as discovery: over https, plain http only from a
    loopback issuer to a loopback address (the rule `issuer` itself follows)."""

    async def test_an_https_issuer_naming_an_http_jwks_is_refused(
        self, make_client: Callable[..., Any], provider: Provider, tmp_path: Path
    ) -> None:
        ca = trustme.CA()
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(tls)
        async with running_provider(tls) as secure:
            assert secure.issuer.startswith("https://")
            options = {"issuer": secure.issuer, "ca_file": str(ca_file)}
            api = await make_client(**options)
            assert (await api.get(DATA, headers=bearer(secure.token()))).status == 200
            # The same keys, named at a plain-http address: an attacker on the path could
            # swap them.
            provider.keys = secure.keys
            secure.jwks_uri = provider.issuer + "/jwks"
            api = await make_client(**options)
            with capture_logs() as events:
                response = await api.get(DATA, headers=bearer(secure.token()))
            assert response.status == 503
            assert provider.requests["jwks"] == 0
            [failed] = [e for e in events if e["event"] == "oidc.keys_unavailable"]
            assert "https" in failed["error"]

    @pytest.mark.parametrize(
        "uri", ["http://192.0.2.1/jwks", "ftp://127.0.0.1/jwks", "https:///jwks", "/jwks"]
    )
    async def test_a_loopback_issuer_may_name_only_a_loopback_http_jwks(
        self, make_client: Callable[..., Any], provider: Provider, uri: str
    ) -> None:
        provider.jwks_uri = uri
        api = await make_client()
        with capture_logs() as events:
            response = await api.get(DATA, headers=bearer(provider.token()))
        assert response.status == 503
        [failed] = [e for e in events if e["event"] == "oidc.keys_unavailable"]
        assert "jwks_uri" in failed["error"]
        provider.jwks_uri = provider.issuer.replace("127.0.0.1", "localhost") + "/jwks"
        api = await make_client()
        assert (await api.get(DATA, headers=bearer(provider.token()))).status == 200


class TestStaleKeys:
    """Keys past `jwks_ttl` go on verifying while the issuer cannot be reached: its outage is
    not the views' outage. It is asked again at most once per `jwks_refresh`, and in the
    background: no request waits on it for keys the cache has."""

    async def test_cached_keys_verify_while_the_issuer_is_down(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        api = await make_client(jwks_ttl=1, jwks_refresh="1h")
        token = provider.token()
        assert (await api.get(DATA, headers=bearer(token))).status == 200
        provider.down = True
        await asyncio.sleep(1.1)  # the keys are past their ttl
        with capture_logs() as events:
            assert (await api.get(DATA, headers=bearer(token))).status == 200
            await eventually(lambda: any(e["event"] == "oidc.keys_stale" for e in events))
            for _ in range(10):
                assert (await api.get(DATA, headers=bearer(token))).status == 200
        assert provider.requests == {"discovery": 2, "jwks": 1}  # asked once, not per request
        [stale] = [e for e in events if e["event"] == "oidc.keys_stale"]
        assert stale["issuer"] == provider.issuer and stale["age_s"] >= 1
        assert "503" in stale["error"]
        # A key the cache lacks may well be published: 503, not 401, and the issuer not asked.
        stranger = provider.token(key=make_key())
        response = await api.get(DATA, headers=bearer(stranger))
        assert response.status == 503
        assert int(response.headers["Retry-After"]) > 3000
        assert provider.requests == {"discovery": 2, "jwks": 1}
        # Claims are still checked against the stale keys.
        expired = provider.token(exp=int(time.time()) - 120)
        await assert_denied(await api.get(DATA, headers=bearer(expired)), 401, "invalid_token")

    async def test_once_the_issuer_is_back_a_withdrawn_key_stops_verifying(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        api = await make_client(jwks_ttl=1, jwks_refresh="1s")
        old = provider.token()
        assert (await api.get(DATA, headers=bearer(old))).status == 200
        provider.down = True
        await asyncio.sleep(1.1)
        assert (await api.get(DATA, headers=bearer(old))).status == 200
        await eventually(lambda: provider.requests["discovery"] == 2)
        provider.down = False
        provider.rotate("ES256")  # the old key is withdrawn
        await asyncio.sleep(1.1)  # jwks_refresh: the issuer may be asked again
        await api.get(DATA, headers=bearer(old))  # asks it, in the background
        # A token of the new key waits for that fetch; after it, the old key is gone.
        assert (await api.get(DATA, headers=bearer(provider.token()))).status == 200
        await assert_denied(await api.get(DATA, headers=bearer(old)), 401, "invalid_token")
        assert provider.requests == {"discovery": 3, "jwks": 2}

    async def test_an_unknown_kid_is_looked_up_again_once_the_issuer_is_back(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        """A failed lookup within the ttl leaves the issuer failing; the next interval asks
        it again rather than answering 503 until the ttl runs out."""
        api = await make_client(jwks_refresh="1s")  # jwks_ttl: 1h
        assert (await api.get(DATA, headers=bearer(provider.token()))).status == 200
        provider.down = True
        provider.rotate()
        await asyncio.sleep(1.1)
        assert (await api.get(DATA, headers=bearer(provider.token()))).status == 503
        provider.down = False
        await asyncio.sleep(1.1)
        assert (await api.get(DATA, headers=bearer(provider.token()))).status == 200
        assert provider.requests == {"discovery": 1, "jwks": 3}

    async def test_no_request_waits_on_the_issuer_for_keys_the_cache_has(
        self, make_client: Callable[..., Any], provider: Provider
    ) -> None:
        api = await make_client(jwks_ttl=1)
        token = provider.token()
        assert (await api.get(DATA, headers=bearer(token))).status == 200
        await asyncio.sleep(1.1)
        provider.hold = asyncio.Event()  # the issuer hangs
        try:
            assert (await api.get(DATA, headers=bearer(token))).status == 200
            await eventually(lambda: provider.requests["discovery"] == 2)
            assert (await api.get(DATA, headers=bearer(token))).status == 200
            assert not provider.hold.is_set()  # answered while the fetch still hung
            assert provider.requests == {"discovery": 2, "jwks": 1}
        finally:
            provider.hold.set()


class TestReload:
    async def test_sighup_rereads_the_tokens_and_api_auth(
        self, tmp_path: Path, fake_url: str
    ) -> None:
        """A real daemon: the old token 401 and the new one 200 after SIGHUP, and [api.auth]
        added by the reload guards the default view; no token is ever logged."""
        port = free_port()
        tokens = tmp_path / "tokens"
        tokens.write_text("old-token\n")
        view = (
            f"[api]\nport = {port}\n"
            '[[views]]\nname = "payments"\nbase_path = "/teams/payments"\n'
            f'[views.auth]\ntype = "bearer"\ntokens_file = "{tokens}"\n'
        )
        config = write_config(tmp_path, fake_url, view, before_upstreams=True)
        process = await spawn("--config", config, "serve")
        base = f"http://127.0.0.1:{port}"

        async def status(path: str, token: str | None = None) -> int:
            headers = bearer(token) if token else {}
            async with (
                aiohttp.ClientSession() as session,
                session.get(base + path, headers=headers) as response,
            ):
                return response.status

        try:
            for _ in range(300):
                await asyncio.sleep(0.05)
                try:
                    if await status("/readyz") == 200:
                        break
                except aiohttp.ClientError:
                    continue
            assert await status(PAYMENTS, "old-token") == 200
            assert await status(PAYMENTS, "new-token") == 401
            tokens.write_text("new-token\n")
            config.write_text(
                config.read_text().replace(
                    f"port = {port}\n",
                    f'port = {port}\n[api.auth]\ntype = "bearer"\ntokens_file = "{tokens}"\n',
                )
            )
            process.send_signal(signal.SIGHUP)
            for _ in range(200):
                await asyncio.sleep(0.05)
                if await status(PAYMENTS, "old-token") == 401:
                    break
            assert await status(PAYMENTS, "old-token") == 401
            assert await status(PAYMENTS, "new-token") == 200
            assert await status("/v0.1/servers") == 401
            assert await status("/v0.1/servers", "new-token") == 200
            assert await status("/readyz") == 200
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 30)
        log = err.decode()
        assert "config.reloaded" in log and "config.reload_needs_restart" not in log
        assert "old-token" not in log and "new-token" not in log
