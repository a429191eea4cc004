"""SaslSession: PLAIN and SCRAM exchanges against stored credentials, refusals, state rules."""

from __future__ import annotations

import asyncio

import pytest

from ingest.kafka.sasl import (
    ILLEGAL_SASL_STATE,
    SASL_AUTHENTICATION_FAILED,
    UNSUPPORTED_SASL_MECHANISM,
    SaslFailure,
    SaslSession,
)
from streamhouse.scram import ScramClient, ScramCredential, make_credential

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
STORE = {
    ("SCRAM-SHA-256", "alice"): make_credential("SCRAM-SHA-256", "alice-pw", 4096),
    ("SCRAM-SHA-512", "bob"): make_credential("SCRAM-SHA-512", "bob-pw", 4096),
}


async def _lookup(mechanism: str, user: str) -> ScramCredential | None:
    return STORE.get((mechanism, user))


def _session() -> SaslSession:
    return SaslSession(MECHANISMS, _lookup)


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.mark.parametrize("user,password", [("alice", "alice-pw"), ("bob", "bob-pw")])
def test_plain_checks_against_any_scram_credential(user: str, password: str) -> None:
    session = _session()
    assert session.handshake("PLAIN") == 0
    assert _run(session.authenticate(f"\0{user}\0{password}".encode())) == b""
    assert session.principal == f"User:{user}" and not session.failed


@pytest.mark.parametrize("token", [b"\0alice\0nope", b"\0carol\0x", b"bob\0alice\0alice-pw"])
def test_plain_refusals_fail_the_session(token: bytes) -> None:
    session = _session()
    session.handshake("PLAIN")
    with pytest.raises(SaslFailure) as err:
        _run(session.authenticate(token))
    assert err.value.code == SASL_AUTHENTICATION_FAILED
    assert session.failed and session.principal is None


@pytest.mark.parametrize(
    "mech,user,password,ok",
    [
        ("SCRAM-SHA-256", "alice", "alice-pw", True),
        ("SCRAM-SHA-256", "alice", "wrong", False),
        ("SCRAM-SHA-512", "bob", "bob-pw", True),
        ("SCRAM-SHA-512", "alice", "alice-pw", False),  # no SHA-512 credential for alice
        ("SCRAM-SHA-256", "nobody", "x", False),  # unknown: fails at the proof too
    ],
)
def test_scram_exchange(mech: str, user: str, password: str, ok: bool) -> None:
    async def go() -> None:
        session = _session()
        assert session.handshake(mech) == 0
        client = ScramClient(mech, user, password)
        try:
            server_first = await session.authenticate(client.first())
            assert server_first.startswith(b"r=")  # a challenge, whoever the user is
            client.verify(await session.authenticate(client.final(server_first)))
        except SaslFailure as exc:
            assert not ok
            assert exc.code == SASL_AUTHENTICATION_FAILED and "invalid credentials" in exc.message
            assert session.failed
            return
        assert ok and session.principal == f"User:{user}"

    _run(go())


def test_handshake_rules() -> None:
    session = _session()
    assert session.handshake("GSSAPI") == UNSUPPORTED_SASL_MECHANISM and session.failed
    session = _session()
    with pytest.raises(SaslFailure) as err:
        _run(session.authenticate(b"\0alice\0alice-pw"))
    assert err.value.code == ILLEGAL_SASL_STATE
    session = _session()
    assert session.handshake("PLAIN") == 0
    assert session.handshake("PLAIN") == ILLEGAL_SASL_STATE
