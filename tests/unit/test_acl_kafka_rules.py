"""ingest/kafka/authorize.py without a network: for every Kafka API the broker serves, a caller
no ACL allows anything gets Kafka's refusal (and the handler never sees a refused resource),
every refusal encodes in every version the broker advertises, and the per-item filtering,
Metadata's listing and auto-creation rules and the authorized-operations fields hold."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest

from ingest.kafka import authorize
from ingest.kafka.broker import ADVERTISED
from metadata import TopicInfo
from metadata.async_store import TopicState
from streamhouse.acl import (
    CATALOG_KIND,
    CLUSTER_NAME,
    AclBinding,
    AclOperation,
    PatternType,
    Permission,
    ResourceType,
    encode_binding,
)
from streamhouse.config import Settings
from streamhouse.kafka import messages as m
from streamhouse.kafka.framing import encode_response
from streamhouse.principal import current_principal

Op = AclOperation
ALICE = "User:alice"
TOPIC_DENIED, GROUP_DENIED, CLUSTER_DENIED, TXN_DENIED = 29, 30, 31, 53


class FakeMeta:
    """The metadata calls the rules make: the ACL catalog and topic existence."""

    def __init__(self, bindings: list[AclBinding], topics: list[str]) -> None:
        self.entries = [encode_binding(b) for b in bindings]
        self.topics = [
            TopicInfo(
                topic_id=i + 1,
                name=n,
                partitions=1,
                uuid=uuid.uuid4().bytes,
                config={},
                created_ms=0,
            )
            for i, n in enumerate(topics)
        ]

    async def list_catalog_entries(self, kind: str) -> list[tuple[str, bytes]]:
        assert kind == CATALOG_KIND
        return self.entries

    async def topic_states(self, lookups: list[Any]) -> list[TopicState | None]:
        by_name = {t.name: t for t in self.topics}
        return [TopicState(by_name[lk.name], {}) if lk.name in by_name else None for lk in lookups]

    async def list_topics(self) -> list[TopicInfo]:
        return self.topics


class FakeBroker:
    def __init__(self, bindings: list[AclBinding], topics: list[str] = (), **settings: Any):
        self.settings = Settings(authorizer="acl", **settings)
        self.meta = FakeMeta(bindings, list(topics))


def allow(
    rtype: ResourceType,
    name: str,
    op: AclOperation,
    permission: Permission = Permission.ALLOW,
    principal: str = ALICE,
) -> AclBinding:
    return AclBinding(rtype, name, PatternType.LITERAL, principal, "*", op, permission)


def run(
    broker: FakeBroker, key: int, version: int, request: Any, answer: Any = None
) -> tuple[Any, list[Any]]:
    """The guarded answer and the requests the handler saw; the handler answers ``answer`` (a
    function of the request) or the API's empty response."""
    seen: list[Any] = []

    async def call(header: m.RequestHeader, req: Any) -> Any:
        seen.append(req)
        return answer(req) if answer is not None else m.RESPONSE_TYPES[key]()

    header = m.RequestHeader(request_api_key=key, request_api_version=version, correlation_id=7)

    async def main() -> Any:
        current_principal.set(ALICE)
        return await authorize.guarded(broker, "10.0.0.1", header, request, call)  # type: ignore[arg-type]

    return asyncio.run(main()), seen


def encodes_everywhere(key: int, response: Any) -> None:
    lo, hi = ADVERTISED[key][1:] if key in ADVERTISED else m.SUPPORTED[key]
    for version in range(lo, hi + 1):
        header = m.RequestHeader(request_api_key=key, request_api_version=version, correlation_id=7)
        assert encode_response(header, key, version, response)


# One request per API, naming one topic "t" (partition 0), group "g", transactional id "x".
R = m
SAMPLES: dict[int, Any] = {
    0: R.ProduceRequest(
        acks=-1,
        topic_data=[
            R.ProduceRequest.TopicProduceData(
                name="t", partition_data=[R.ProduceRequest.PartitionProduceData(index=0)]
            )
        ],
    ),
    1: R.FetchRequest(
        topics=[
            R.FetchRequest.FetchTopic(
                topic="t", partitions=[R.FetchRequest.FetchPartition(partition=0)]
            )
        ],
        forgotten_topics_data=[],
        replica_state=R.FetchRequest.ReplicaState(replica_id=-1),
    ),
    2: R.ListOffsetsRequest(
        topics=[
            R.ListOffsetsRequest.ListOffsetsTopic(
                name="t", partitions=[R.ListOffsetsRequest.ListOffsetsPartition(partition_index=0)]
            )
        ]
    ),
    3: R.MetadataRequest(topics=[R.MetadataRequest.MetadataRequestTopic(name="t")]),
    8: R.OffsetCommitRequest(
        group_id="g",
        topics=[
            R.OffsetCommitRequest.OffsetCommitRequestTopic(
                name="t",
                partitions=[R.OffsetCommitRequest.OffsetCommitRequestPartition(partition_index=0)],
            )
        ],
    ),
    9: R.OffsetFetchRequest(
        group_id="g",
        topics=[R.OffsetFetchRequest.OffsetFetchRequestTopic(name="t", partition_indexes=[0])],
        groups=[],
    ),
    10: R.FindCoordinatorRequest(key="g", key_type=0, coordinator_keys=["g"]),
    11: R.JoinGroupRequest(group_id="g", protocols=[]),
    12: R.HeartbeatRequest(group_id="g"),
    13: R.LeaveGroupRequest(group_id="g", members=[]),
    14: R.SyncGroupRequest(group_id="g", assignments=[]),
    15: R.DescribeGroupsRequest(groups=["g"], include_authorized_operations=True),
    16: R.ListGroupsRequest(),
    19: R.CreateTopicsRequest(
        topics=[R.CreateTopicsRequest.CreatableTopic(name="t", assignments=[], configs=[])]
    ),
    20: R.DeleteTopicsRequest(
        topic_names=["t"], topics=[R.DeleteTopicsRequest.DeleteTopicState(name="t")]
    ),
    21: R.DeleteRecordsRequest(
        topics=[
            R.DeleteRecordsRequest.DeleteRecordsTopic(
                name="t", partitions=[R.DeleteRecordsRequest.DeleteRecordsPartition()]
            )
        ]
    ),
    22: R.InitProducerIdRequest(transactional_id="x"),
    23: R.OffsetForLeaderEpochRequest(
        replica_id=-1,
        topics=[
            R.OffsetForLeaderEpochRequest.OffsetForLeaderTopic(
                topic="t",
                partitions=[R.OffsetForLeaderEpochRequest.OffsetForLeaderPartition(partition=0)],
            )
        ],
    ),
    24: R.AddPartitionsToTxnRequest(
        transactions=[],
        v3_and_below_transactional_id="x",
        v3_and_below_topics=[
            R.AddPartitionsToTxnRequest.AddPartitionsToTxnTopic(name="t", partitions=[0])
        ],
    ),
    25: R.AddOffsetsToTxnRequest(transactional_id="x", group_id="g"),
    26: R.EndTxnRequest(transactional_id="x"),
    28: R.TxnOffsetCommitRequest(
        transactional_id="x",
        group_id="g",
        topics=[
            R.TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic(
                name="t",
                partitions=[
                    R.TxnOffsetCommitRequest.TxnOffsetCommitRequestPartition(partition_index=0)
                ],
            )
        ],
    ),
    29: R.DescribeAclsRequest(),
    30: R.CreateAclsRequest(creations=[R.CreateAclsRequest.AclCreation()]),
    31: R.DeleteAclsRequest(filters=[R.DeleteAclsRequest.DeleteAclsFilter()]),
    32: R.DescribeConfigsRequest(
        resources=[
            R.DescribeConfigsRequest.DescribeConfigsResource(resource_type=2, resource_name="t"),
            R.DescribeConfigsRequest.DescribeConfigsResource(resource_type=4, resource_name="0"),
        ]
    ),
    33: R.AlterConfigsRequest(
        resources=[
            R.AlterConfigsRequest.AlterConfigsResource(
                resource_type=2, resource_name="t", configs=[]
            )
        ]
    ),
    34: R.AlterReplicaLogDirsRequest(
        dirs=[
            R.AlterReplicaLogDirsRequest.AlterReplicaLogDir(
                path="/d",
                topics=[
                    R.AlterReplicaLogDirsRequest.AlterReplicaLogDirTopic(name="t", partitions=[0])
                ],
            )
        ]
    ),
    35: R.DescribeLogDirsRequest(topics=None),
    37: R.CreatePartitionsRequest(
        topics=[R.CreatePartitionsRequest.CreatePartitionsTopic(name="t", count=2)]
    ),
    42: R.DeleteGroupsRequest(groups_names=["g"]),
    43: R.ElectLeadersRequest(topic_partitions=None),
    44: R.IncrementalAlterConfigsRequest(
        resources=[
            R.IncrementalAlterConfigsRequest.AlterConfigsResource(
                resource_type=32, resource_name="g", configs=[]
            )
        ]
    ),
    45: R.AlterPartitionReassignmentsRequest(topics=[]),
    46: R.ListPartitionReassignmentsRequest(topics=None),
    47: R.OffsetDeleteRequest(group_id="g", topics=[]),
    50: R.DescribeUserScramCredentialsRequest(users=None),
    51: R.AlterUserScramCredentialsRequest(
        deletions=[R.AlterUserScramCredentialsRequest.ScramCredentialDeletion(name="bob")],
        upsertions=[],
    ),
    60: R.DescribeClusterRequest(include_cluster_authorized_operations=True),
    65: R.DescribeTransactionsRequest(transactional_ids=["x"]),
    66: R.ListTransactionsRequest(),
    75: R.DescribeTopicPartitionsRequest(
        topics=[R.DescribeTopicPartitionsRequest.TopicRequest(name="t")]
    ),
}

#: What a caller with no ACL gets, per API: the error codes anywhere in the answer.
EXPECTED: dict[int, set[int]] = {
    0: {TOPIC_DENIED},
    1: {TOPIC_DENIED},
    2: {TOPIC_DENIED},
    3: {TOPIC_DENIED},
    8: {GROUP_DENIED},
    9: {GROUP_DENIED},
    10: {GROUP_DENIED},
    11: {GROUP_DENIED},
    12: {GROUP_DENIED},
    13: {GROUP_DENIED},
    14: {GROUP_DENIED},
    15: {GROUP_DENIED},
    16: set(),  # an empty listing
    19: {TOPIC_DENIED},
    20: {TOPIC_DENIED},
    21: {TOPIC_DENIED},
    22: {TXN_DENIED},
    23: {TOPIC_DENIED},
    24: {TXN_DENIED},
    25: {TXN_DENIED},
    26: {TXN_DENIED},
    28: {TXN_DENIED},
    29: {CLUSTER_DENIED},
    30: {CLUSTER_DENIED},
    31: {CLUSTER_DENIED},
    32: {TOPIC_DENIED, CLUSTER_DENIED},
    33: {TOPIC_DENIED},
    34: {CLUSTER_DENIED},
    35: {CLUSTER_DENIED},
    37: {TOPIC_DENIED},
    42: {GROUP_DENIED},
    43: {CLUSTER_DENIED},
    44: {GROUP_DENIED},
    45: {CLUSTER_DENIED},
    46: {CLUSTER_DENIED},
    47: {GROUP_DENIED},
    50: {CLUSTER_DENIED},
    51: {CLUSTER_DENIED},
    60: {CLUSTER_DENIED},
    65: {TXN_DENIED},
    66: set(),
    75: {TOPIC_DENIED},
}


def error_codes(value: Any) -> set[int]:
    """Every non-zero ``*error_code`` anywhere in a response."""
    found: set[int] = set()
    if isinstance(value, msgspec.Struct):
        for field in value.__struct_fields__:
            item = getattr(value, field)
            if field.endswith("error_code") and isinstance(item, int) and item:
                found.add(item)
            else:
                found |= error_codes(item)
    elif isinstance(value, list):
        for item in value:
            found |= error_codes(item)
    return found


def sample_version(key: int) -> int:
    """The version the sample is asked in: the newest, but AddPartitionsToTxn v3 (a client's)
    and OffsetFetch v7 (one group, as SAMPLES has it)."""
    hi = (ADVERTISED[key][1:] if key in ADVERTISED else m.SUPPORTED[key])[1]
    return {24: 3, 9: 7}.get(key, hi)


def served_keys() -> list[int]:
    return sorted(k for k in ADVERTISED if k not in authorize._OPEN)


def test_every_served_api_has_a_sample_and_an_expected_refusal() -> None:
    assert set(served_keys()) <= set(SAMPLES), set(served_keys()) - set(SAMPLES)


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_no_acl_refuses_and_the_refusal_encodes(key: int) -> None:
    response, seen = run(FakeBroker([], topics=["t"]), key, sample_version(key), SAMPLES[key])
    assert error_codes(response) == EXPECTED[key], response
    for request in seen:  # what reached the handler names nothing refused
        assert "'t'" not in repr(request) and "'g'" not in repr(request), request
    encodes_everywhere(key, response)


def test_super_users_pass_everything_through() -> None:
    for key, request in SAMPLES.items():
        broker = FakeBroker([], topics=["t"], super_users=ALICE)
        _, seen = run(broker, key, sample_version(key), request)
        assert seen == [request], key


def test_produce_keeps_allowed_topics_and_refuses_the_rest() -> None:
    P = m.ProduceRequest
    request = P(
        acks=-1,
        topic_data=[
            P.TopicProduceData(name=n, partition_data=[P.PartitionProduceData(index=0)])
            for n in ("ok", "no")
        ],
    )
    broker = FakeBroker([allow(ResourceType.TOPIC, "ok", Op.WRITE)])

    def answer(req: Any) -> Any:
        from ingest.kafka.api_produce import all_failed

        return all_failed(req, 0, "")

    response, seen = run(broker, 0, 9, request, answer)
    assert [t.name for t in seen[0].topic_data] == ["ok"]
    codes = {t.name: t.partition_responses[0].error_code for t in response.responses}
    assert codes == {"ok": 0, "no": TOPIC_DENIED}
    message = response.responses[1].partition_responses[0].error_message
    assert ALICE in message and "WRITE TOPIC 'no'" in message


def test_transactional_produce_needs_the_transactional_id() -> None:
    request = msgspec.structs.replace(SAMPLES[0], transactional_id="x")
    broker = FakeBroker([allow(ResourceType.TOPIC, "t", Op.WRITE)])
    response, seen = run(broker, 0, 9, request)
    assert not seen and error_codes(response) == {TXN_DENIED}


def metadata_answer(req: Any) -> m.MetadataResponse:
    M = m.MetadataResponse
    names = ["t", "hidden"] if req.topics is None else [t.name for t in req.topics]
    return M(
        brokers=[],
        topics=[
            M.MetadataResponseTopic(
                error_code=0, name=n, partitions=[], topic_authorized_operations=0
            )
            for n in names
        ],
        cluster_authorized_operations=0,
    )


def test_metadata_lists_only_describable_topics_with_their_operations() -> None:
    broker = FakeBroker([allow(ResourceType.TOPIC, "t", Op.READ)], topics=["t", "hidden"])
    request = m.MetadataRequest(
        topics=None,
        include_topic_authorized_operations=True,
        include_cluster_authorized_operations=True,
    )
    response, _ = run(broker, 3, 10, request, metadata_answer)
    assert [t.name for t in response.topics] == ["t"]
    assert response.topics[0].topic_authorized_operations == (1 << Op.READ) | (1 << Op.DESCRIBE)
    assert response.cluster_authorized_operations == 0  # no DESCRIBE on the cluster


def test_metadata_refuses_creating_a_missing_topic_without_create() -> None:
    acls = [allow(ResourceType.TOPIC, n, Op.DESCRIBE) for n in ("t", "new", "new2")]
    acls.append(allow(ResourceType.TOPIC, "new2", Op.CREATE))
    broker = FakeBroker(acls, topics=["t"])
    request = m.MetadataRequest(
        topics=[m.MetadataRequest.MetadataRequestTopic(name=n) for n in ("t", "new", "new2")],
        allow_auto_topic_creation=True,
    )
    response, seen = run(broker, 3, 9, request, metadata_answer)
    assert [t.name for t in seen[0].topics] == ["t", "new2"]  # "new" never reaches creation
    assert {t.name: t.error_code for t in response.topics} == {
        "t": 0,
        "new2": 0,
        "new": TOPIC_DENIED,
    }
    # Without auto-creation the handler answers UNKNOWN_TOPIC_OR_PARTITION itself.
    request.allow_auto_topic_creation = False
    _, seen = run(broker, 3, 9, request, metadata_answer)
    assert [t.name for t in seen[0].topics] == ["t", "new", "new2"]


def test_metadata_v0_with_every_named_topic_refused_lists_nothing() -> None:
    broker = FakeBroker([], topics=["t", "hidden"])
    request = m.MetadataRequest(topics=[m.MetadataRequest.MetadataRequestTopic(name="t")])
    response, _ = run(broker, 3, 0, request, metadata_answer)
    assert [(t.name, t.error_code) for t in response.topics] == [("t", TOPIC_DENIED)]


def test_init_producer_id_for_an_idempotent_producer() -> None:
    request = m.InitProducerIdRequest(transactional_id=None)
    response, seen = run(FakeBroker([]), 22, 4, request)
    assert response.error_code == CLUSTER_DENIED and not seen
    writer = FakeBroker([allow(ResourceType.TOPIC, "any", Op.WRITE)])
    _, seen = run(writer, 22, 4, request)
    assert seen == [request]
    cluster = FakeBroker([allow(ResourceType.CLUSTER, CLUSTER_NAME, Op.IDEMPOTENT_WRITE)])
    _, seen = run(cluster, 22, 4, request)
    assert seen == [request]


def test_describe_groups_authorized_operations_and_list_groups_filter() -> None:
    broker = FakeBroker([allow(ResourceType.GROUP, "g", Op.READ)])
    D = m.DescribeGroupsResponse
    request = m.DescribeGroupsRequest(groups=["g", "other"], include_authorized_operations=True)

    def answer(req: Any) -> Any:
        return D(groups=[D.DescribedGroup(group_id=g, members=[]) for g in req.groups])

    response, seen = run(broker, 15, 5, request, answer)
    assert seen[0].groups == ["g"]
    ops = {g.group_id: (g.error_code, g.authorized_operations) for g in response.groups}
    assert ops == {
        "g": (0, (1 << Op.READ) | (1 << Op.DESCRIBE)),
        "other": (GROUP_DENIED, -(2**31)),
    }
    L = m.ListGroupsResponse

    def listing(req: Any) -> Any:
        return L(groups=[L.ListedGroup(group_id=g) for g in ("g", "other")])

    response, _ = run(broker, 16, 4, m.ListGroupsRequest(), listing)
    assert [g.group_id for g in response.groups] == ["g"]


def test_a_deny_for_another_host_does_not_apply() -> None:
    acls = [
        allow(ResourceType.TOPIC, "t", Op.WRITE),
        AclBinding(
            ResourceType.TOPIC,
            "t",
            PatternType.LITERAL,
            ALICE,
            "10.9.9.9",
            Op.WRITE,
            Permission.DENY,
        ),
    ]
    _, seen = run(FakeBroker(acls), 0, 9, SAMPLES[0])
    assert seen == [SAMPLES[0]]  # the caller is 10.0.0.1


def test_offset_fetch_v8_refuses_per_group_and_per_topic() -> None:
    Q, A = m.OffsetFetchRequest, m.OffsetFetchResponse
    broker = FakeBroker([allow(ResourceType.GROUP, "g", Op.DESCRIBE)])
    request = Q(
        groups=[
            Q.OffsetFetchRequestGroup(
                group_id=g,
                topics=[Q.OffsetFetchRequestTopics(name="t", partition_indexes=[0])],
            )
            for g in ("g", "no")
        ]
    )

    def answer(req: Any) -> Any:
        return A(
            groups=[A.OffsetFetchResponseGroup(group_id=g.group_id, topics=[]) for g in req.groups]
        )

    response, seen = run(broker, 9, 8, request, answer)
    assert [(g.group_id, g.topics) for g in seen[0].groups] == [("g", [])]
    answered = {g.group_id: g for g in response.groups}
    assert answered["no"].error_code == GROUP_DENIED
    assert answered["g"].error_code == 0
    assert [(t.name, t.partitions[0].error_code) for t in answered["g"].topics] == [
        ("t", TOPIC_DENIED)
    ]
    encodes_everywhere(9, response)


def test_describe_topic_partitions_pages_over_describable_topics_only() -> None:
    D = m.DescribeTopicPartitionsResponse
    broker = FakeBroker([allow(ResourceType.TOPIC, "b", Op.WRITE)], topics=["a", "b", "c"])

    def answer(req: Any) -> Any:
        return D(
            topics=[
                D.DescribeTopicPartitionsResponseTopic(name=t.name, partitions=[])
                for t in req.topics
            ]
        )

    request = m.DescribeTopicPartitionsRequest(topics=[])
    response, seen = run(broker, 75, 0, request, answer)
    assert [t.name for t in seen[0].topics] == ["b"]
    assert [(t.name, t.topic_authorized_operations) for t in response.topics] == [
        ("b", (1 << Op.WRITE) | (1 << Op.DESCRIBE))
    ]
    nobody = FakeBroker([], topics=["a"])
    response, seen = run(nobody, 75, 0, request, answer)
    assert not seen and response.topics == []


def test_created_topics_show_configs_only_with_describe_configs() -> None:
    C = m.CreateTopicsResponse
    acls = [allow(ResourceType.TOPIC, n, Op.CREATE) for n in ("plain", "full")]
    acls.append(allow(ResourceType.TOPIC, "full", Op.ALTER_CONFIGS))
    request = m.CreateTopicsRequest(
        topics=[
            m.CreateTopicsRequest.CreatableTopic(name=n, assignments=[], configs=[])
            for n in ("plain", "full")
        ]
    )

    def answer(req: Any) -> Any:
        return C(
            topics=[
                C.CreatableTopicResult(
                    name=t.name,
                    num_partitions=1,
                    replication_factor=1,
                    configs=[C.CreatableTopicConfigs(name="cleanup.policy", value="delete")],
                )
                for t in req.topics
            ]
        )

    response, _ = run(FakeBroker(acls), 19, 7, request, answer)
    shown = {t.name: (t.topic_config_error_code, t.configs) for t in response.topics}
    assert shown["plain"] == (TOPIC_DENIED, None)
    assert shown["full"][0] == 0 and shown["full"][1]
    encodes_everywhere(19, response)


def test_auto_creation_by_produce_needs_create() -> None:
    verdicts: list[bool] = []

    def answer(req: Any) -> Any:
        verdicts.append(authorize.may_auto_create("t"))
        return m.ProduceResponse(responses=[])

    run(FakeBroker([allow(ResourceType.TOPIC, "t", Op.WRITE)]), 0, 9, SAMPLES[0], answer)
    acls = [allow(ResourceType.TOPIC, "t", Op.WRITE), allow(ResourceType.TOPIC, "t", Op.CREATE)]
    run(FakeBroker(acls), 0, 9, SAMPLES[0], answer)
    cluster = [
        allow(ResourceType.TOPIC, "t", Op.WRITE),
        allow(ResourceType.CLUSTER, CLUSTER_NAME, Op.CREATE),
    ]
    run(FakeBroker(cluster), 0, 9, SAMPLES[0], answer)
    assert verdicts == [False, True, True]
    assert authorize.may_auto_create("t")  # outside a guarded request: no ACLs
