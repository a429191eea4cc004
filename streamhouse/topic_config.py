"""Topic configuration keys StreamHouse accepts, their defaults and validation.

Values are kept as strings (as Kafka does). Retention is stored now and enforced by the
lifecycle work; unknown keys are refused so typos do not pass silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from streamhouse.recordbatch import BatchRules


class TopicConfigError(ValueError):
    """A topic config key is unknown or its value is invalid; the message says which."""


_LONG = re.compile(r"-?[0-9]{1,19}")
_LONG_MAX = str(2**63 - 1)  # Kafka's Long.MAX_VALUE: no limit


def _int_at_least(low: int) -> Callable[[str], bool]:
    """A Kafka long (decimal digits only, within int64) of at least `low`."""

    def check(value: str) -> bool:
        return bool(_LONG.fullmatch(value)) and low <= int(value) < 2**63

    return check


_DECIMAL = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?([eE]-?[0-9]{1,3})?")


def _ratio(value: str) -> bool:
    """A Kafka double within [0, 1] (plain decimal notation)."""
    return bool(_DECIMAL.fullmatch(value)) and 0.0 <= float(value) <= 1.0


def _one_of(*choices: str) -> Callable[[str], bool]:
    return lambda value: value in choices


# key -> (default, validator, what a valid value is)
TOPIC_CONFIGS: dict[str, tuple[str, Callable[[str], bool], str]] = {
    "retention.ms": ("604800000", _int_at_least(-1), "an integer >= -1 (-1: keep forever)"),
    "retention.bytes": ("-1", _int_at_least(-1), "an integer >= -1 (-1: no size limit)"),
    "cleanup.policy": (
        "delete",
        _one_of("delete", "compact", "compact,delete", "delete,compact"),
        "delete, compact or compact,delete",
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
    "max.message.bytes": ("1048588", _int_at_least(1), "a positive integer"),
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
    "segment.bytes": ("1073741824", _int_at_least(14), "an integer >= 14"),
    "min.insync.replicas": ("1", _int_at_least(1), "a positive integer"),
    "compression.type": (
        "producer",
        _one_of("producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"),
        "producer, uncompressed, gzip, snappy, lz4 or zstd",
    ),
}


def validate_topic_config(config: dict[str, str]) -> dict[str, str]:
    """Returns the config unchanged when every key is known and every value valid."""
    for key, value in config.items():
        spec = TOPIC_CONFIGS.get(key)
        if spec is None:
            known = ", ".join(sorted(TOPIC_CONFIGS))
            raise TopicConfigError(f"unknown topic config {key!r}; known keys: {known}")
        if not spec[1](value):
            raise TopicConfigError(f"topic config {key}={value!r} is invalid: use {spec[2]}")
    return dict(config)


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
