"""AlterUserScramCredentials / DescribeUserScramCredentials handlers against an in-memory
catalog: what is stored (derived keys, never the salted password), and Kafka's per-user
errors."""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace
from typing import Any

from ingest.kafka.api_security import (
    DUPLICATE_RESOURCE,
    RESOURCE_NOT_FOUND,
    UNACCEPTABLE_CREDENTIAL,
    UNSUPPORTED_SASL_MECHANISM,
    alter_user_scram_credentials,
    describe_user_scram_credentials,
    lookup_credential,
)
from streamhouse.kafka.messages import (
    AlterUserScramCredentialsRequest as Alter,
)
from streamhouse.kafka.messages import (
    DescribeUserScramCredentialsRequest as Describe,
)
from streamhouse.kafka.messages import RequestHeader
from streamhouse.scram import CATALOG_KIND, check_password, salted_password


class Catalog:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], bytes] = {}

    async def put_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, replace: bool = False
    ) -> None:
        self.entries[(kind, name)] = definition

    async def get_catalog_entry(self, kind: str, name: str) -> bytes | None:
        return self.entries.get((kind, name))

    async def list_catalog_entries(self, kind: str) -> list[tuple[str, bytes]]:
        return sorted((n, d) for (k, n), d in self.entries.items() if k == kind)

    async def delete_catalog_entry(self, kind: str, name: str) -> bool:
        return self.entries.pop((kind, name), None) is not None


HEADER = RequestHeader(request_api_key=51, request_api_version=0)


def _up(name: str, mechanism: int = 1, iterations: int = 4096, password: str = "pw") -> Any:
    hash_name = "SCRAM-SHA-256" if mechanism == 1 else "SCRAM-SHA-512"
    salted = (
        salted_password(hash_name, password, b"salt", iterations) if mechanism in (1, 2) else b"x"
    )
    return Alter.ScramCredentialUpsertion(
        name=name, mechanism=mechanism, iterations=iterations, salt=b"salt", salted_password=salted
    )


def _alter(broker: Any, **kwargs: Any) -> dict[str, tuple[int, str | None]]:
    response = asyncio.run(alter_user_scram_credentials(broker, HEADER, Alter(**kwargs)))
    return {r.user: (r.error_code, r.error_message) for r in response.results}


def test_upsert_describe_delete() -> None:
    catalog = Catalog()
    broker = SimpleNamespace(meta=catalog)
    assert _alter(broker, upsertions=[_up("alice"), _up("bob", 2, 8192)]) == {
        "alice": (0, None),
        "bob": (0, None),
    }
    stored = catalog.entries[(CATALOG_KIND, "SCRAM-SHA-256/alice")]
    assert salted_password("SCRAM-SHA-256", "pw", b"salt", 4096) not in stored
    credential = asyncio.run(lookup_credential(catalog, "SCRAM-SHA-256", "alice"))
    assert credential is not None and check_password("SCRAM-SHA-256", credential, "pw")
    described = asyncio.run(describe_user_scram_credentials(broker, HEADER, Describe(users=None)))
    assert [
        (r.user, [(c.mechanism, c.iterations) for c in r.credential_infos])
        for r in described.results
    ] == [("alice", [(1, 4096)]), ("bob", [(2, 8192)])]
    deletion = Alter.ScramCredentialDeletion(name="alice", mechanism=1)
    assert _alter(broker, deletions=[deletion]) == {"alice": (0, None)}
    assert _alter(broker, deletions=[deletion])["alice"][0] == RESOURCE_NOT_FOUND
    names = [Describe.UserName(name="alice"), Describe.UserName(name="bob")]
    described = asyncio.run(describe_user_scram_credentials(broker, HEADER, Describe(users=names)))
    assert [(r.user, r.error_code) for r in described.results] == [
        ("alice", RESOURCE_NOT_FOUND),
        ("bob", 0),
    ]


def test_refusals_per_user() -> None:
    catalog = Catalog()
    broker = SimpleNamespace(meta=catalog)
    bad_length = _up("eve")
    bad_length.salted_password = hashlib.sha256(b"x").digest()[:10]
    result = _alter(
        broker,
        upsertions=[
            _up(""),
            _up("few", iterations=100),
            _up("many", iterations=20000),
            _up("mech", mechanism=7),
            bad_length,
            _up("twice"),
        ],
        deletions=[Alter.ScramCredentialDeletion(name="twice", mechanism=1)],
    )
    assert {user: code for user, (code, _) in result.items()} == {
        "": UNACCEPTABLE_CREDENTIAL,
        "few": UNACCEPTABLE_CREDENTIAL,
        "many": UNACCEPTABLE_CREDENTIAL,
        "mech": UNSUPPORTED_SASL_MECHANISM,
        "eve": UNACCEPTABLE_CREDENTIAL,
        "twice": DUPLICATE_RESOURCE,
    }
    assert all(message for _, message in result.values())
    assert catalog.entries == {}  # nothing refused was stored
    twice = [Describe.UserName(name="x"), Describe.UserName(name="x")]
    described = asyncio.run(describe_user_scram_credentials(broker, HEADER, Describe(users=twice)))
    assert [(r.user, r.error_code) for r in described.results] == [("x", DUPLICATE_RESOURCE)]
