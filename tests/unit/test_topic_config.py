"""Topic configuration: known keys, defaults, and validation messages."""

from __future__ import annotations

import pytest

from streamhouse.topic_config import (
    TOPIC_CONFIGS,
    TopicConfigError,
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
        ("max.message.bytes", "1"),
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
        ("cleanup.policy", "Delete", "delete, compact or compact,delete"),
        ("cleanup.policy", "compact, delete", "delete, compact or compact,delete"),
        ("cleanup.policy", "", "delete, compact or compact,delete"),
        ("max.message.bytes", "0", "a positive integer"),
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
