"""The ingest ACL cache (ingest/authorizer.py) on a virtual clock, and the gRPC rule table's
edges (ingest/grpc_acl.py): refresh after the TTL only, one reload for concurrent callers, the
last snapshot kept when metadata fails, immediate effect of local changes; gRPC peer
addresses, no wrapping without an authorizer, no method without a rule."""

from __future__ import annotations

import asyncio

import pytest

from ingest.authorizer import AclCache, acl_cache
from ingest.grpc_acl import _NEEDS, guarded, peer_host
from streamhouse.acl import (
    AclBinding,
    AclFilter,
    AclOperation,
    PatternType,
    Permission,
    ResourceType,
    encode_binding,
)
from streamhouse.config import Settings

READ_ORDERS = AclBinding(
    ResourceType.TOPIC,
    "orders",
    PatternType.LITERAL,
    "User:alice",
    "*",
    AclOperation.READ,
    Permission.ALLOW,
)


class Meta:
    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}
        self.reads = 0
        self.fail = False

    async def list_catalog_entries(self, kind: str) -> list[tuple[str, bytes]]:
        self.reads += 1
        await asyncio.sleep(0)
        if self.fail:
            raise OSError("metadata is down")
        return list(self.entries.items())

    async def put_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, replace: bool = False
    ) -> None:
        self.entries[name] = definition

    async def delete_catalog_entry(self, kind: str, name: str) -> bool:
        return self.entries.pop(name, None) is not None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def may_read(snapshot: object) -> bool:
    return snapshot.authorize(  # type: ignore[attr-defined]
        "User:alice", "1.2.3.4", AclOperation.READ, ResourceType.TOPIC, "orders"
    )


def test_refresh_after_the_ttl_only_and_shared_by_concurrent_callers() -> None:
    meta, clock = Meta(), Clock()
    cache = AclCache(Settings(authorizer="acl"), meta, refresh_s=1.0, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        first = await asyncio.gather(*(cache.snapshot() for _ in range(5)))
        assert meta.reads == 1 and not may_read(first[0])
        name, definition = encode_binding(READ_ORDERS)
        meta.entries[name] = definition  # written by another agent
        clock.now += 0.5
        assert not may_read(await cache.snapshot()) and meta.reads == 1
        clock.now += 0.6
        assert may_read(await cache.snapshot()) and meta.reads == 2

    asyncio.run(main())


def test_a_failed_refresh_keeps_the_last_snapshot() -> None:
    meta, clock = Meta(), Clock()
    name, definition = encode_binding(READ_ORDERS)
    meta.entries[name] = definition
    cache = AclCache(Settings(authorizer="acl"), meta, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        assert may_read(await cache.snapshot())
        meta.fail = True
        clock.now += 5
        assert may_read(await cache.snapshot())
        fresh = AclCache(Settings(authorizer="acl"), meta, clock=clock)  # type: ignore[arg-type]
        with pytest.raises(OSError, match="metadata is down"):
            await fresh.snapshot()

    asyncio.run(main())


def test_local_changes_apply_at_once() -> None:
    meta, clock = Meta(), Clock()
    cache = AclCache(Settings(authorizer="acl"), meta, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        assert not may_read(await cache.snapshot())
        await cache.add(READ_ORDERS)
        assert may_read(await cache.snapshot())
        assert await cache.remove(AclFilter(principal="User:alice")) == [READ_ORDERS]
        assert not may_read(await cache.snapshot())

    asyncio.run(main())


def test_one_cache_per_metadata_connection() -> None:
    settings, meta = Settings(authorizer="acl"), Meta()
    assert acl_cache(settings, meta) is acl_cache(settings, meta)  # type: ignore[arg-type]
    assert acl_cache(settings, Meta()) is not acl_cache(settings, meta)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("unix:/tmp/sock", ""),
        (None, ""),
    ],
)
def test_peer_host(peer: str | None, host: str) -> None:
    assert peer_host(peer) == host


def test_grpc_rules() -> None:
    async def method(request: object, context: object) -> None:
        return None

    meta = Meta()
    assert guarded("Produce", method, Settings(), meta) is method  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no ACL rule"):
        guarded("NewMethod", method, Settings(authorizer="acl"), meta)  # type: ignore[arg-type]
    from streamhouse.proto import streamhouse_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["StreamHouse"]
    assert {m.name for m in service.methods} == set(_NEEDS)


class Context:
    def peer(self) -> str:
        return "ipv4:10.0.0.1:4242"


def test_grpc_methods_need_their_operations() -> None:
    from ingest.grpc_acl import _Call
    from streamhouse.acl import CLUSTER_NAME, Authorizer
    from streamhouse.errors import ErrorCode, StreamHouseError
    from streamhouse.principal import current_principal
    from streamhouse.proto import streamhouse_pb2 as pb

    T, Op = ResourceType, AclOperation

    def binding(rtype: ResourceType, name: str, op: AclOperation) -> AclBinding:
        return AclBinding(rtype, name, PatternType.LITERAL, "User:alice", "*", op, Permission.ALLOW)

    cases = [
        ("CreateTopic", pb.CreateTopicRequest(name="t"), [binding(T.TOPIC, "t", Op.CREATE)]),
        (
            "CreateTopic",
            pb.CreateTopicRequest(name="t"),
            [binding(T.CLUSTER, CLUSTER_NAME, Op.CREATE)],
        ),
        ("GetTopic", pb.GetTopicRequest(name="t"), [binding(T.TOPIC, "t", Op.READ)]),
        ("DeleteTopic", pb.DeleteTopicRequest(name="t"), [binding(T.TOPIC, "t", Op.DELETE)]),
        (
            "AlterTopicConfig",
            pb.AlterTopicConfigRequest(name="t"),
            [binding(T.TOPIC, "t", Op.ALTER_CONFIGS)],
        ),
        ("Produce", pb.ProduceRequest(topic="t"), [binding(T.TOPIC, "t", Op.WRITE)]),
        ("Consume", pb.ConsumeRequest(topic="t"), [binding(T.TOPIC, "t", Op.READ)]),
        (
            "CommitOffset",
            pb.CommitOffsetRequest(group="g", topic="t"),
            [binding(T.GROUP, "g", Op.READ), binding(T.TOPIC, "t", Op.READ)],
        ),
        (
            "GetOffset",
            pb.GetOffsetRequest(group="g", topic="t"),
            [binding(T.GROUP, "g", Op.READ), binding(T.TOPIC, "t", Op.WRITE)],
        ),
        ("InitProducer", pb.InitProducerRequest(), [binding(T.TOPIC, "any", Op.WRITE)]),
        (
            "InitProducer",
            pb.InitProducerRequest(),
            [binding(T.CLUSTER, CLUSTER_NAME, Op.IDEMPOTENT_WRITE)],
        ),
        (
            "DescribeStorage",
            pb.DescribeStorageRequest(),
            [binding(T.CLUSTER, CLUSTER_NAME, Op.DESCRIBE)],
        ),
    ]
    token = current_principal.set("User:alice")
    try:
        for method, request, needed in cases:
            _Call(Authorizer(needed), Context()).require(method, request)  # allowed: no raise
            for missing in needed:
                rest = [b for b in needed if b != missing]
                with pytest.raises(StreamHouseError) as refused:
                    _Call(Authorizer(rest), Context()).require(method, request)
                assert refused.value.code.grpc_status.name == "PERMISSION_DENIED"
                assert refused.value.code in (
                    ErrorCode.TOPIC_AUTHORIZATION_FAILED,
                    ErrorCode.GROUP_AUTHORIZATION_FAILED,
                    ErrorCode.CLUSTER_AUTHORIZATION_FAILED,
                )
                assert "User:alice (from 10.0.0.1)" in refused.value.message
    finally:
        current_principal.reset(token)


class GatedMeta(Meta):
    """Its reads wait at a gate, so a change can land while a reload is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def list_catalog_entries(self, kind: str) -> list[tuple[str, bytes]]:
        entries = list(self.entries.items())  # read when the reload begins
        self.reads += 1
        await self.gate.wait()
        return entries


def test_a_reload_begun_before_a_local_change_does_not_hide_it() -> None:
    meta, clock = GatedMeta(), Clock()
    cache = AclCache(Settings(authorizer="acl"), meta, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        await cache.snapshot()
        clock.now += 5  # stale: the next call reloads
        meta.gate.clear()
        old_reload = asyncio.ensure_future(cache.snapshot())
        while meta.reads < 2:  # until that reload has read the store
            await asyncio.sleep(0)
        await cache.add(READ_ORDERS)  # lands while that reload waits
        meta.gate.set()
        assert not may_read(await old_reload)  # it began before the change
        assert may_read(await cache.snapshot())  # but does not count as fresh

    asyncio.run(main())


def test_a_failing_store_is_asked_once_per_refresh() -> None:
    meta, clock = Meta(), Clock()
    cache = AclCache(Settings(authorizer="acl"), meta, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        await cache.snapshot()
        meta.fail = True
        clock.now += 5
        for _ in range(3):
            await cache.snapshot()
        assert meta.reads == 2
        clock.now += 5
        await cache.snapshot()
        assert meta.reads == 3

    asyncio.run(main())
