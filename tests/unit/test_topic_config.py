"""Topic configuration: known keys, defaults, and validation messages."""

from __future__ import annotations

import json

import pytest

from lifecycle.keyplan import is_compacted
from metadata.store import retention_rules
from streamhouse.topic_config import (
    NOT_ACTED_ON,
    TOPIC_CONFIG_TYPES,
    TOPIC_CONFIGS,
    TopicConfigError,
    batch_rules,
    documentation,
    effective_config,
    validate_topic_config,
)

DEFAULTS = {
    "retention.ms": "604800000",
    "retention.bytes": "-1",
    "cleanup.policy": "delete",
    "delete.retention.ms": "86400000",
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": "9223372036854775807",
    "min.cleanable.dirty.ratio": "0.5",
    "max.message.bytes": "1048588",
    "message.timestamp.type": "CreateTime",
    "message.timestamp.difference.max.ms": "9223372036854775807",
    "message.timestamp.before.max.ms": "9223372036854775807",
    "message.timestamp.after.max.ms": "9223372036854775807",
    "segment.ms": "604800000",
    "segment.bytes": "1073741824",
    "min.insync.replicas": "1",
    "compression.type": "producer",
    "compression.gzip.level": "-1",
    "compression.lz4.level": "9",
    "compression.zstd.level": "3",
    "file.delete.delay.ms": "60000",
    "flush.messages": "9223372036854775807",
    "flush.ms": "9223372036854775807",
    "follower.replication.throttled.replicas": "",
    "leader.replication.throttled.replicas": "",
    "index.interval.bytes": "4096",
    "segment.index.bytes": "10485760",
    "segment.jitter.ms": "0",
    "preallocate": "false",
    "unclean.leader.election.enable": "false",
    "message.downconversion.enable": "true",
    "message.format.version": "3.0-IV1",
    "remote.storage.enable": "false",
    "remote.log.copy.disable": "false",
    "remote.log.delete.on.disable": "false",
    "local.retention.ms": "-2",
    "local.retention.bytes": "-2",
    "streamhouse.replica.assignment": "",
}


def test_known_keys_and_defaults() -> None:
    """The accepted keys and their Kafka defaults."""
    assert {k: spec[0] for k, spec in TOPIC_CONFIGS.items()} == DEFAULTS


def test_every_default_is_valid() -> None:
    """Each default passes its own validator."""
    assert validate_topic_config(dict(DEFAULTS)) == DEFAULTS


def test_empty_config_is_valid() -> None:
    assert validate_topic_config({}) == {}


def test_validate_returns_a_copy() -> None:
    """The result equals the input but is a new dict."""
    config = {"retention.ms": "1000"}
    out = validate_topic_config(config)
    assert out == config
    assert out is not config
    out["retention.ms"] = "5"
    assert config["retention.ms"] == "1000"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("retention.ms", "-1"),
        ("retention.ms", "0"),
        ("retention.ms", "86400000"),
        ("retention.bytes", "-1"),
        ("retention.bytes", "1073741824"),
        ("cleanup.policy", "delete"),
        ("cleanup.policy", "compact"),
        ("cleanup.policy", "compact,delete"),
        ("cleanup.policy", "delete,compact"),
        ("cleanup.policy", ""),  # Kafka 4.x: neither deleted nor compacted
        ("max.message.bytes", "0"),
        ("max.message.bytes", "1"),
        ("file.delete.delay.ms", "0"),
        ("file.delete.delay.ms", "120000"),
        ("flush.messages", "1"),
        ("preallocate", "true"),
        ("unclean.leader.election.enable", "false"),
        ("compression.gzip.level", "-1"),
        ("compression.gzip.level", "9"),
        ("compression.zstd.level", "-5"),
        ("follower.replication.throttled.replicas", "*"),
        ("leader.replication.throttled.replicas", "0:1,1:2"),
        ("local.retention.ms", "-2"),
        ("message.format.version", "2.8-IV1"),
        ("streamhouse.replica.assignment", "0:1|2,1:2|0"),
        ("message.timestamp.type", "CreateTime"),
        ("message.timestamp.type", "LogAppendTime"),
        ("segment.ms", "1"),
        ("segment.bytes", "14"),
        ("min.insync.replicas", "1"),
        ("min.insync.replicas", "3"),
        ("compression.type", "producer"),
        ("compression.type", "uncompressed"),
        ("compression.type", "gzip"),
        ("compression.type", "snappy"),
        ("compression.type", "lz4"),
        ("compression.type", "zstd"),
    ],
)
def test_valid_values(key: str, value: str) -> None:
    assert validate_topic_config({key: value}) == {key: value}


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("retention.ms", "-2", "an integer >= -1"),
        ("retention.ms", "forever", "an integer >= -1"),
        ("retention.ms", "", "an integer >= -1"),
        ("retention.ms", "1.5", "an integer >= -1"),
        ("retention.bytes", "-5", "an integer >= -1"),
        ("cleanup.policy", "Delete", "delete, compact, compact,delete or empty"),
        ("cleanup.policy", "delete,", "delete, compact, compact,delete or empty"),
        ("cleanup.policy", "delete,purge", "delete, compact, compact,delete or empty"),
        ("max.message.bytes", "-1", "an integer >= 0 (int32)"),
        ("max.message.bytes", "2147483648", "an integer >= 0 (int32)"),
        ("file.delete.delay.ms", "-1", "an integer >= 0"),
        ("flush.messages", "0", "a positive integer"),
        ("preallocate", "yes", "true or false"),
        ("compression.gzip.level", "0", "-1 (default) or an integer 1..9"),
        ("compression.lz4.level", "18", "an integer 1..17"),
        ("follower.replication.throttled.replicas", "0-1", "empty, * or partition:broker"),
        ("local.retention.bytes", "-3", "an integer >= -2"),
        ("streamhouse.replica.assignment", "1:0", "partition:broker|broker,..."),
        ("streamhouse.replica.assignment", "0:0,0:1", "partition:broker|broker,..."),
        ("message.timestamp.type", "createtime", "CreateTime or LogAppendTime"),
        ("segment.ms", "0", "a positive integer"),
        ("segment.bytes", "13", "an integer >= 14"),
        ("min.insync.replicas", "0", "a positive integer"),
        ("compression.type", "brotli", "producer, uncompressed, gzip, snappy, lz4 or zstd"),
        ("compression.type", "none", "producer, uncompressed, gzip, snappy, lz4 or zstd"),
    ],
)
def test_invalid_values_name_key_value_and_rule(key: str, value: str, hint: str) -> None:
    """An invalid value is refused with the key, the value and what would be valid."""
    with pytest.raises(TopicConfigError) as exc:
        validate_topic_config({key: value})
    assert str(exc.value).startswith(f"topic config {key}={value!r} is invalid: use {hint}")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("retention.ms", "1_000"),  # Python int() syntax, not Kafka's (Long.parseLong)
        ("segment.bytes", "1_073_741_824"),
        ("retention.ms", "9223372036854775808"),  # beyond a Java long
    ],
)
def test_integers_must_be_valid_kafka_longs(key: str, value: str) -> None:
    """Integer configs accept only what Kafka accepts for a LONG (no digit separators, within
    int64): the value is stored verbatim and handed back to Kafka clients."""
    with pytest.raises(TopicConfigError):
        validate_topic_config({key: value})


def test_unknown_key_lists_known_keys() -> None:
    """A typo is refused, and the message lists every known key in order."""
    with pytest.raises(TopicConfigError) as exc:
        validate_topic_config({"retention.ms": "1", "retention.msec": "1"})
    message = str(exc.value)
    assert message.startswith("unknown topic config 'retention.msec'; known keys: ")
    assert message.endswith(", ".join(sorted(TOPIC_CONFIGS)))


def test_all_keys_are_checked() -> None:
    """One bad key among good ones is enough to refuse the whole config."""
    with pytest.raises(TopicConfigError, match="segment.bytes"):
        validate_topic_config(
            {"retention.ms": "1", "segment.bytes": "1", "cleanup.policy": "delete"}
        )


def test_effective_config_fills_defaults() -> None:
    """Every known key appears: the topic's value where set, the default otherwise."""
    eff = effective_config({"retention.ms": "1000", "cleanup.policy": "compact"})
    assert eff == {**DEFAULTS, "retention.ms": "1000", "cleanup.policy": "compact"}
    assert list(eff) == list(TOPIC_CONFIGS)


def test_effective_config_of_empty_is_defaults() -> None:
    assert effective_config({}) == DEFAULTS


def test_effective_config_drops_unknown_keys() -> None:
    """Keys that are not topic configs are not reported."""
    assert effective_config({"foo": "bar"}) == DEFAULTS


def test_lists_are_stored_without_blanks() -> None:
    """`compact, delete` is what Kafka accepts; it is stored as `compact,delete` so every
    reader that splits on commas sees both policies."""
    assert validate_topic_config({"cleanup.policy": " compact, delete "}) == {
        "cleanup.policy": "compact,delete"
    }
    assert validate_topic_config({"cleanup.policy": ""}) == {"cleanup.policy": ""}


def test_booleans_are_case_insensitive_as_in_kafka() -> None:
    assert validate_topic_config({"preallocate": "TRUE"}) == {"preallocate": "TRUE"}


def test_non_string_values_are_refused() -> None:
    with pytest.raises(TopicConfigError, match="retention.ms=1000 is invalid"):
        validate_topic_config({"retention.ms": 1000})  # type: ignore[dict-item]


def test_every_key_has_a_kafka_type_and_documentation() -> None:
    """Each key is typed as Kafka types it, and its documentation says whether StreamHouse
    acts on it."""
    assert set(TOPIC_CONFIG_TYPES) == set(TOPIC_CONFIGS)
    assert set(TOPIC_CONFIG_TYPES.values()) <= {
        "LONG",
        "INT",
        "BOOLEAN",
        "DOUBLE",
        "LIST",
        "STRING",
    }
    assert set(NOT_ACTED_ON) < set(TOPIC_CONFIGS)
    for key in TOPIC_CONFIGS:
        text = documentation(key)
        assert text.startswith(f"Valid values: {TOPIC_CONFIGS[key][2]}.")
        assert ("not acted on" in text) == (key in NOT_ACTED_ON), key
    # What the lifecycle and produce path enforce is never marked as ignored.
    acted = {"retention.ms", "retention.bytes", "cleanup.policy", "segment.ms", "segment.bytes"}
    assert not acted & set(NOT_ACTED_ON)
    assert "file.delete.delay.ms" in NOT_ACTED_ON


def test_typed_values_parse_as_their_type() -> None:
    """Every default parses as its declared type (a reference independent of the validators)."""
    for key, (default, _, _) in TOPIC_CONFIGS.items():
        kind = TOPIC_CONFIG_TYPES[key]
        if kind == "LONG":
            assert -(2**63) <= int(default) < 2**63, key
        elif kind == "INT":
            assert -(2**31) <= int(default) < 2**31, key
        elif kind == "BOOLEAN":
            assert default in ("true", "false"), key
        elif kind == "DOUBLE":
            float(default)


@pytest.mark.parametrize(
    ("policy", "deletes", "compacts"),
    [
        ("", False, False),
        ("delete", True, False),
        ("compact", False, True),
        (" compact , delete", True, True),
    ],
)
def test_what_the_lifecycle_does_with_each_policy(
    policy: str, deletes: bool, compacts: bool
) -> None:
    """An empty cleanup.policy keeps everything: neither retention nor compaction applies (the
    rules the lifecycle reads, fed the stored value)."""
    stored = validate_topic_config({"cleanup.policy": policy, "retention.ms": "0"})
    rules = retention_rules([(1, json.dumps(stored))], now_ms=10_000)
    assert (rules[1].cutoff_ms is not None) is deletes
    assert is_compacted(stored) is compacts
    assert batch_rules(stored, 1 << 20).key_required is compacts
