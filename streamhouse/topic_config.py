"""Topic configuration keys StreamHouse accepts, their defaults, types and validation.

Every topic config Apache Kafka (3.x and 4.x) defines is accepted, so tools and clients that
set them (Kafka Connect, Streams, Terraform providers, ...) are not refused. Values are kept
as strings (as Kafka does) and validated by the key's Kafka type (`TOPIC_CONFIG_TYPES`: LONG
and INT are decimal integers within int64/int32, BOOLEAN is true/false in any case, DOUBLE a
decimal number, LIST comma-separated items) and range; unknown keys are refused so typos do not
pass silently.

Which configs StreamHouse acts on and which it only stores: `NOT_ACTED_ON` maps every stored-
only key to why (object storage does the replication, so replica throttles and
min.insync.replicas have nothing to act on; there are no local log files to flush, preallocate,
index or delay deleting; batches are stored as produced, so broker-side recompression settings
do not apply). DescribeConfigs gives that reason in each entry's documentation.

`cleanup.policy` may be empty (Kafka 4.x, KIP-1030): neither deletion nor compaction, so the
topic keeps everything (retention only runs where the policy contains `delete`, compaction
where it contains `compact`).

`streamhouse.replica.assignment` is StreamHouse's own key: the manual replica assignment a
Kafka CreateTopics request gave, recorded as `partition:broker|broker,...` (e.g.
`0:1|2,1:2|0`) and described back; object storage replicates, so it places nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from streamhouse.recordbatch import BatchRules


class TopicConfigError(ValueError):
    """A topic config key is unknown or its value is invalid; the message says which."""


_LONG = re.compile(r"-?[0-9]{1,19}")
_LONG_MAX = str(2**63 - 1)  # Kafka's Long.MAX_VALUE: no limit
_INT_MAX = 2**31 - 1


def _int_at_least(low: int, high: int = 2**63 - 1) -> Callable[[str], bool]:
    """A Kafka long (decimal digits only, within int64) in [low, high]; pass an int32 high
    for Kafka's INT configs."""

    def check(value: str) -> bool:
        return bool(_LONG.fullmatch(value)) and low <= int(value) <= high

    return check


def _int_between(low: int, high: int) -> Callable[[str], bool]:
    return _int_at_least(low, high)


_DECIMAL = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?([eE]-?[0-9]{1,3})?")


def _ratio(value: str) -> bool:
    """A Kafka double within [0, 1] (plain decimal notation)."""
    return bool(_DECIMAL.fullmatch(value)) and 0.0 <= float(value) <= 1.0


def _one_of(*choices: str) -> Callable[[str], bool]:
    return lambda value: value in choices


def _boolean(value: str) -> bool:
    """Kafka parses BOOLEAN configs case-insensitively."""
    return value.lower() in ("true", "false")


def _list_of(*choices: str) -> Callable[[str], bool]:
    """A LIST config whose items are each one of `choices`; may be empty."""

    def check(value: str) -> bool:
        items = [v.strip() for v in value.split(",")] if value.strip() else []
        return all(item in choices for item in items)

    return check


_THROTTLED = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")


def _throttled_replicas(value: str) -> bool:
    """`*`, empty, or `partition:broker` items (Kafka's ThrottledReplicaListValidator)."""
    if value.strip() in ("", "*"):
        return True
    return all(_THROTTLED.fullmatch(item.strip()) for item in value.split(","))


_ASSIGNMENT_ITEM = re.compile(r"[0-9]{1,10}:[0-9]{1,10}(\|[0-9]{1,10})*")


def _assignment(value: str) -> bool:
    """`partition:broker|broker,...` with partitions 0..n-1 each once (the replica assignment)."""
    items = value.split(",")
    if not all(_ASSIGNMENT_ITEM.fullmatch(item) for item in items):
        return False
    partitions = sorted(int(item.split(":")[0]) for item in items)
    return partitions == list(range(len(items)))


REPLICA_ASSIGNMENT = "streamhouse.replica.assignment"

_POLICIES = ("delete", "compact")

# key -> (default, validator, what a valid value is)
TOPIC_CONFIGS: dict[str, tuple[str, Callable[[str], bool], str]] = {
    "retention.ms": ("604800000", _int_at_least(-1), "an integer >= -1 (-1: keep forever)"),
    "retention.bytes": ("-1", _int_at_least(-1), "an integer >= -1 (-1: no size limit)"),
    "cleanup.policy": (
        "delete",
        _list_of(*_POLICIES),
        "delete, compact, compact,delete or empty (keep everything)",
    ),
    # Key compaction (cleanup.policy compact), Kafka's defaults; lifecycle/keycompact.py.
    # delete.retention.ms: how long a tombstone (null value) survives once compaction reached
    # it; min/max.compaction.lag.ms: a record is never compacted younger than min, and a
    # partition is compacted once its oldest uncompacted record is older than max, whatever
    # min.cleanable.dirty.ratio (the share of uncompacted bytes that makes it due) says.
    "delete.retention.ms": ("86400000", _int_at_least(0), "an integer >= 0 (ms)"),
    "min.compaction.lag.ms": ("0", _int_at_least(0), "an integer >= 0 (ms)"),
    "max.compaction.lag.ms": (_LONG_MAX, _int_at_least(1), "a positive integer (ms)"),
    "min.cleanable.dirty.ratio": (
        "0.5",
        _ratio,
        "a number between 0 and 1 (the share of uncompacted bytes that makes compaction due)",
    ),
    "max.message.bytes": ("1048588", _int_between(0, _INT_MAX), "an integer >= 0 (int32)"),
    "message.timestamp.type": (
        "CreateTime",
        _one_of("CreateTime", "LogAppendTime"),
        "CreateTime or LogAppendTime",
    ),
    # Kafka 3.6+ (KIP-937): how far a CreateTime record's timestamp may lag (before) or lead
    # (after) the broker's clock; difference.max.ms is the older key for both.
    "message.timestamp.difference.max.ms": (
        _LONG_MAX,
        _int_at_least(0),
        "an integer >= 0 (ms)",
    ),
    "message.timestamp.before.max.ms": (_LONG_MAX, _int_at_least(0), "an integer >= 0 (ms)"),
    "message.timestamp.after.max.ms": (_LONG_MAX, _int_at_least(0), "an integer >= 0 (ms)"),
    "segment.ms": ("604800000", _int_at_least(1), "a positive integer"),
    "segment.bytes": ("1073741824", _int_between(14, _INT_MAX), "an integer >= 14 (int32)"),
    "min.insync.replicas": ("1", _int_between(1, _INT_MAX), "a positive integer (int32)"),
    "compression.type": (
        "producer",
        _one_of("producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"),
        "producer, uncompressed, gzip, snappy, lz4 or zstd",
    ),
    # Stored, not acted on (NOT_ACTED_ON says why); Kafka's defaults and ranges.
    "compression.gzip.level": (
        "-1",
        lambda v: _int_between(1, 9)(v) or v == "-1",
        "-1 (default) or an integer 1..9",
    ),
    "compression.lz4.level": ("9", _int_between(1, 17), "an integer 1..17"),
    "compression.zstd.level": ("3", _int_between(-131072, 22), "an integer -131072..22"),
    "file.delete.delay.ms": ("60000", _int_at_least(0), "an integer >= 0 (ms)"),
    "flush.messages": (_LONG_MAX, _int_at_least(1), "a positive integer"),
    "flush.ms": (_LONG_MAX, _int_at_least(0), "an integer >= 0 (ms)"),
    "follower.replication.throttled.replicas": (
        "",
        _throttled_replicas,
        "empty, * or partition:broker items separated by commas",
    ),
    "leader.replication.throttled.replicas": (
        "",
        _throttled_replicas,
        "empty, * or partition:broker items separated by commas",
    ),
    "index.interval.bytes": ("4096", _int_between(0, _INT_MAX), "an integer >= 0 (int32)"),
    "segment.index.bytes": ("10485760", _int_between(4, _INT_MAX), "an integer >= 4 (int32)"),
    "segment.jitter.ms": ("0", _int_at_least(0), "an integer >= 0 (ms)"),
    "preallocate": ("false", _boolean, "true or false"),
    "unclean.leader.election.enable": ("false", _boolean, "true or false"),
    "message.downconversion.enable": ("true", _boolean, "true or false"),
    "message.format.version": (
        "3.0-IV1",
        lambda v: bool(re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?(-IV[0-9]+)?", v)),
        "a Kafka version such as 3.0-IV1",
    ),
    "remote.storage.enable": ("false", _boolean, "true or false"),
    "remote.log.copy.disable": ("false", _boolean, "true or false"),
    "remote.log.delete.on.disable": ("false", _boolean, "true or false"),
    "local.retention.ms": ("-2", _int_at_least(-2), "an integer >= -2 (-2: retention.ms)"),
    "local.retention.bytes": (
        "-2",
        _int_at_least(-2),
        "an integer >= -2 (-2: retention.bytes)",
    ),
    REPLICA_ASSIGNMENT: (
        "",
        lambda v: v == "" or _assignment(v),
        "partition:broker|broker,... for partitions 0..n-1 (set by CreateTopics)",
    ),
}

# Kafka's ConfigDef type of each key, by the names of DescribeConfigsResponse's ConfigType.
TOPIC_CONFIG_TYPES: dict[str, str] = {
    "retention.ms": "LONG",
    "retention.bytes": "LONG",
    "cleanup.policy": "LIST",
    "delete.retention.ms": "LONG",
    "min.compaction.lag.ms": "LONG",
    "max.compaction.lag.ms": "LONG",
    "min.cleanable.dirty.ratio": "DOUBLE",
    "max.message.bytes": "INT",
    "message.timestamp.type": "STRING",
    "message.timestamp.difference.max.ms": "LONG",
    "message.timestamp.before.max.ms": "LONG",
    "message.timestamp.after.max.ms": "LONG",
    "segment.ms": "LONG",
    "segment.bytes": "INT",
    "min.insync.replicas": "INT",
    "compression.type": "STRING",
    "compression.gzip.level": "INT",
    "compression.lz4.level": "INT",
    "compression.zstd.level": "INT",
    "file.delete.delay.ms": "LONG",
    "flush.messages": "LONG",
    "flush.ms": "LONG",
    "follower.replication.throttled.replicas": "LIST",
    "leader.replication.throttled.replicas": "LIST",
    "index.interval.bytes": "INT",
    "segment.index.bytes": "INT",
    "segment.jitter.ms": "LONG",
    "preallocate": "BOOLEAN",
    "unclean.leader.election.enable": "BOOLEAN",
    "message.downconversion.enable": "BOOLEAN",
    "message.format.version": "STRING",
    "remote.storage.enable": "BOOLEAN",
    "remote.log.copy.disable": "BOOLEAN",
    "remote.log.delete.on.disable": "BOOLEAN",
    "local.retention.ms": "LONG",
    "local.retention.bytes": "LONG",
    REPLICA_ASSIGNMENT: "STRING",
}

_REPLICATION = "object storage replicates every object, there are no broker replicas"
_NO_FILES = "the log is in object storage, there are no local log files"
_TIERED = "the whole log is in object storage already (there is no local tier)"

# key -> why StreamHouse stores the key but does not act on it
NOT_ACTED_ON: dict[str, str] = {
    "min.insync.replicas": f"{_REPLICATION}; an acknowledged record is in the object store",
    "compression.type": "batches are stored as the producer compressed them",
    "compression.gzip.level": "batches are stored as the producer compressed them",
    "compression.lz4.level": "batches are stored as the producer compressed them",
    "compression.zstd.level": "batches are stored as the producer compressed them",
    "file.delete.delay.ms": (f"{_NO_FILES}; dead objects are deleted after lifecycle_grace_ms"),
    "flush.messages": f"{_NO_FILES}; a record is acknowledged once its object is durable",
    "flush.ms": f"{_NO_FILES}; a record is acknowledged once its object is durable",
    "follower.replication.throttled.replicas": _REPLICATION,
    "leader.replication.throttled.replicas": _REPLICATION,
    "index.interval.bytes": f"{_NO_FILES}; blocks are indexed in metadata",
    "segment.index.bytes": f"{_NO_FILES}; blocks are indexed in metadata",
    "segment.jitter.ms": "segments are sealed by the agent's flush interval",
    "preallocate": _NO_FILES,
    "unclean.leader.election.enable": f"{_REPLICATION}; any agent serves any partition",
    "message.downconversion.enable": "records are served in the format they were produced in",
    "message.format.version": "records are stored as RecordBatch v2",
    "remote.storage.enable": _TIERED,
    "remote.log.copy.disable": _TIERED,
    "remote.log.delete.on.disable": _TIERED,
    "local.retention.ms": _TIERED,
    "local.retention.bytes": _TIERED,
    REPLICA_ASSIGNMENT: _REPLICATION + "; the assignment is recorded as given",
}


def documentation(key: str) -> str:
    """What DescribeConfigs says of a key: its valid values, and whether StreamHouse acts on it."""
    spec = TOPIC_CONFIGS[key]
    why = NOT_ACTED_ON.get(key)
    if why is None:
        return f"Valid values: {spec[2]}."
    return f"Valid values: {spec[2]}. Stored but not acted on by StreamHouse: {why}."


def validate_topic_config(config: dict[str, str]) -> dict[str, str]:
    """A copy of the config when every key is known and every value valid.

    LIST values come back with the blanks around their items removed (`compact, delete` is
    stored as `compact,delete`, as Kafka parses it), so every reader can split on commas.
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        spec = TOPIC_CONFIGS.get(key)
        if spec is None:
            known = ", ".join(sorted(TOPIC_CONFIGS))
            raise TopicConfigError(f"unknown topic config {key!r}; known keys: {known}")
        if not isinstance(value, str) or not spec[1](value):
            raise TopicConfigError(f"topic config {key}={value!r} is invalid: use {spec[2]}")
        if TOPIC_CONFIG_TYPES[key] == "LIST" and value.strip():
            value = ",".join(item.strip() for item in value.split(","))
        out[key] = value
    return out


def effective_config(config: dict[str, str]) -> dict[str, str]:
    """Every known key with the topic's value or the default."""
    return {key: config.get(key, spec[0]) for key, spec in TOPIC_CONFIGS.items()}


def batch_rules(config: dict[str, str], max_batch_bytes: int) -> BatchRules:
    """The rules a topic's produced batches are validated against (``validate_batches``).

    A batch may take ``max_batch_bytes`` (the ingest setting), or less when the topic sets
    ``max.message.bytes``; one partition's batches in one request, and a batch's
    decompressed records, at most ``max_batch_bytes`` and ``segment.bytes``. An explicit
    ``message.timestamp.before.max.ms`` / ``after.max.ms`` wins over
    ``message.timestamp.difference.max.ms``, as in Kafka.
    """

    def value(key: str) -> int:
        return int(config.get(key, TOPIC_CONFIGS[key][0]))

    difference = config.get("message.timestamp.difference.max.ms")
    before = config.get("message.timestamp.before.max.ms", difference)
    after = config.get("message.timestamp.after.max.ms", difference)
    records_limit = min(max_batch_bytes, value("segment.bytes"))
    return BatchRules(
        max_message_bytes=min(max_batch_bytes, int(config.get("max.message.bytes", _LONG_MAX))),
        max_records_bytes=records_limit,
        max_inflated_bytes=records_limit,
        log_append_time=config.get("message.timestamp.type") == "LogAppendTime",
        timestamp_before_ms=int(before) if before is not None else 2**63 - 1,
        timestamp_after_ms=int(after) if after is not None else 2**63 - 1,
        key_required="compact" in config.get("cleanup.policy", "delete"),
    )
