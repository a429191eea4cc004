"""Who is calling the gRPC service: bearer tokens or client certificates (`grpc_auth`).

- ``none`` (default): every call is ``User:ANONYMOUS``.
- ``token``: each call carries the metadata ``authorization: Bearer <token>``. Tokens are made
  by ``streamctl token create USER`` and stored hashed: metadata catalog kind ``grpc_token``,
  name = lowercase hex SHA-256 of the token's UTF-8 bytes, definition = UTF-8 JSON
  ``{"user": "<name>", "created_ms": <ms>}``. The token itself is never stored (it is 256
  random bits, so an unsalted hash is safe). The call's principal is ``User:<name>``.
- ``mtls``: the TLS handshake requires a client certificate signed by ``tls_ca_file``; the
  principal is ``User:<CN>`` of that certificate (streamhouse/tls.py).

A call without a valid token (or certificate) fails with UNAUTHENTICATED and a message saying
what is missing. The health service (and reflection) are not behind this check, so
supervisord, ``streamhouse status`` and load balancers can probe a token-protected agent; with
``mtls`` the TLS handshake itself needs a client certificate, for them too.

Used by ingest's gRPC listener and by the sql service's (the same tokens and certificates
work on both). Each process caches the whole token table and reloads it when it is older than
``TOKEN_CACHE_TTL_S`` (2 s), or at most every 0.1 s when a token is not in it: a new token
works at once, a deleted one stops working within 2 s, on every agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from typing import Any, Final

from streamhouse.config import Settings
from streamhouse.principal import ANONYMOUS, user_principal
from streamhouse.tls import principal_of_grpc_auth_context

CATALOG_KIND: Final = "grpc_token"
TOKEN_PREFIX: Final = "sht_"
TOKEN_CACHE_TTL_S: Final = 2.0
_MISS_RELOAD_S: Final = 0.1
_PEER = re.compile(r"^ipv[46]:\[?(?P<host>[^\]]*?)\]?:\d+$")


class AuthenticationFailed(Exception):
    """The call is not authenticated; the message says why and what to do."""


def new_token() -> str:
    """A fresh token: ``sht_`` and 32 random bytes in URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_record(user: str, now_ms: int) -> bytes:
    return json.dumps({"user": user, "created_ms": now_ms}, sort_keys=True).encode()


def parse_token_record(data: bytes) -> tuple[str, int]:
    """(user, created_ms) of a stored token; ValueError when corrupt."""
    try:
        doc = json.loads(data)
        return str(doc["user"]), int(doc["created_ms"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"corrupt grpc_token record: {exc}") from None


class GrpcAuthenticator:
    """Finds the principal of one gRPC call (see the module docstring)."""

    def __init__(self, settings: Settings, meta: Any) -> None:
        self.mode = settings.grpc_auth
        self._meta = meta
        self._tokens: dict[str, str] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def principal(self, context: Any) -> str:
        if self.mode == "none":
            return ANONYMOUS
        if self.mode == "mtls":
            principal = principal_of_grpc_auth_context(context.auth_context())
            if principal is None:
                raise AuthenticationFailed(
                    "the client certificate names no user (no CN or subject alternative "
                    "name): issue one whose CN is the user"
                )
            return principal
        token = _bearer(context.invocation_metadata() or ())
        if token is None:
            raise AuthenticationFailed(
                "this server requires a token: send the metadata 'authorization: Bearer "
                "<token>' (streamctl --token / STREAMHOUSE_TOKEN; make one with "
                "`streamctl token create USER`)"
            )
        user = await self._user_of(token_hash(token))
        if user is None:
            raise AuthenticationFailed(
                "the token is not valid (unknown or deleted): make a new one with "
                "`streamctl token create USER`"
            )
        return user_principal(user)

    async def _user_of(self, digest: str) -> str | None:
        loop = asyncio.get_running_loop()
        age = None if self._loaded_at is None else loop.time() - self._loaded_at
        if (
            age is None
            or age > TOKEN_CACHE_TTL_S
            or (digest not in self._tokens and age > _MISS_RELOAD_S)
        ):
            async with self._lock:
                # Another call may have reloaded while this one waited for the lock.
                if self._loaded_at is None or loop.time() - self._loaded_at > _MISS_RELOAD_S:
                    await self._reload()
        return self._tokens.get(digest)

    async def _reload(self) -> None:
        tokens = {}
        for name, data in await self._meta.list_catalog_entries(CATALOG_KIND):
            try:
                tokens[name] = parse_token_record(data)[0]
            except ValueError:
                continue
        self._tokens = tokens
        self._loaded_at = asyncio.get_running_loop().time()


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def peer_host(peer: str | None) -> str:
    """The IP address in a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``),
    "" when there is none (e.g. a Unix socket): the host ACLs match."""
    match = _PEER.match(peer or "")
    return match.group("host") if match else ""
