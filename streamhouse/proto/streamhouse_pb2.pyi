from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class IsolationLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_UNCOMMITTED: _ClassVar[IsolationLevel]
    READ_COMMITTED: _ClassVar[IsolationLevel]

READ_UNCOMMITTED: IsolationLevel
READ_COMMITTED: IsolationLevel

class Header(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: str | None = ..., value: bytes | None = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("key", "value", "headers", "timestamp_ms", "offset")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    timestamp_ms: int
    offset: int
    def __init__(
        self,
        key: bytes | None = ...,
        value: bytes | None = ...,
        headers: _Iterable[Header | _Mapping] | None = ...,
        timestamp_ms: int | None = ...,
        offset: int | None = ...,
    ) -> None: ...

class PartitionInfo(_message.Message):
    __slots__ = ("partition", "log_start_offset", "high_watermark")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    LOG_START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    partition: int
    log_start_offset: int
    high_watermark: int
    def __init__(
        self,
        partition: int | None = ...,
        log_start_offset: int | None = ...,
        high_watermark: int | None = ...,
    ) -> None: ...

class Topic(_message.Message):
    __slots__ = ("name", "partitions", "config", "topic_id", "partition_info")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    NAME_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TOPIC_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_INFO_FIELD_NUMBER: _ClassVar[int]
    name: str
    partitions: int
    config: _containers.ScalarMap[str, str]
    topic_id: str
    partition_info: _containers.RepeatedCompositeFieldContainer[PartitionInfo]
    def __init__(
        self,
        name: str | None = ...,
        partitions: int | None = ...,
        config: _Mapping[str, str] | None = ...,
        topic_id: str | None = ...,
        partition_info: _Iterable[PartitionInfo | _Mapping] | None = ...,
    ) -> None: ...

class CreateTopicRequest(_message.Message):
    __slots__ = ("name", "partitions", "config")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    NAME_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    partitions: int
    config: _containers.ScalarMap[str, str]
    def __init__(
        self,
        name: str | None = ...,
        partitions: int | None = ...,
        config: _Mapping[str, str] | None = ...,
    ) -> None: ...

class CreateTopicResponse(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: Topic
    def __init__(self, topic: Topic | _Mapping | None = ...) -> None: ...

class GetTopicRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: str | None = ...) -> None: ...

class GetTopicResponse(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: Topic
    def __init__(self, topic: Topic | _Mapping | None = ...) -> None: ...

class ListTopicsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTopicsResponse(_message.Message):
    __slots__ = ("topics",)
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedCompositeFieldContainer[Topic]
    def __init__(self, topics: _Iterable[Topic | _Mapping] | None = ...) -> None: ...

class DeleteTopicRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: str | None = ...) -> None: ...

class DeleteTopicResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProduceRequest(_message.Message):
    __slots__ = ("topic", "partition", "record")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    record: Record
    def __init__(
        self,
        topic: str | None = ...,
        partition: int | None = ...,
        record: Record | _Mapping | None = ...,
    ) -> None: ...

class ProduceResponse(_message.Message):
    __slots__ = ("partition", "base_offset")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BASE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    partition: int
    base_offset: int
    def __init__(self, partition: int | None = ..., base_offset: int | None = ...) -> None: ...

class ProduceBatchRequest(_message.Message):
    __slots__ = ("topic", "partition", "records", "producer_id", "producer_epoch", "base_sequence")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BASE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    records: _containers.RepeatedCompositeFieldContainer[Record]
    producer_id: int
    producer_epoch: int
    base_sequence: int
    def __init__(
        self,
        topic: str | None = ...,
        partition: int | None = ...,
        records: _Iterable[Record | _Mapping] | None = ...,
        producer_id: int | None = ...,
        producer_epoch: int | None = ...,
        base_sequence: int | None = ...,
    ) -> None: ...

class PartitionResult(_message.Message):
    __slots__ = ("partition", "base_offset", "record_count")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BASE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    partition: int
    base_offset: int
    record_count: int
    def __init__(
        self,
        partition: int | None = ...,
        base_offset: int | None = ...,
        record_count: int | None = ...,
    ) -> None: ...

class ProduceBatchResponse(_message.Message):
    __slots__ = ("partition", "base_offset", "record_count", "results")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BASE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    partition: int
    base_offset: int
    record_count: int
    results: _containers.RepeatedCompositeFieldContainer[PartitionResult]
    def __init__(
        self,
        partition: int | None = ...,
        base_offset: int | None = ...,
        record_count: int | None = ...,
        results: _Iterable[PartitionResult | _Mapping] | None = ...,
    ) -> None: ...

class ConsumeRequest(_message.Message):
    __slots__ = (
        "topic",
        "partition",
        "offset",
        "max_records",
        "max_bytes",
        "max_wait_ms",
        "isolation_level",
    )
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    offset: int
    max_records: int
    max_bytes: int
    max_wait_ms: int
    isolation_level: IsolationLevel
    def __init__(
        self,
        topic: str | None = ...,
        partition: int | None = ...,
        offset: int | None = ...,
        max_records: int | None = ...,
        max_bytes: int | None = ...,
        max_wait_ms: int | None = ...,
        isolation_level: IsolationLevel | str | None = ...,
    ) -> None: ...

class ConsumeResponse(_message.Message):
    __slots__ = ("records", "high_watermark", "log_start_offset", "next_offset")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    LOG_START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    high_watermark: int
    log_start_offset: int
    next_offset: int
    def __init__(
        self,
        records: _Iterable[Record | _Mapping] | None = ...,
        high_watermark: int | None = ...,
        log_start_offset: int | None = ...,
        next_offset: int | None = ...,
    ) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("topic", "partition", "offset", "max_records", "max_bytes", "isolation_level")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    offset: int
    max_records: int
    max_bytes: int
    isolation_level: IsolationLevel
    def __init__(
        self,
        topic: str | None = ...,
        partition: int | None = ...,
        offset: int | None = ...,
        max_records: int | None = ...,
        max_bytes: int | None = ...,
        isolation_level: IsolationLevel | str | None = ...,
    ) -> None: ...

class CommitOffsetRequest(_message.Message):
    __slots__ = ("group", "topic", "partition", "offset", "metadata")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    group: str
    topic: str
    partition: int
    offset: int
    metadata: str
    def __init__(
        self,
        group: str | None = ...,
        topic: str | None = ...,
        partition: int | None = ...,
        offset: int | None = ...,
        metadata: str | None = ...,
    ) -> None: ...

class CommitOffsetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetOffsetRequest(_message.Message):
    __slots__ = ("group", "topic", "partition")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    group: str
    topic: str
    partition: int
    def __init__(
        self, group: str | None = ..., topic: str | None = ..., partition: int | None = ...
    ) -> None: ...

class GetOffsetResponse(_message.Message):
    __slots__ = ("offset", "metadata")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    metadata: str
    def __init__(self, offset: int | None = ..., metadata: str | None = ...) -> None: ...

class InitProducerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InitProducerResponse(_message.Message):
    __slots__ = ("producer_id", "producer_epoch")
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    producer_id: int
    producer_epoch: int
    def __init__(self, producer_id: int | None = ..., producer_epoch: int | None = ...) -> None: ...

class DescribeClusterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Agent(_message.Message):
    __slots__ = (
        "agent_id",
        "node_id",
        "kafka_address",
        "grpc_address",
        "zone",
        "alive",
        "state",
        "started_at_ms",
        "heartbeat_at_ms",
        "lease_until_ms",
    )
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KAFKA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    node_id: int
    kafka_address: str
    grpc_address: str
    zone: str
    alive: bool
    state: str
    started_at_ms: int
    heartbeat_at_ms: int
    lease_until_ms: int
    def __init__(
        self,
        agent_id: str | None = ...,
        node_id: int | None = ...,
        kafka_address: str | None = ...,
        grpc_address: str | None = ...,
        zone: str | None = ...,
        alive: bool | None = ...,
        state: str | None = ...,
        started_at_ms: int | None = ...,
        heartbeat_at_ms: int | None = ...,
        lease_until_ms: int | None = ...,
    ) -> None: ...

class DescribeClusterResponse(_message.Message):
    __slots__ = ("agents", "answered_by", "now_ms")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    answered_by: str
    now_ms: int
    def __init__(
        self,
        agents: _Iterable[Agent | _Mapping] | None = ...,
        answered_by: str | None = ...,
        now_ms: int | None = ...,
    ) -> None: ...

class DescribeStorageRequest(_message.Message):
    __slots__ = ("small_object_bytes",)
    SMALL_OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    small_object_bytes: int
    def __init__(self, small_object_bytes: int | None = ...) -> None: ...

class TopicStorage(_message.Message):
    __slots__ = (
        "name",
        "topic_id",
        "partitions",
        "objects",
        "bytes_stored",
        "bytes_live",
        "records",
        "oldest_offset",
        "oldest_timestamp_ms",
        "cleanup_policy",
        "dirty_bytes",
    )
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOPIC_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    BYTES_LIVE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    OLDEST_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CLEANUP_POLICY_FIELD_NUMBER: _ClassVar[int]
    DIRTY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    topic_id: str
    partitions: int
    objects: int
    bytes_stored: int
    bytes_live: int
    records: int
    oldest_offset: int
    oldest_timestamp_ms: int
    cleanup_policy: str
    dirty_bytes: int
    def __init__(
        self,
        name: str | None = ...,
        topic_id: str | None = ...,
        partitions: int | None = ...,
        objects: int | None = ...,
        bytes_stored: int | None = ...,
        bytes_live: int | None = ...,
        records: int | None = ...,
        oldest_offset: int | None = ...,
        oldest_timestamp_ms: int | None = ...,
        cleanup_policy: str | None = ...,
        dirty_bytes: int | None = ...,
    ) -> None: ...

class DescribeStorageResponse(_message.Message):
    __slots__ = (
        "topics",
        "objects",
        "bytes_stored",
        "bytes_live",
        "dead_objects",
        "dead_bytes",
        "small_objects",
        "small_bytes",
        "segments_created_last_hour",
        "bytes_created_last_hour",
        "small_object_bytes",
        "now_ms",
        "answered_by",
    )
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    BYTES_LIVE_FIELD_NUMBER: _ClassVar[int]
    DEAD_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    DEAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SMALL_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    SMALL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_CREATED_LAST_HOUR_FIELD_NUMBER: _ClassVar[int]
    BYTES_CREATED_LAST_HOUR_FIELD_NUMBER: _ClassVar[int]
    SMALL_OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedCompositeFieldContainer[TopicStorage]
    objects: int
    bytes_stored: int
    bytes_live: int
    dead_objects: int
    dead_bytes: int
    small_objects: int
    small_bytes: int
    segments_created_last_hour: int
    bytes_created_last_hour: int
    small_object_bytes: int
    now_ms: int
    answered_by: str
    def __init__(
        self,
        topics: _Iterable[TopicStorage | _Mapping] | None = ...,
        objects: int | None = ...,
        bytes_stored: int | None = ...,
        bytes_live: int | None = ...,
        dead_objects: int | None = ...,
        dead_bytes: int | None = ...,
        small_objects: int | None = ...,
        small_bytes: int | None = ...,
        segments_created_last_hour: int | None = ...,
        bytes_created_last_hour: int | None = ...,
        small_object_bytes: int | None = ...,
        now_ms: int | None = ...,
        answered_by: str | None = ...,
    ) -> None: ...

class AlterTopicConfigRequest(_message.Message):
    __slots__ = ("name", "set_entries", "delete_entries", "validate_only")
    class SetEntriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    NAME_FIELD_NUMBER: _ClassVar[int]
    SET_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DELETE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    set_entries: _containers.ScalarMap[str, str]
    delete_entries: _containers.RepeatedScalarFieldContainer[str]
    validate_only: bool
    def __init__(
        self,
        name: str | None = ...,
        set_entries: _Mapping[str, str] | None = ...,
        delete_entries: _Iterable[str] | None = ...,
        validate_only: bool | None = ...,
    ) -> None: ...

class AlterTopicConfigResponse(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: Topic
    def __init__(self, topic: Topic | _Mapping | None = ...) -> None: ...
