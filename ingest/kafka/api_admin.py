"""Kafka admin APIs: topics, partitions, configs and DeleteRecords, against the metadata store.

Topic configs are the keys of `streamhouse.topic_config` (retention, cleanup policy, ...);
DescribeConfigs lists every one with its value, whether it is the default and its source
(DYNAMIC_TOPIC_CONFIG when set on the topic, DEFAULT_CONFIG otherwise). Broker resources
describe the node's few settings read-only.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from ingest.kafka import errors
from metadata import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    OffsetOutOfRangeError,
    TopicExistsError,
    UnknownTopicError,
    validate_topic_name,
)
from metadata.store import MAX_PARTITIONS
from streamhouse.kafka.messages import (
    AlterConfigsRequest,
    AlterConfigsResponse,
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteRecordsRequest,
    DeleteRecordsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    DescribeConfigsRequest,
    DescribeConfigsResponse,
    IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
    RequestHeader,
)
from streamhouse.topic_config import TOPIC_CONFIGS, TopicConfigError, validate_topic_config

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker

log = logging.getLogger("ingest.kafka.admin")

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
SOURCE_DYNAMIC_TOPIC = 1
SOURCE_DEFAULT = 5
SOURCE_STATIC_BROKER = 4
# DescribeConfigs' ConfigType of each topic config, as Kafka declares it (the codes of
# DescribeConfigsResponse's ConfigType: BOOLEAN=1, STRING=2, INT=3, SHORT=4, LONG=5,
# DOUBLE=6, LIST=7, CLASS=8, PASSWORD=9); keys not listed are STRING.
CONFIG_TYPES = {
    "retention.ms": 5,
    "retention.bytes": 5,
    "delete.retention.ms": 5,
    "min.compaction.lag.ms": 5,
    "max.compaction.lag.ms": 5,
    "min.cleanable.dirty.ratio": 6,
    "message.timestamp.difference.max.ms": 5,
    "message.timestamp.before.max.ms": 5,
    "message.timestamp.after.max.ms": 5,
    "segment.ms": 5,
    "segment.bytes": 3,
    "max.message.bytes": 3,
    "min.insync.replicas": 3,
    "cleanup.policy": 7,
}


async def create_topics(
    broker: KafkaBroker, header: RequestHeader, request: CreateTopicsRequest
) -> CreateTopicsResponse:
    R = CreateTopicsResponse
    results = []
    for wanted in request.topics:
        partitions = (
            wanted.num_partitions
            if wanted.num_partitions > 0
            else broker.settings.default_partitions
        )
        result = R.CreatableTopicResult(
            name=wanted.name, num_partitions=partitions, replication_factor=1
        )
        try:
            if wanted.num_partitions == 0 or wanted.num_partitions < -1:
                raise InvalidPartitionsError(
                    f"num_partitions {wanted.num_partitions} is invalid: use -1 (default) or >= 1"
                )
            if wanted.replication_factor not in (-1, 1) and wanted.replication_factor <= 0:
                result.error_code = errors.INVALID_REPLICATION_FACTOR
                result.error_message = "replication factor must be -1 or positive"
                results.append(result)
                continue
            if wanted.assignments:
                partitions = len(wanted.assignments)
                result.num_partitions = partitions
            config = validate_topic_config(
                {c.name: c.value for c in wanted.configs if c.value is not None}
            )
            if request.validate_only:
                # What create_topic would refuse, without creating anything.
                validate_topic_name(wanted.name)
                if not 1 <= partitions <= MAX_PARTITIONS:
                    raise InvalidPartitionsError(
                        f"partition count must be between 1 and {MAX_PARTITIONS}, got {partitions}"
                    )
                if await broker.topic(wanted.name) is not None:
                    raise TopicExistsError(wanted.name)
            else:
                # Metadata writes wait for SQLite's lock and an fsync: not on the event loop.
                topic = await broker.meta.create_topic(wanted.name, partitions, config)
                result.topic_id = uuid.UUID(bytes=topic.uuid)
                log.info("created topic %s (%d partitions) over Kafka", topic.name, partitions)
            result.configs = [
                R.CreatableTopicConfigs(
                    name=key,
                    value=config.get(key, spec[0]),
                    read_only=False,
                    config_source=SOURCE_DYNAMIC_TOPIC if key in config else SOURCE_DEFAULT,
                    is_sensitive=False,
                )
                for key, spec in TOPIC_CONFIGS.items()
            ]
        except TopicExistsError:
            result.error_code = errors.TOPIC_ALREADY_EXISTS
            result.error_message = f"topic {wanted.name!r} already exists"
        except InvalidPartitionsError as exc:
            result.error_code = errors.INVALID_PARTITIONS
            result.error_message = str(exc)
        except InvalidTopicError as exc:
            result.error_code = errors.INVALID_TOPIC_EXCEPTION
            result.error_message = str(exc)
        except TopicConfigError as exc:
            result.error_code = errors.INVALID_CONFIG
            result.error_message = str(exc)
        if result.error_code:
            # As Kafka: a failed topic reports no partition count, factor or configs.
            result.num_partitions = result.replication_factor = -1
            result.configs = []
        results.append(result)
    return R(topics=results)


async def delete_topics(
    broker: KafkaBroker, header: RequestHeader, request: DeleteTopicsRequest
) -> DeleteTopicsResponse:
    R = DeleteTopicsResponse
    names: list[tuple[str | None, object]] = []
    if header.request_api_version >= 6:
        for t in request.topics:
            name = t.name
            if not name and t.topic_id is not None and t.topic_id.int:
                found = await broker.meta.get_topic_by_uuid(t.topic_id.bytes)
                name = found.name if found else None
            names.append((name, t.topic_id))
    else:
        names = [(n, None) for n in request.topic_names]
    results = []
    for name, topic_id in names:
        result = R.DeletableTopicResult(name=name)
        if topic_id is not None:
            result.topic_id = topic_id
        if name is None:
            result.error_code = errors.UNKNOWN_TOPIC_ID
            result.error_message = "no topic has that id"
        else:
            try:
                await broker.meta.delete_topic(name)
                log.info("deleted topic %s over Kafka", name)
            except UnknownTopicError:
                result.error_code = errors.UNKNOWN_TOPIC_OR_PARTITION
                result.error_message = f"topic {name!r} does not exist"
        results.append(result)
    return R(responses=results)


async def create_partitions(
    broker: KafkaBroker, header: RequestHeader, request: CreatePartitionsRequest
) -> CreatePartitionsResponse:
    R = CreatePartitionsResponse
    results = []
    for wanted in request.topics:
        result = R.CreatePartitionsTopicResult(name=wanted.name, error_code=0, error_message=None)
        topic = await broker.topic(wanted.name)
        if topic is None:
            result.error_code = errors.UNKNOWN_TOPIC_OR_PARTITION
            result.error_message = f"topic {wanted.name!r} does not exist"
        elif wanted.count <= topic.partitions:
            result.error_code = errors.INVALID_PARTITIONS
            result.error_message = (
                f"topic {wanted.name!r} has {topic.partitions} partitions; the new count "
                f"{wanted.count} must be larger"
            )
        elif wanted.count > MAX_PARTITIONS:
            result.error_code = errors.INVALID_PARTITIONS
            result.error_message = (
                f"partition count must be between 1 and {MAX_PARTITIONS}, got {wanted.count}"
            )
        elif not request.validate_only:
            try:
                await broker.meta.add_partitions(wanted.name, wanted.count)
            except InvalidTopicError as exc:
                result.error_code = errors.INVALID_PARTITIONS
                result.error_message = str(exc)
        results.append(result)
    return R(results=results)


async def _describe_topic(
    broker: KafkaBroker, name: str, keys: list[str] | None
) -> DescribeConfigsResponse.DescribeConfigsResult:
    R = DescribeConfigsResponse
    topic = await broker.topic(name)
    result = R.DescribeConfigsResult(error_code=0, resource_type=TOPIC_RESOURCE, resource_name=name)
    if topic is None:
        result.error_code = errors.UNKNOWN_TOPIC_OR_PARTITION
        result.error_message = f"topic {name!r} does not exist"
        return result
    for key, spec in TOPIC_CONFIGS.items():
        if keys is not None and key not in keys:
            continue
        is_set = key in topic.config
        result.configs.append(
            R.DescribeConfigsResourceResult(
                name=key,
                value=topic.config.get(key, spec[0]),
                read_only=False,
                is_default=not is_set,
                config_source=SOURCE_DYNAMIC_TOPIC if is_set else SOURCE_DEFAULT,
                is_sensitive=False,
                config_type=CONFIG_TYPES.get(key, 2),
                documentation=spec[2],
            )
        )
    return result


def _describe_broker(
    broker: KafkaBroker, name: str, keys: list[str] | None
) -> DescribeConfigsResponse.DescribeConfigsResult:
    R = DescribeConfigsResponse
    s = broker.settings
    values = {
        "auto.create.topics.enable": str(s.kafka_auto_create_topics).lower(),
        "num.partitions": str(s.default_partitions),
        "message.max.bytes": str(s.max_batch_bytes),
        "group.initial.rebalance.delay.ms": str(s.group_initial_rebalance_delay_ms),
        "group.min.session.timeout.ms": str(s.group_min_session_timeout_ms),
        "group.max.session.timeout.ms": str(s.group_max_session_timeout_ms),
        "socket.request.max.bytes": str(s.kafka_max_request_bytes),
    }
    result = R.DescribeConfigsResult(
        error_code=0, resource_type=BROKER_RESOURCE, resource_name=name
    )
    for key, value in values.items():
        if keys is None or key in keys:
            result.configs.append(
                R.DescribeConfigsResourceResult(
                    name=key,
                    value=value,
                    read_only=True,
                    is_default=False,
                    config_source=SOURCE_STATIC_BROKER,
                    is_sensitive=False,
                )
            )
    return result


async def describe_configs(
    broker: KafkaBroker, header: RequestHeader, request: DescribeConfigsRequest
) -> DescribeConfigsResponse:
    R = DescribeConfigsResponse
    results = []
    for resource in request.resources:
        keys = (
            list(resource.configuration_keys) if resource.configuration_keys is not None else None
        )
        if resource.resource_type == TOPIC_RESOURCE:
            results.append(await _describe_topic(broker, resource.resource_name, keys))
        elif resource.resource_type == BROKER_RESOURCE:
            results.append(_describe_broker(broker, resource.resource_name, keys))
        else:
            results.append(
                R.DescribeConfigsResult(
                    error_code=errors.INVALID_REQUEST,
                    error_message=f"resource type {resource.resource_type} is not supported",
                    resource_type=resource.resource_type,
                    resource_name=resource.resource_name,
                )
            )
    return R(results=results)


async def _apply_config(
    broker: KafkaBroker,
    resource_type: int,
    name: str,
    new_config: dict[str, str],
    validate_only: bool,
) -> tuple[int, str | None]:
    if resource_type != TOPIC_RESOURCE:
        return errors.INVALID_REQUEST, "only topic configs can be altered"
    if await broker.topic(name) is None:
        return errors.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"
    try:
        config = validate_topic_config(new_config)
    except TopicConfigError as exc:
        return errors.INVALID_CONFIG, str(exc)
    if not validate_only:
        await broker.meta.update_topic_config(name, config)
    return 0, None


def _altered(kind: Any, resource: Any, code: int, message: str | None) -> Any:
    """The per-resource answer of AlterConfigs / IncrementalAlterConfigs."""
    return kind(
        error_code=code,
        error_message=message,
        resource_type=resource.resource_type,
        resource_name=resource.resource_name,
    )


async def alter_configs(
    broker: KafkaBroker, header: RequestHeader, request: AlterConfigsRequest
) -> AlterConfigsResponse:
    R = AlterConfigsResponse
    out = []
    for resource in request.resources:
        # AlterConfigs replaces the whole config of the resource.
        new = {c.name: c.value for c in resource.configs if c.value is not None}
        code, message = await _apply_config(
            broker, resource.resource_type, resource.resource_name, new, request.validate_only
        )
        out.append(_altered(R.AlterConfigsResourceResponse, resource, code, message))
    return R(responses=out)


async def _alter_incrementally(
    broker: KafkaBroker, resource: Any, validate_only: bool
) -> tuple[int, str | None]:
    """One resource of IncrementalAlterConfigs: its operations as one metadata transaction
    (``alter_topic_config``), so alterations of other keys at the same moment all stay."""
    if resource.resource_type != TOPIC_RESOURCE:
        return errors.INVALID_REQUEST, "only topic configs can be altered"
    names = [c.name for c in resource.configs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return (
            errors.INVALID_REQUEST,
            f"config {', '.join(repeated)} is given more than once: give each key once",
        )
    to_set: dict[str, str] = {}
    to_delete: list[str] = []
    append: dict[str, list[str]] = {}
    subtract: dict[str, list[str]] = {}
    for c in resource.configs:
        if c.config_operation == 0:  # SET
            if c.value is None:
                return errors.INVALID_CONFIG, f"no value given for {c.name}"
            to_set[c.name] = c.value
        elif c.config_operation == 1:  # DELETE (back to the default)
            to_delete.append(c.name)
        elif c.config_operation in (2, 3):  # APPEND / SUBTRACT on list configs
            items = [v for v in (c.value or "").split(",") if v]
            (append if c.config_operation == 2 else subtract)[c.name] = items
        else:
            return errors.INVALID_REQUEST, f"unknown config operation {c.config_operation}"
    try:
        await broker.meta.alter_topic_config(
            resource.resource_name,
            to_set,
            to_delete,
            validate_only,
            append=append,
            subtract=subtract,
        )
    except UnknownTopicError:
        return errors.UNKNOWN_TOPIC_OR_PARTITION, f"topic {resource.resource_name!r} does not exist"
    except InvalidConfigError as exc:
        return errors.INVALID_CONFIG, str(exc)
    return 0, None


async def incremental_alter_configs(
    broker: KafkaBroker, header: RequestHeader, request: IncrementalAlterConfigsRequest
) -> IncrementalAlterConfigsResponse:
    R = IncrementalAlterConfigsResponse
    out = []
    for resource in request.resources:
        code, message = await _alter_incrementally(broker, resource, request.validate_only)
        out.append(_altered(R.AlterConfigsResourceResponse, resource, code, message))
    return R(responses=out)


async def delete_records(
    broker: KafkaBroker, header: RequestHeader, request: DeleteRecordsRequest
) -> DeleteRecordsResponse:
    R = DeleteRecordsResponse
    topics = []
    for wanted in request.topics:
        topic = await broker.topic(wanted.name)
        partitions = []
        for p in wanted.partitions:
            result = R.DeleteRecordsPartitionResult(
                partition_index=p.partition_index, low_watermark=-1, error_code=0
            )
            if topic is None or not 0 <= p.partition_index < topic.partitions:
                result.error_code = errors.UNKNOWN_TOPIC_OR_PARTITION
            else:
                state = await broker.meta.get_partition(topic.topic_id, p.partition_index)
                assert state is not None
                target = state.high_watermark if p.offset == -1 else p.offset
                try:
                    if target < 0:
                        raise OffsetOutOfRangeError(f"offset {p.offset} is invalid")
                    if target > state.log_start_offset:
                        state = await broker.meta.set_log_start_offset(
                            topic.topic_id,
                            p.partition_index,
                            target,
                        )
                    result.low_watermark = state.log_start_offset
                except OffsetOutOfRangeError:
                    result.error_code = errors.OFFSET_OUT_OF_RANGE
            partitions.append(result)
        topics.append(R.DeleteRecordsTopicResult(name=wanted.name, partitions=partitions))
    return R(topics=topics)
