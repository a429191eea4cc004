"""Topic configuration keys StreamHouse accepts, their defaults and validation.

Values are kept as strings (as Kafka does). Retention is stored now and enforced by the
lifecycle work; unknown keys are refused so typos do not pass silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class TopicConfigError(ValueError):
    """A topic config key is unknown or its value is invalid; the message says which."""


_LONG = re.compile(r"-?[0-9]{1,19}")


def _int_at_least(low: int) -> Callable[[str], bool]:
    """A Kafka long (decimal digits only, within int64) of at least `low`."""

    def check(value: str) -> bool:
        return bool(_LONG.fullmatch(value)) and low <= int(value) < 2**63

    return check


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
    "max.message.bytes": ("1048588", _int_at_least(1), "a positive integer"),
    "message.timestamp.type": (
        "CreateTime",
        _one_of("CreateTime", "LogAppendTime"),
        "CreateTime or LogAppendTime",
    ),
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
