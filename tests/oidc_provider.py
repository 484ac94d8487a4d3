"""A real OpenID Connect provider for the tests: discovery and JWKS over HTTP on a loopback
port, signing keys made here (cryptography), rotated on demand, every request counted. It can
also misbehave the ways a real one does: answer in pieces, send a body of its choosing, name a
JWKS elsewhere, or be down."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "mcp-subregistry"
DISCOVERY = "/.well-known/openid-configuration"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def make_key(alg: str = "RS256") -> SigningKey:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if alg.startswith(("RS", "PS")):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(uuid.uuid4().hex[:12], alg, private)


class Provider:
    """Discovery at `DISCOVERY`, keys at `/jwks`; `down` answers 503 to both."""

    def __init__(self) -> None:
        self.issuer = ""  # its URL, once it listens
        self.keys = [make_key()]
        self.requests: Counter[str] = Counter()
        self.down = False
        self.claimed_issuer: str | None = None  # what discovery says, when not the truth
        self.jwks_uri: str | None = None  # what discovery names, when not its own /jwks
        # Bodies sent instead of the real ones, by route ("discovery", "jwks").
        self.bodies: dict[str, bytes] = {}
        # Each body is written in this many pieces, a pause apart, so the client reads it in
        # several reads as it would from a slow or distant provider.
        self.pieces = 1
        # While set and not yet released, every answer waits for it (an issuer that hangs).
        self.hold: asyncio.Event | None = None

    @property
    def key(self) -> SigningKey:
        return self.keys[0]

    def rotate(self, alg: str = "RS256") -> SigningKey:
        """A new key replaces every published one."""
        self.keys = [make_key(alg)]
        return self.keys[0]

    def token(
        self,
        *,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token signed by `key` (the published one by default); claims override the
        defaults (None removes one)."""
        key = key or self.key
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "groups": ["payments", "staff"],
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(
            body, key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})}
        )

    async def _answer(self, request: web.Request, route: str, document: Any) -> web.StreamResponse:
        self.requests[route] += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            return web.Response(status=503)
        body = self.bodies.get(route) or json.dumps(document).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        size = -(-len(body) // self.pieces)
        for start in range(0, len(body), size):
            if start:
                await asyncio.sleep(0.05)
            await response.write(body[start : start + size])
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.StreamResponse:
            issuer = self.claimed_issuer or self.issuer
            uri = self.jwks_uri or self.issuer + "/jwks"
            return await self._answer(request, "discovery", {"issuer": issuer, "jwks_uri": uri})

        async def jwks(request: web.Request) -> web.StreamResponse:
            return await self._answer(request, "jwks", {"keys": [k.jwk() for k in self.keys]})

        app = web.Application()
        app.router.add_get(DISCOVERY, discovery)
        app.router.add_get("/jwks", jwks)
        return app


@asynccontextmanager
async def running_provider(tls: ssl.SSLContext | None = None) -> AsyncIterator[Provider]:
    """A provider listening on loopback, over TLS (an https issuer) when given a context."""
    provider = Provider()
    server = TestServer(provider.app(), host="127.0.0.1")
    await server.start_server(ssl=tls)
    provider.issuer = str(server.make_url("")).rstrip("/")
    try:
        yield provider
    finally:
        await server.close()
