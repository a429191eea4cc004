"""CreateAcls, DescribeAcls and DeleteAcls handlers (ingest/kafka/api_acls.py) over an
in-memory catalog: SECURITY_DISABLED without an authorizer, INVALID_REQUEST with the reason
for a bad binding or filter, creating twice stores once, and describe/delete by filter."""

from __future__ import annotations

import asyncio
from typing import Any

from ingest.kafka import api_acls
from streamhouse.config import Settings
from streamhouse.kafka import messages as m

SECURITY_DISABLED, INVALID_REQUEST = 54, 42
TOPIC, GROUP, ANY = 2, 3, 1
LITERAL, PREFIXED, MATCH = 3, 4, 2
READ, WRITE = 3, 4
DENY, ALLOW = 2, 3


class CatalogMeta:
    """The catalog calls of AsyncMetadata, in memory."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], bytes] = {}

    async def put_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, replace: bool = False
    ) -> None:
        assert replace or (kind, name) not in self.entries
        self.entries[kind, name] = definition

    async def list_catalog_entries(self, kind: str) -> list[tuple[str, bytes]]:
        return [(n, d) for (k, n), d in sorted(self.entries.items()) if k == kind]

    async def delete_catalog_entry(self, kind: str, name: str) -> bool:
        return self.entries.pop((kind, name), None) is not None


class Broker:
    def __init__(self, authorizer: str = "acl") -> None:
        self.settings = Settings(authorizer=authorizer)
        self.meta = CatalogMeta()


def call(broker: Broker, handler: Any, request: Any, version: int = 2) -> Any:
    header = m.RequestHeader(request_api_key=0, request_api_version=version, correlation_id=1)
    return asyncio.run(handler(broker, header, request))


def creation(**fields: Any) -> m.CreateAclsRequest.AclCreation:
    base: dict[str, Any] = {
        "resource_type": TOPIC,
        "resource_name": "orders",
        "resource_pattern_type": LITERAL,
        "principal": "User:alice",
        "host": "*",
        "operation": READ,
        "permission_type": ALLOW,
    }
    base.update(fields)
    return m.CreateAclsRequest.AclCreation(**base)


def describe_all(**fields: Any) -> m.DescribeAclsRequest:
    base: dict[str, Any] = {
        "resource_type_filter": ANY,
        "resource_name_filter": None,
        "pattern_type_filter": ANY,
        "principal_filter": None,
        "host_filter": None,
        "operation": ANY,
        "permission_type": ANY,
    }
    base.update(fields)
    return m.DescribeAclsRequest(**base)


def test_without_an_authorizer_every_call_is_security_disabled() -> None:
    broker = Broker("none")
    created = call(broker, api_acls.create_acls, m.CreateAclsRequest(creations=[creation()]))
    assert [r.error_code for r in created.results] == [SECURITY_DISABLED]
    assert "STREAMHOUSE_AUTHORIZER=acl" in created.results[0].error_message
    assert call(broker, api_acls.describe_acls, describe_all()).error_code == SECURITY_DISABLED
    deleted = call(
        broker,
        api_acls.delete_acls,
        m.DeleteAclsRequest(filters=[m.DeleteAclsRequest.DeleteAclsFilter(**_filter())]),
    )
    assert [r.error_code for r in deleted.filter_results] == [SECURITY_DISABLED]
    assert broker.meta.entries == {}


def _filter(**fields: Any) -> dict[str, Any]:
    request = describe_all(**fields)
    return {f: getattr(request, f) for f in request.__struct_fields__}


def test_create_validates_each_binding_and_stores_once() -> None:
    broker = Broker()
    request = m.CreateAclsRequest(
        creations=[
            creation(),
            creation(),  # the same again: success, one entry
            creation(resource_pattern_type=MATCH),
            creation(principal="alice"),
            creation(operation=99),
            creation(resource_type=4, resource_name="other"),
        ]
    )
    results = call(broker, api_acls.create_acls, request).results
    assert [r.error_code for r in results] == [0, 0] + [INVALID_REQUEST] * 4
    assert "only a filter" in results[2].error_message
    assert "TYPE:NAME" in results[3].error_message
    assert "UNKNOWN" in results[4].error_message
    assert "kafka-cluster" in results[5].error_message
    assert len(broker.meta.entries) == 1


def test_describe_and_delete_by_filter() -> None:
    broker = Broker()
    call(
        broker,
        api_acls.create_acls,
        m.CreateAclsRequest(
            creations=[
                creation(),
                creation(operation=WRITE, permission_type=DENY),
                creation(resource_name="ord", resource_pattern_type=PREFIXED),
                creation(resource_type=GROUP, resource_name="g"),
            ]
        ),
    )
    everything = call(broker, api_acls.describe_acls, describe_all())
    assert everything.error_code == 0
    assert sorted(
        (r.resource_type, r.resource_name, len(r.acls)) for r in everything.resources
    ) == [
        (TOPIC, "ord", 1),
        (TOPIC, "orders", 2),
        (GROUP, "g", 1),
    ]
    matching = call(
        broker,
        api_acls.describe_acls,
        describe_all(
            resource_type_filter=TOPIC, resource_name_filter="orders", pattern_type_filter=MATCH
        ),
    )
    assert sorted(r.resource_name for r in matching.resources) == ["ord", "orders"]
    bad = call(broker, api_acls.describe_acls, describe_all(operation=0))
    assert bad.error_code == INVALID_REQUEST and "UNKNOWN" in bad.error_message

    deleted = call(
        broker,
        api_acls.delete_acls,
        m.DeleteAclsRequest(
            filters=[
                m.DeleteAclsRequest.DeleteAclsFilter(
                    **_filter(resource_type_filter=TOPIC, permission_type=DENY)
                ),
                m.DeleteAclsRequest.DeleteAclsFilter(**_filter(pattern_type_filter=0)),
            ]
        ),
    )
    first, second = deleted.filter_results
    assert first.error_code == 0
    assert [(a.resource_name, a.operation, a.permission_type) for a in first.matching_acls] == [
        ("orders", WRITE, DENY)
    ]
    assert second.error_code == INVALID_REQUEST
    assert len(broker.meta.entries) == 3
