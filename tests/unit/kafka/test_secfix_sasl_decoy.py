"""An unknown user looks like a known one (ingest/kafka/sasl.py): the SCRAM challenge of a
decoy has a real credential's shape (32-byte salt, default iterations) and the same salt on
every agent of the cluster (a secret shared through the metadata catalog); PLAIN runs the
same lookups and the same PBKDF2 for an unknown user as for a known one."""

from __future__ import annotations

import asyncio
import base64
import pathlib
from typing import Any

import pytest

import ingest.kafka.sasl as sasl
from ingest.kafka.sasl import (
    DECOY_SECRET_KIND,
    DECOY_SECRET_NAME,
    SaslFailure,
    SaslSession,
    cluster_decoy_secret,
)
from metadata import MetadataStore
from metadata.async_store import AsyncMetadata
from streamhouse.scram import DEFAULT_ITERATIONS, ScramClient, ScramCredential, make_credential

KNOWN = {
    ("SCRAM-SHA-256", "alice"): make_credential("SCRAM-SHA-256", "pw", DEFAULT_ITERATIONS),
    ("SCRAM-SHA-512", "alice"): make_credential("SCRAM-SHA-512", "pw", DEFAULT_ITERATIONS),
}


def _challenge(session: SaslSession, mechanism: str, user: str) -> dict[str, str]:
    assert session.handshake(mechanism) == 0
    first = ScramClient(mechanism, user, "x").first()
    answer = asyncio.run(session.authenticate(first)).decode()
    return dict(part.split("=", 1) for part in answer.split(","))


def _session(lookups: list[tuple[str, str]] | None = None, secret: Any = None) -> SaslSession:
    async def lookup(mechanism: str, user: str) -> ScramCredential | None:
        if lookups is not None:
            lookups.append((mechanism, user))
        return KNOWN.get((mechanism, user))

    return SaslSession(("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), lookup, secret)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_the_decoy_challenge_has_a_real_credentials_shape(mechanism: str) -> None:
    known = _challenge(_session(), mechanism, "alice")
    unknown = _challenge(_session(), mechanism, "mallory")
    for challenge in (known, unknown):
        assert len(base64.b64decode(challenge["s"])) == 32
        assert challenge["i"] == str(DEFAULT_ITERATIONS)
    assert _challenge(_session(), mechanism, "mallory")["s"] == unknown["s"]  # stable
    assert _challenge(_session(), mechanism, "eve")["s"] != unknown["s"]


def test_every_agent_shows_the_same_decoy_salt(tmp_path: pathlib.Path) -> None:
    store = MetadataStore(tmp_path / "meta.sqlite")

    async def go() -> tuple[dict[str, str], dict[str, str], bytes | None]:
        meta = AsyncMetadata(store)
        agent_a, agent_b = cluster_decoy_secret(meta), cluster_decoy_secret(meta)
        # Both agents need the secret at once: one creates it, both use that one.
        secret_a, secret_b = await asyncio.gather(agent_a(), agent_b())
        assert secret_a == secret_b and len(secret_a) == 32
        stored = await meta.get_catalog_entry(DECOY_SECRET_KIND, DECOY_SECRET_NAME)
        one = await asyncio.to_thread(_challenge, _session(secret=agent_a), "SCRAM-SHA-256", "x")
        two = await asyncio.to_thread(_challenge, _session(secret=agent_b), "SCRAM-SHA-256", "x")
        return one, two, stored

    one, two, stored = asyncio.run(go())
    assert one["s"] == two["s"]
    assert stored is not None and len(stored) == 32
    # A process-local secret (no catalog) gives another salt: the cluster's secret is used.
    assert _challenge(_session(), "SCRAM-SHA-256", "x")["s"] != one["s"]


def test_plain_does_the_same_work_for_an_unknown_user(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[tuple[str, int, int]] = []
    real = sasl.check_password

    def spy(mechanism: str, credential: ScramCredential, password: str) -> bool:
        hashed.append((mechanism, credential.iterations, len(credential.salt)))
        return real(mechanism, credential, password)

    monkeypatch.setattr(sasl, "check_password", spy)
    work: list[list[Any]] = []
    for user, password in (("alice", "pw"), ("alice", "bad"), ("mallory", "pw")):
        lookups: list[tuple[str, str]] = []
        hashed.clear()
        session = _session(lookups)
        assert session.handshake("PLAIN") == 0
        try:
            asyncio.run(session.authenticate(f"\0{user}\0{password}".encode()))
            outcome = "ok"
        except SaslFailure as exc:
            outcome = exc.message
        work.append([[m for m, _ in lookups], list(hashed), outcome])
    ok, wrong, unknown = work
    assert ok[2] == "ok"
    assert wrong[:2] == unknown[:2] == ok[:2]  # same lookups, same PBKDF2
    assert wrong[2] == unknown[2] != "ok"  # the same refusal
    assert ok[1] == [("SCRAM-SHA-512", DEFAULT_ITERATIONS, 32)]
