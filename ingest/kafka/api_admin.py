"""Kafka admin APIs: topics, partitions, configs and DeleteRecords, against the metadata store.

Topic configs are the keys of `streamhouse.topic_config` (every topic config Kafka defines);
DescribeConfigs lists every one with its value, Kafka type, whether it is the default, its
source (DYNAMIC_TOPIC_CONFIG when set on the topic; else STATIC_BROKER_CONFIG when the broker
config it defaults to is an agent setting, which is max.message.bytes from
STREAMHOUSE_MAX_BATCH_BYTES, the limit produce applies to a topic that sets none; else
DEFAULT_CONFIG), its synonyms when asked (Kafka's order: the topic's value, the broker config,
`BROKER_SYNONYMS`) and, as its documentation, the valid values and, for the keys StreamHouse
only stores, why it does not act on them.

Broker resources (name "" or this agent's node id; another agent's id is refused with the
node to ask, as Kafka refuses a broker id not its own): the agent's settings under their Kafka
names (`broker_configs`), all read-only and truthful: STATIC_BROKER_CONFIG for those an agent
setting (STREAMHOUSE_*, read at start) gives, DEFAULT_CONFIG for what StreamHouse fixes (one
replica, the topic defaults). (Incremental)AlterConfigs of a broker resource is refused with
INVALID_CONFIG naming the setting to change and restart with; an alteration that changes
nothing (no entries) succeeds, as in Kafka.

Broker loggers (resource type 8, this agent's node id): the ingest process's Python loggers
with their effective levels in log4j's names (WARNING is WARN, CRITICAL FATAL; TRACE sets
DEBUG); IncrementalAlterConfigs SETs a level or DELETEs it (back to the parent's; not the root
logger's) until the process restarts, as Kafka's logger changes are not persisted either.

Group resources (Kafka 3.8+, resource type 32): the group configs Kafka defines for its
consumer (KIP-848) and share-group protocols, at their defaults, read-only: StreamHouse serves
classic groups, whose session and rebalance timeouts come from JoinGroup, so altering them is
refused with the reason.

CreateTopics with a manual replica assignment (num_partitions and replication_factor -1, as
Kafka requires) creates one partition per assigned partition and records the assignment as the
topic config `streamhouse.replica.assignment` (`partition:broker|broker,...`), which
DescribeConfigs describes (read-only: set, altered or replaced away only by CreateTopics and
CreatePartitions, which extends it with the new partitions' brokers, the first partition's when
none are given); the broker ids must be registered agents. Object storage does the
replication, so the assignment places nothing.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

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
from streamhouse.topic_config import (
    REPLICA_ASSIGNMENT,
    TOPIC_CONFIG_TYPES,
    TOPIC_CONFIGS,
    TopicConfigError,
    documentation,
    validate_topic_config,
)

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker

log = logging.getLogger("ingest.kafka.admin")

# Kafka error codes the shared table (streamhouse/errors.py) does not list.
INVALID_REPLICA_ASSIGNMENT = 39
_ASSIGNMENT_READ_ONLY = (
    f"{REPLICA_ASSIGNMENT} records the replica assignment CreateTopics and CreatePartitions "
    "were given; it cannot be set or altered as a config (give the assignment in those requests)"
)
TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
BROKER_LOGGER_RESOURCE = 8
GROUP_RESOURCE = 32
SOURCE_DYNAMIC_BROKER_LOGGER = 6
SOURCE_DYNAMIC_TOPIC = 1
SOURCE_STATIC_BROKER = 4
SOURCE_DEFAULT = 5
# DescribeConfigsResponse's ConfigType codes by name.
CONFIG_TYPE_CODES = {
    "BOOLEAN": 1,
    "STRING": 2,
    "INT": 3,
    "SHORT": 4,
    "LONG": 5,
    "DOUBLE": 6,
    "LIST": 7,
    "CLASS": 8,
    "PASSWORD": 9,
}
#: DescribeConfigs' ConfigType of each topic config, as Kafka declares it.
CONFIG_TYPES = {key: CONFIG_TYPE_CODES[kind] for key, kind in TOPIC_CONFIG_TYPES.items()}

#: Kafka's group configs (GroupConfig, Kafka 3.8+) and their defaults and types.
GROUP_CONFIGS: dict[str, tuple[str, str]] = {
    "consumer.session.timeout.ms": ("45000", "INT"),
    "consumer.heartbeat.interval.ms": ("5000", "INT"),
    "share.session.timeout.ms": ("45000", "INT"),
    "share.heartbeat.interval.ms": ("5000", "INT"),
    "share.record.lock.duration.ms": ("30000", "INT"),
    "share.auto.offset.reset": ("latest", "STRING"),
}
_GROUP_CONFIG_DOC = (
    "Applies to Kafka's consumer (KIP-848) and share group protocols, which StreamHouse does not "
    "serve; its classic groups take session and rebalance timeouts from JoinGroup."
)


class BrokerConfig(NamedTuple):
    value: str
    kind: str  # a CONFIG_TYPE_CODES name
    setting: str | None  # the agent setting (environment variable) that gives it, if any
    documentation: str


def broker_configs(broker: KafkaBroker) -> dict[str, BrokerConfig]:
    """The agent's settings under their Kafka broker config names, every one read-only."""
    s = broker.settings
    node = broker.cluster.self_agent.node_id
    host, port = s.kafka_advertised_address
    fixed = "fixed in StreamHouse"

    def env(name: str) -> str:
        return f"STREAMHOUSE_{name.upper()}"

    def topic_default(key: str) -> BrokerConfig:
        return BrokerConfig(
            TOPIC_CONFIGS[key][0],
            TOPIC_CONFIG_TYPES[key],
            None,
            f"The default of the topic config {key} ({fixed}; set it per topic).",
        )

    return {
        "node.id": BrokerConfig(str(node), "INT", None, "This agent's node id."),
        "broker.id": BrokerConfig(str(node), "INT", None, "This agent's node id."),
        "broker.rack": BrokerConfig(
            s.agent_zone, "STRING", env("agent_zone"), "The agent's zone, given as rack."
        ),
        "listeners": BrokerConfig(
            f"PLAINTEXT://{s.kafka_listen}", "STRING", env("kafka_listen"), "The Kafka listener."
        ),
        "advertised.listeners": BrokerConfig(
            f"PLAINTEXT://{host}:{port}",
            "STRING",
            env("kafka_advertised"),
            "The address clients are told.",
        ),
        "log.dirs": BrokerConfig(
            log_dir(broker), "STRING", env("object_store"), "The object store holding the log."
        ),
        "auto.create.topics.enable": BrokerConfig(
            str(s.kafka_auto_create_topics).lower(),
            "BOOLEAN",
            env("kafka_auto_create_topics"),
            "Whether Produce and Metadata (allow_auto_topic_creation) create unknown topics.",
        ),
        "num.partitions": BrokerConfig(
            str(s.default_partitions),
            "INT",
            env("default_partitions"),
            "Partitions of a topic created without a count.",
        ),
        "default.replication.factor": BrokerConfig(
            "1", "SHORT", None, f"One replica: object storage replicates ({fixed})."
        ),
        "offsets.topic.replication.factor": BrokerConfig(
            "1", "SHORT", None, f"Group offsets are kept in the metadata store ({fixed})."
        ),
        "delete.topic.enable": BrokerConfig("true", "BOOLEAN", None, f"Always on ({fixed})."),
        "message.max.bytes": BrokerConfig(
            str(s.max_batch_bytes), "INT", env("max_batch_bytes"), "The largest record batch."
        ),
        "socket.request.max.bytes": BrokerConfig(
            str(s.kafka_max_request_bytes),
            "INT",
            env("kafka_max_request_bytes"),
            "The largest request frame.",
        ),
        "queued.max.request.bytes": BrokerConfig(
            str(s.kafka_max_queued_request_bytes),
            "LONG",
            env("kafka_max_queued_request_bytes"),
            "Request bytes admitted over all connections.",
        ),
        "max.connections": BrokerConfig(
            str(s.kafka_max_connections),
            "INT",
            env("kafka_max_connections"),
            "Kafka connections served at once.",
        ),
        "connections.max.idle.ms": BrokerConfig(
            str(s.kafka_idle_timeout_ms),
            "LONG",
            env("kafka_idle_timeout_ms"),
            "Idle connections are closed after this long.",
        ),
        "group.initial.rebalance.delay.ms": BrokerConfig(
            str(s.group_initial_rebalance_delay_ms),
            "INT",
            env("group_initial_rebalance_delay_ms"),
            "Delay of a new group's first rebalance.",
        ),
        "group.min.session.timeout.ms": BrokerConfig(
            str(s.group_min_session_timeout_ms),
            "INT",
            env("group_min_session_timeout_ms"),
            "The smallest session timeout a member may ask for.",
        ),
        "group.max.session.timeout.ms": BrokerConfig(
            str(s.group_max_session_timeout_ms),
            "INT",
            env("group_max_session_timeout_ms"),
            "The largest session timeout a member may ask for.",
        ),
        "offsets.retention.minutes": BrokerConfig(
            str(s.offsets_retention_minutes),
            "INT",
            env("offsets_retention_minutes"),
            "How long an empty group's committed offsets are kept.",
        ),
        "transactional.id.expiration.ms": BrokerConfig(
            str(s.producer_id_expiration_ms),
            "INT",
            env("producer_id_expiration_ms"),
            "Idle producer state is forgotten after this long.",
        ),
        "producer.id.expiration.ms": BrokerConfig(
            str(s.producer_id_expiration_ms),
            "INT",
            env("producer_id_expiration_ms"),
            "Idle producer state is forgotten after this long.",
        ),
        **{
            broker_key: topic_default(topic_key)
            for topic_key, broker_key in BROKER_SYNONYMS.items()
            if topic_key != "max.message.bytes"  # message.max.bytes is a setting (above)
        },
    }


#: Topic config -> the broker config that is its default (Kafka's synonyms).
BROKER_SYNONYMS = {
    "retention.ms": "log.retention.ms",
    "retention.bytes": "log.retention.bytes",
    "cleanup.policy": "log.cleanup.policy",
    "segment.bytes": "log.segment.bytes",
    "segment.ms": "log.roll.ms",
    "delete.retention.ms": "log.cleaner.delete.retention.ms",
    "min.cleanable.dirty.ratio": "log.cleaner.min.cleanable.ratio",
    "min.compaction.lag.ms": "log.cleaner.min.compaction.lag.ms",
    "max.compaction.lag.ms": "log.cleaner.max.compaction.lag.ms",
    "message.timestamp.type": "log.message.timestamp.type",
    "max.message.bytes": "message.max.bytes",
    "min.insync.replicas": "min.insync.replicas",
    "compression.type": "compression.type",
}


def log_dir(broker: KafkaBroker) -> str:
    """This agent's one log dir: the object store URL (without any credentials or query)."""
    url = urlsplit(broker.settings.object_store_url)
    netloc = url.hostname or ""
    if url.port is not None:
        netloc += f":{url.port}"
    return urlunsplit((url.scheme, netloc, url.path, "", ""))


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
            given = {c.name: c.value for c in wanted.configs if c.value is not None}
            if REPLICA_ASSIGNMENT in given:
                result.error_code = errors.INVALID_CONFIG
                result.error_message = _ASSIGNMENT_READ_ONLY
                results.append(_failed(result))
                continue
            if wanted.assignments:
                if wanted.num_partitions != -1 or wanted.replication_factor != -1:
                    result.error_code = errors.INVALID_REQUEST
                    result.error_message = (
                        "a replica assignment was given together with num_partitions or "
                        "replication_factor: give -1 for both, as Kafka requires"
                    )
                    results.append(_failed(result))
                    continue
                recorded, refusal = _assignment(broker, wanted.assignments)
                if refusal is not None:
                    result.error_code = INVALID_REPLICA_ASSIGNMENT
                    result.error_message = refusal
                    results.append(_failed(result))
                    continue
                given[REPLICA_ASSIGNMENT] = recorded
                partitions = len(wanted.assignments)
                result.num_partitions = partitions
                result.replication_factor = len(wanted.assignments[0].broker_ids)
            config = validate_topic_config(given)
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
            defaults = broker_configs(broker)
            result.configs = []
            for key in TOPIC_CONFIGS:
                value, source = topic_value(defaults, config, key)
                result.configs.append(
                    R.CreatableTopicConfigs(
                        name=key,
                        value=value,
                        read_only=key == REPLICA_ASSIGNMENT,
                        config_source=source,
                        is_sensitive=False,
                    )
                )
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
        results.append(_failed(result) if result.error_code else result)
    return R(topics=results)


def _failed(result: Any) -> Any:
    """As Kafka: a failed topic reports no partition count, factor or configs."""
    result.num_partitions = result.replication_factor = -1
    result.configs = []
    return result


def _assignment(broker: KafkaBroker, assignments: Any) -> tuple[str, str | None]:
    """The `streamhouse.replica.assignment` value of a CreateTopics assignment, or why it is
    refused (Kafka's rules: partitions 0..n-1 each once, the same positive number of distinct
    registered brokers for each)."""
    indexes = sorted(a.partition_index for a in assignments)
    if indexes != list(range(len(assignments))):
        return "", (
            f"the assignment names partitions {indexes}: give each of "
            f"0..{len(assignments) - 1} once"
        )
    known = {a.node_id for a in broker.cluster.agents()}
    factor = len(assignments[0].broker_ids)
    parts = []
    for a in sorted(assignments, key=lambda a: a.partition_index):
        ids = list(a.broker_ids)
        if not ids or len(set(ids)) != len(ids):
            return "", f"partition {a.partition_index} needs distinct broker ids, got {ids}"
        if len(ids) != factor:
            return "", (
                f"partition {a.partition_index} has {len(ids)} replicas, partition 0 has "
                f"{factor}: every partition needs the same replication factor"
            )
        unknown = sorted(set(ids) - known)
        if unknown:
            return "", (
                f"partition {a.partition_index} names broker {unknown[0]}, which is not a "
                f"registered agent (brokers: {sorted(known)})"
            )
        parts.append(f"{a.partition_index}:" + "|".join(str(i) for i in ids))
    return ",".join(parts), None


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
        else:
            recorded = topic.config.get(REPLICA_ASSIGNMENT, "")
            extended, refusal = _extended_assignment(
                broker, recorded, topic.partitions, wanted.count, wanted.assignments
            )
            if refusal is not None:
                result.error_code = INVALID_REPLICA_ASSIGNMENT
                result.error_message = refusal
            elif not request.validate_only:
                try:
                    await broker.meta.add_partitions(wanted.name, wanted.count)
                    if extended != recorded:
                        await broker.meta.alter_topic_config(
                            wanted.name, {REPLICA_ASSIGNMENT: extended}, [], False
                        )
                except InvalidTopicError as exc:
                    result.error_code = errors.INVALID_PARTITIONS
                    result.error_message = str(exc)
        results.append(result)
    return R(results=results)


def _extended_assignment(
    broker: KafkaBroker, recorded: str, current: int, count: int, assignments: Any
) -> tuple[str, str | None]:
    """The recorded replica assignment after CreatePartitions from `current` to `count`
    partitions with the request's `assignments` (None or one per new partition), or why they
    are refused. A topic created without an assignment records none for the new partitions
    either; one created with an assignment gets the given brokers, or, when none are given,
    the first partition's."""
    if assignments is None and not recorded:
        return recorded, None
    if assignments is not None and len(assignments) != count - current:
        return recorded, (
            f"{len(assignments)} assignments given for {count - current} new partitions: give "
            "one per new partition"
        )
    known = {a.node_id for a in broker.cluster.agents()}
    existing = recorded.split(",") if recorded else []
    factor = len(existing[0].split(":")[1].split("|")) if existing else None
    added = []
    for i in range(count - current):
        if assignments is None:
            ids = [int(b) for b in existing[0].split(":")[1].split("|")]
        else:
            ids = list(assignments[i].broker_ids)
        if not ids or len(set(ids)) != len(ids):
            return recorded, f"new partition {current + i} needs distinct broker ids, got {ids}"
        if factor is not None and len(ids) != factor:
            return recorded, (
                f"new partition {current + i} has {len(ids)} replicas, the topic has {factor}"
            )
        if unknown := sorted(set(ids) - known):
            return recorded, (
                f"new partition {current + i} names broker {unknown[0]}, which is not a "
                f"registered agent (brokers: {sorted(known)})"
            )
        added.append(f"{current + i}:" + "|".join(str(b) for b in ids))
    if not existing:
        return recorded, None  # brokers checked; nothing was recorded for this topic
    return ",".join(existing + added), None


def topic_value(
    broker_defaults: dict[str, BrokerConfig], config: dict[str, str], key: str
) -> tuple[str, int]:
    """A topic config's value and source: the topic's own; unset, the broker config it
    defaults to when an agent setting gives that (max.message.bytes:
    STREAMHOUSE_MAX_BATCH_BYTES, what produce applies), else the built-in default."""
    if key in config:
        return config[key], SOURCE_DYNAMIC_TOPIC
    fallback = broker_defaults.get(BROKER_SYNONYMS.get(key, ""))
    if fallback is not None and fallback.setting:
        return fallback.value, SOURCE_STATIC_BROKER
    return TOPIC_CONFIGS[key][0], SOURCE_DEFAULT


async def _describe_topic(
    broker: KafkaBroker, name: str, keys: list[str] | None, synonyms: bool = False
) -> DescribeConfigsResponse.DescribeConfigsResult:
    R = DescribeConfigsResponse
    broker_defaults = broker_configs(broker)
    topic = await broker.topic(name)
    result = R.DescribeConfigsResult(error_code=0, resource_type=TOPIC_RESOURCE, resource_name=name)
    if topic is None:
        result.error_code = errors.UNKNOWN_TOPIC_OR_PARTITION
        result.error_message = f"topic {name!r} does not exist"
        return result
    for key in TOPIC_CONFIGS:
        if keys is not None and key not in keys:
            continue
        is_set = key in topic.config
        value, source = topic_value(broker_defaults, topic.config, key)
        entry = R.DescribeConfigsResourceResult(
            name=key,
            value=value,
            read_only=key == REPLICA_ASSIGNMENT,
            is_default=source == SOURCE_DEFAULT,
            config_source=source,
            is_sensitive=False,
            config_type=CONFIG_TYPES[key],
            documentation=documentation(key),
        )
        if synonyms:
            # Kafka's order: the topic's own value, then the broker config it defaults to
            # (where StreamHouse has one), then the built-in default.
            if is_set:
                entry.synonyms.append(
                    R.DescribeConfigsSynonym(
                        name=key, value=topic.config[key], source=SOURCE_DYNAMIC_TOPIC
                    )
                )
            broker_key = BROKER_SYNONYMS.get(key)
            if broker_key is not None:
                default = broker_defaults[broker_key]
                entry.synonyms.append(
                    R.DescribeConfigsSynonym(
                        name=broker_key,
                        value=default.value,
                        source=SOURCE_STATIC_BROKER if default.setting else SOURCE_DEFAULT,
                    )
                )
        result.configs.append(entry)
    return result


def _broker_refusal(broker: KafkaBroker, name: str) -> str | None:
    """Why this agent does not answer for broker resource `name` (None when it does)."""
    node = broker.cluster.self_agent.node_id
    if name in ("", str(node)):
        return None
    return (
        f"broker resource {name!r} is not this agent (node {node}); send it to that broker, "
        f'or name {node} or "" (the cluster default)'
    )


def _describe_broker(
    broker: KafkaBroker, name: str, keys: list[str] | None
) -> DescribeConfigsResponse.DescribeConfigsResult:
    R = DescribeConfigsResponse
    result = R.DescribeConfigsResult(
        error_code=0, resource_type=BROKER_RESOURCE, resource_name=name
    )
    refusal = _broker_refusal(broker, name)
    if refusal is not None:
        result.error_code = errors.INVALID_REQUEST
        result.error_message = refusal
        return result
    for key, config in broker_configs(broker).items():
        if keys is None or key in keys:
            result.configs.append(
                R.DescribeConfigsResourceResult(
                    name=key,
                    value=config.value,
                    read_only=True,
                    is_default=config.setting is None,
                    config_source=SOURCE_DEFAULT
                    if config.setting is None
                    else SOURCE_STATIC_BROKER,
                    is_sensitive=False,
                    config_type=CONFIG_TYPE_CODES[config.kind],
                    documentation=config.documentation
                    + (f" Set by {config.setting} (read at start)." if config.setting else ""),
                )
            )
    return result


def _describe_group(
    name: str, keys: list[str] | None
) -> DescribeConfigsResponse.DescribeConfigsResult:
    R = DescribeConfigsResponse
    result = R.DescribeConfigsResult(error_code=0, resource_type=GROUP_RESOURCE, resource_name=name)
    if not name:
        result.error_code = errors.INVALID_GROUP_ID
        result.error_message = "a group resource needs a group id"
        return result
    for key, (default, kind) in GROUP_CONFIGS.items():
        if keys is None or key in keys:
            result.configs.append(
                R.DescribeConfigsResourceResult(
                    name=key,
                    value=default,
                    read_only=True,
                    is_default=True,
                    config_source=SOURCE_DEFAULT,
                    is_sensitive=False,
                    config_type=CONFIG_TYPE_CODES[kind],
                    documentation=_GROUP_CONFIG_DOC,
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
            results.append(
                await _describe_topic(
                    broker, resource.resource_name, keys, request.include_synonyms
                )
            )
        elif resource.resource_type == BROKER_RESOURCE:
            results.append(_describe_broker(broker, resource.resource_name, keys))
        elif resource.resource_type == GROUP_RESOURCE:
            results.append(_describe_group(resource.resource_name, keys))
        elif resource.resource_type == BROKER_LOGGER_RESOURCE:
            results.append(_describe_loggers(broker, resource.resource_name, keys))
        else:
            results.append(
                R.DescribeConfigsResult(
                    error_code=errors.INVALID_REQUEST,
                    error_message=(
                        f"resource type {resource.resource_type} has no configs here: use "
                        "topic (2), broker (4), broker logger (8) or group (32)"
                    ),
                    resource_type=resource.resource_type,
                    resource_name=resource.resource_name,
                )
            )
    return R(results=results)


# Kafka's (log4j) level names and Python's: TRACE has no Python level and is DEBUG here.
_TO_PYTHON = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "OFF": logging.CRITICAL + 10,
}
_FROM_PYTHON = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "FATAL",
    logging.CRITICAL + 10: "OFF",
}
ROOT_LOGGER = "root"


def _loggers() -> dict[str, logging.Logger]:
    """This process's loggers by name (the root logger as `root`, as log4j names it)."""
    found = {
        name: logger
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    return {ROOT_LOGGER: logging.root, **dict(sorted(found.items()))}


def _level_name(logger: logging.Logger) -> str:
    level = logger.getEffectiveLevel()
    return _FROM_PYTHON.get(level) or logging.getLevelName(level)


def _describe_loggers(
    broker: KafkaBroker, name: str, keys: list[str] | None
) -> DescribeConfigsResponse.DescribeConfigsResult:
    """Broker loggers (Kafka's kafka-configs --entity-type broker-loggers): the ingest
    process's loggers and their effective levels; changes last until the process restarts
    (as in Kafka, where they are not persisted either)."""
    R = DescribeConfigsResponse
    result = R.DescribeConfigsResult(
        error_code=0, resource_type=BROKER_LOGGER_RESOURCE, resource_name=name
    )
    node = str(broker.cluster.self_agent.node_id)
    if name != node:
        result.error_code = errors.INVALID_REQUEST
        result.error_message = f"broker loggers are described per broker: name node {node}"
        return result
    for logger_name, logger in _loggers().items():
        if keys is None or logger_name in keys:
            result.configs.append(
                R.DescribeConfigsResourceResult(
                    name=logger_name,
                    value=_level_name(logger),
                    read_only=False,
                    is_default=False,
                    config_source=SOURCE_DYNAMIC_BROKER_LOGGER,
                    is_sensitive=False,
                    config_type=CONFIG_TYPE_CODES["STRING"],
                    documentation=(
                        "The level of this logger of the agent's ingest process (until it "
                        "restarts); STREAMHOUSE_LOG_LEVEL sets the root level at start."
                    ),
                )
            )
    return result


def _alter_loggers(
    broker: KafkaBroker, resource: Any, validate_only: bool
) -> tuple[int, str | None]:
    """SET a logger's level or DELETE it (back to its parent's); all or nothing."""
    node = str(broker.cluster.self_agent.node_id)
    if resource.resource_name != node:
        return errors.INVALID_REQUEST, f"broker loggers are altered per broker: name node {node}"
    known = _loggers()
    changes: list[tuple[logging.Logger, int]] = []
    for c in resource.configs:
        logger = known.get(c.name)
        if logger is None:
            return errors.INVALID_CONFIG, f"logger {c.name!r} does not exist in this agent"
        if c.config_operation == 0:  # SET
            level = _TO_PYTHON.get((c.value or "").upper())
            if level is None:
                return errors.INVALID_CONFIG, (
                    f"{c.value!r} is not a log level: use one of {', '.join(_TO_PYTHON)}"
                )
            changes.append((logger, level))
        elif c.config_operation == 1:  # DELETE
            if c.name == ROOT_LOGGER:
                return errors.INVALID_CONFIG, "the root logger's level cannot be removed: set it"
            changes.append((logger, logging.NOTSET))
        else:
            return errors.INVALID_REQUEST, (
                f"operation {c.config_operation} does not apply to a logger level: SET or DELETE"
            )
    if not validate_only:
        for logger, level in changes:
            logger.setLevel(level)
            log.info("logger %s set to %s over Kafka", logger.name, logging.getLevelName(level))
    return 0, None


def _refuse_non_topic(broker: KafkaBroker, resource: Any, keys: list[str]) -> tuple[int, str]:
    """The answer to altering a broker or group resource (nothing there can change)."""
    if resource.resource_type == BROKER_RESOURCE:
        refusal = _broker_refusal(broker, resource.resource_name)
        if refusal is not None:
            return errors.INVALID_REQUEST, refusal
        if not keys:
            return 0, ""
        known = broker_configs(broker)
        unknown = [k for k in keys if k not in known]
        if unknown:
            return errors.INVALID_CONFIG, (
                f"unknown broker config {', '.join(unknown)}; DescribeConfigs of the broker "
                "lists the known ones"
            )
        parts = []
        for key in keys:
            setting = known[key].setting
            parts.append(
                f"{key} (set {setting} and restart the agent)"
                if setting
                else f"{key} (fixed in StreamHouse)"
            )
        return errors.INVALID_CONFIG, (
            "broker configs cannot change while the agent runs: " + "; ".join(parts)
        )
    if resource.resource_type == BROKER_LOGGER_RESOURCE:
        return errors.INVALID_REQUEST, (
            "AlterConfigs does not change broker loggers (neither does Kafka): use "
            "IncrementalAlterConfigs"
        )
    if resource.resource_type == GROUP_RESOURCE:
        if not keys:
            return 0, ""
        unknown = [k for k in keys if k not in GROUP_CONFIGS]
        if unknown:
            return errors.INVALID_CONFIG, (
                f"unknown group config {', '.join(unknown)}; known: {', '.join(GROUP_CONFIGS)}"
            )
        return errors.INVALID_CONFIG, (
            f"group configs cannot be altered: {_GROUP_CONFIG_DOC} Set session.timeout.ms on "
            "the consumer instead"
        )
    return errors.INVALID_REQUEST, (
        f"resource type {resource.resource_type} has no configs here: use topic (2), broker "
        "(4), broker logger (8; IncrementalAlterConfigs only) or group (32)"
    )


async def _apply_config(
    broker: KafkaBroker,
    resource_type: int,
    name: str,
    new_config: dict[str, str],
    validate_only: bool,
) -> tuple[int, str | None]:
    topic = await broker.topic(name)
    if topic is None:
        return errors.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"
    recorded = topic.config.get(REPLICA_ASSIGNMENT)
    if new_config.get(REPLICA_ASSIGNMENT, recorded) != recorded:
        return errors.INVALID_CONFIG, _ASSIGNMENT_READ_ONLY
    if recorded is not None:
        new_config = {**new_config, REPLICA_ASSIGNMENT: recorded}  # kept by a replacement
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
        if resource.resource_type != TOPIC_RESOURCE:
            code, text = _refuse_non_topic(broker, resource, [c.name for c in resource.configs])
            out.append(_altered(R.AlterConfigsResourceResponse, resource, code, text or None))
            continue
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
    if resource.resource_type == BROKER_LOGGER_RESOURCE:
        return _alter_loggers(broker, resource, validate_only)
    if resource.resource_type != TOPIC_RESOURCE:
        code, text = _refuse_non_topic(broker, resource, [c.name for c in resource.configs])
        return code, text or None
    names = [c.name for c in resource.configs]
    if REPLICA_ASSIGNMENT in names:
        return errors.INVALID_CONFIG, _ASSIGNMENT_READ_ONLY
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
