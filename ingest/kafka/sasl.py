"""SASL on the Kafka listener: one `SaslSession` per connection, PLAIN and SCRAM-SHA-256/512.

The exchange, as Kafka clients run it (SaslHandshake v1, then SaslAuthenticate v0-2):

1. ApiVersions (allowed before authentication), SaslHandshake naming a mechanism; an
   unknown or disabled one gets UNSUPPORTED_SASL_MECHANISM with the enabled list.
2. SaslAuthenticate rounds carrying the mechanism's tokens: PLAIN is one round
   (``authzid NUL user NUL password``, UTF-8; authzid empty or the user), SCRAM two
   (streamhouse/scram.py has the messages).
3. Success sets the connection's principal to ``User:<name>``; every later request of the
   connection runs with it in `streamhouse.principal.current_principal`.

Until step 3 completes only ApiVersions, SaslHandshake and SaslAuthenticate are served; any
other request closes the connection (as Kafka does). A failed authentication is answered
SASL_AUTHENTICATION_FAILED with a message that does not tell a wrong password from an
unknown user (SCRAM challenges an unknown user with a decoy salt and fails it at the proof,
as a wrong password), and the connection is closed after the answer. Re-authentication (KIP-368) is
not offered: `session_lifetime_ms` is 0. After a SaslHandshake v0 (clients before Kafka 1.0)
the tokens travel raw, without Kafka framing: each one a 4-byte big-endian length and its bytes,
in both directions (`RawToken`); a failed v0 authentication just closes the connection, as
Kafka does.

Credentials: SCRAM checks against the stored credential of the mechanism (metadata catalog,
kind ``scram_credential``, read at each authentication, so a new or deleted user counts from
the next login). PLAIN checks the password against the user's stored SCRAM credential
(SCRAM-SHA-512 if there is one, else SCRAM-SHA-256): one user store for every mechanism, no
password file; the PBKDF2 of that check runs on a worker thread.

Unknown users look like known ones. SCRAM answers them with the challenge of a decoy
credential (``decoy_credential``): a 32-byte salt, as ``streamctl user add`` and
``make_credential`` store, that is HMAC-SHA-256 of ``<mechanism>/<user>`` under a secret
shared by the cluster, so every agent and every attempt shows the same salt for the same name;
the default iterations (8192, what ``streamctl user add`` stores unless told otherwise); the
exchange then fails at the proof, as a wrong password does. PLAIN always looks up both SCRAM
credentials and, for an unknown user, runs the same PBKDF2 (SCRAM-SHA-512 at the default
iterations) against a decoy before refusing. A user stored with other iterations than the
default is still told apart from an unknown one by the iterations a SCRAM challenge shows.

The decoy secret (catalog kind ``sasl-decoy``, name ``secret``): the definition is 32 random
bytes, created by the first agent that needs it (compare-and-set against no entry, so
concurrent agents agree on one) and kept in memory by each agent afterwards.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from streamhouse.scram import (
    DEFAULT_ITERATIONS,
    ScramCredential,
    ScramError,
    ScramServer,
    check_password,
    parse_client_first,
)

if TYPE_CHECKING:
    from metadata.async_store import AsyncMetadata

log = logging.getLogger("ingest.kafka")

UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58

#: API keys served before a SASL connection is authenticated.
ALLOWED_BEFORE_AUTH = frozenset({17, 18, 36})  # SaslHandshake, ApiVersions, SaslAuthenticate

#: (mechanism, user) -> the stored credential, or None.
CredentialLookup = Callable[[str, str], Awaitable[ScramCredential | None]]

#: The SASL session of the connection whose request is being handled (None: no SASL).
current_sasl: ContextVar[SaslSession | None] = ContextVar("streamhouse_sasl", default=None)


class RawToken:
    """The answer to a raw SASL token (handshake v0): written as a 4-byte length and the
    bytes; ``None`` writes nothing (the authentication failed)."""

    __slots__ = ("token",)

    def __init__(self, token: bytes | None) -> None:
        self.token = token

    def frame(self) -> bytes:
        token = self.token or b""
        return len(token).to_bytes(4, "big") + token


class SaslFailure(Exception):
    """Authentication failed or the exchange is out of order: answered, then the connection
    closes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SaslSession:
    """The SASL state of one connection (see the module docstring for the sequence)."""

    def __init__(
        self,
        mechanisms: tuple[str, ...],
        lookup: CredentialLookup,
        decoy_secret: DecoySecret | None = None,
    ) -> None:
        self.mechanisms = mechanisms
        self._lookup = lookup
        self._decoy_secret = decoy_secret or _process_secret
        self.mechanism: str | None = None
        self.principal: str | None = None  # set once authenticated
        self.failed = False  # the connection closes after the answer in flight
        self._scram: ScramServer | None = None
        self._round = 0
        self.raw_tokens = False  # SaslHandshake v0: tokens without Kafka framing follow

    @property
    def authenticated(self) -> bool:
        return self.principal is not None

    def handshake(self, mechanism: str, version: int = 1) -> int:
        """The SaslHandshake error code (0 when ``mechanism`` is chosen)."""
        if self.mechanism is not None or self.authenticated:
            self.failed = True
            return ILLEGAL_SASL_STATE
        if mechanism not in self.mechanisms:
            self.failed = True
            return UNSUPPORTED_SASL_MECHANISM
        self.mechanism = mechanism
        self.raw_tokens = version == 0
        return 0

    async def raw_step(self, token: bytes) -> RawToken:
        """One raw (SaslHandshake v0) round: the server's token, or an empty answer after
        which the connection closes (``failed`` is set)."""
        try:
            return RawToken(await self.authenticate(token))
        except SaslFailure as exc:
            log.info("SASL authentication (handshake v0) failed: %s", exc.message)
            return RawToken(None)

    async def authenticate(self, token: bytes) -> bytes:
        """One SaslAuthenticate round: the server's token, or SaslFailure."""
        try:
            return await self._step(token)
        except SaslFailure:
            self.failed = True
            raise

    async def _step(self, token: bytes) -> bytes:
        mechanism = self.mechanism
        if mechanism is None or self.authenticated:
            raise SaslFailure(
                ILLEGAL_SASL_STATE,
                "SaslAuthenticate is only valid after a SaslHandshake and before "
                "authentication completed",
            )
        self._round += 1
        if mechanism == "PLAIN":
            return await self._plain(token)
        return await self._scram_step(mechanism, token)

    def _refuse(self, mechanism: str, user: str, why: str) -> SaslFailure:
        log.info("SASL %s authentication of %r failed: %s", mechanism, user, why)
        return SaslFailure(
            SASL_AUTHENTICATION_FAILED,
            f"Authentication failed: invalid credentials with SASL mechanism {mechanism}",
        )

    async def _plain(self, token: bytes) -> bytes:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise SaslFailure(
                SASL_AUTHENTICATION_FAILED,
                "Authentication failed: a PLAIN token is authzid NUL user NUL password",
            )
        try:
            authzid, user, password = (p.decode() for p in parts)
        except UnicodeDecodeError:
            raise SaslFailure(
                SASL_AUTHENTICATION_FAILED, "Authentication failed: PLAIN token is not UTF-8"
            ) from None
        if not user:
            raise SaslFailure(SASL_AUTHENTICATION_FAILED, "Authentication failed: empty user name")
        if authzid and authzid != user:
            raise SaslFailure(
                SASL_AUTHENTICATION_FAILED,
                "Authentication failed: the authorization id must be empty or the user name",
            )
        # Both lookups always, and for an unknown user the PBKDF2 of a decoy shaped as a
        # known user's (SHA-512, as streamctl user add stores by default): the same work, so the
        # answer's timing does not tell them apart.
        found = [(m, await self._lookup(m, user)) for m in ("SCRAM-SHA-512", "SCRAM-SHA-256")]
        scram, credential = next(
            ((m, c) for m, c in found if c is not None),
            ("SCRAM-SHA-512", None),
        )
        known = credential is not None
        if credential is None:
            credential = await self._decoy(scram, user)
        ok = await asyncio.to_thread(check_password, scram, credential, password)
        if not known:
            raise self._refuse("PLAIN", user, "no such user")
        if not ok:
            raise self._refuse("PLAIN", user, "wrong password")
        self.principal = f"User:{user}"
        return b""

    async def _decoy(self, mechanism: str, user: str) -> ScramCredential:
        return decoy_credential(mechanism, user, await self._decoy_secret())

    async def _scram_step(self, mechanism: str, token: bytes) -> bytes:
        if self._scram is None:
            try:
                first = parse_client_first(token)
            except ScramError as exc:
                raise SaslFailure(
                    SASL_AUTHENTICATION_FAILED, f"Authentication failed: {exc}"
                ) from None
            if first.extensions.get("tokenauth", "").lower() == "true":
                raise SaslFailure(
                    SASL_AUTHENTICATION_FAILED,
                    "Authentication failed: delegation tokens are not supported",
                )
            credential = await self._lookup(mechanism, first.user)
            if credential is None:
                # An unknown user gets a plausible challenge and fails at the proof, like a
                # wrong password: the exchange does not tell which users exist.
                credential = await self._decoy(mechanism, first.user)
            self._scram = ScramServer(mechanism)
            self._user = first.user
            return self._scram.first(first, credential)
        try:
            final = self._scram.final(token)
        except ScramError as exc:
            raise self._refuse(mechanism, self._user, str(exc)) from None
        self.principal = f"User:{self._user}"
        return final


#: The catalog entry holding the cluster's decoy secret (see the module docstring).
DECOY_SECRET_KIND = "sasl-decoy"
DECOY_SECRET_NAME = "secret"
_DECOY_SECRET_BYTES = 32
_HASH_BYTES = {"SCRAM-SHA-256": 32, "SCRAM-SHA-512": 64}

#: Gives the secret the decoy salts derive from (the same on every agent of a cluster).
DecoySecret = Callable[[], Awaitable[bytes]]

_PROCESS_SECRET = secrets.token_bytes(_DECOY_SECRET_BYTES)


async def _process_secret() -> bytes:
    """A listener without a metadata store (tests): a secret of this process only."""
    return _PROCESS_SECRET


def cluster_decoy_secret(meta: AsyncMetadata) -> DecoySecret:
    """The cluster's decoy secret: read from the catalog, created there by the first agent
    that needs it (compare-and-set, so every agent ends up with the same one), then kept."""
    cached: list[bytes] = []

    async def secret() -> bytes:
        if cached:
            return cached[0]
        value = await meta.get_catalog_entry(DECOY_SECRET_KIND, DECOY_SECRET_NAME)
        if value is None or len(value) != _DECOY_SECRET_BYTES:
            fresh = secrets.token_bytes(_DECOY_SECRET_BYTES)
            if value is None:
                stored = await meta.swap_catalog_entry(
                    DECOY_SECRET_KIND,
                    DECOY_SECRET_NAME,
                    fresh,
                    int(time.time() * 1000),
                    expect=None,
                )
            else:  # not one of ours (damaged): replaced, logged
                log.error("the SASL decoy secret in the catalog is damaged; replacing it")
                stored = await meta.swap_catalog_entry(
                    DECOY_SECRET_KIND,
                    DECOY_SECRET_NAME,
                    fresh,
                    int(time.time() * 1000),
                    expect=value,
                )
            value = (
                fresh
                if stored
                else await meta.get_catalog_entry(DECOY_SECRET_KIND, DECOY_SECRET_NAME)
            )
            if value is None or len(value) != _DECOY_SECRET_BYTES:
                raise SaslFailure(
                    SASL_AUTHENTICATION_FAILED,
                    "Authentication failed: the broker could not read its SASL state; retry",
                )
        cached.append(bytes(value))
        return cached[0]

    return secret


def decoy_credential(mechanism: str, user: str, secret: bytes) -> ScramCredential:
    """A credential nobody can prove, shaped as a real one: a 32-byte salt stable per
    mechanism and user across the cluster (HMAC-SHA-256 of ``mechanism/user`` under the
    cluster's secret), the default iterations, random keys of the mechanism's hash size."""
    salt = hmac.new(secret, f"{mechanism}/{user}".encode(), "sha256").digest()
    size = _HASH_BYTES.get(mechanism, 64)
    return ScramCredential(
        salt=salt,
        iterations=DEFAULT_ITERATIONS,
        stored_key=secrets.token_bytes(size),
        server_key=secrets.token_bytes(size),
    )


class ListenerSecurity:
    """What a Kafka listener requires of its connections (from the settings)."""

    def __init__(
        self,
        protocol: str,
        mechanisms: tuple[str, ...],
        lookup: CredentialLookup,
        decoy_secret: DecoySecret | None = None,
    ) -> None:
        self.protocol = protocol
        self.sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        self.tls = protocol in ("SSL", "SASL_SSL")
        self.mechanisms = mechanisms
        self._lookup = lookup
        self._decoy_secret = decoy_secret

    def new_session(self) -> SaslSession | None:
        """A connection's SASL session, or None when the listener does not use SASL."""
        if not self.sasl:
            return None
        return SaslSession(self.mechanisms, self._lookup, self._decoy_secret)
