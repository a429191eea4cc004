"""The listener-limit settings: documented defaults, environment overrides, refusals."""

from __future__ import annotations

import pathlib

import pytest

from streamhouse.config import ConfigError, Settings, load_settings

MiB = 1024 * 1024
LIMITS = (
    "kafka_max_connections",
    "kafka_max_non_produce_request_bytes",
    "kafka_max_queued_request_bytes",
    "kafka_max_in_flight_requests",
    "kafka_max_in_flight_bytes",
    "kafka_send_buffer_bytes",
    "kafka_idle_timeout_ms",
    "slow_client_timeout_ms",
    "max_partitions_per_request",
    "grpc_max_message_bytes",
    "grpc_max_connections",
    "grpc_max_concurrent_streams",
    "grpc_max_concurrent_rpcs",
    "grpc_stream_max_in_flight",
    "grpc_idle_timeout_ms",
    "reader_max_fetches",
    "reader_max_waiting_fetches",
    "reader_max_wait_ms",
)


def test_defaults_suit_a_public_broker() -> None:
    s = Settings()
    assert s.kafka_idle_timeout_ms == 600_000  # Kafka's connections.max.idle.ms
    assert s.kafka_max_request_bytes == 100 * MiB  # Kafka's socket.request.max.bytes
    assert s.reader_max_waiting_fetches < s.reader_max_fetches
    assert s.grpc_message_limit == max(s.max_batch_bytes, s.max_fetch_bytes) + 4 * MiB


def test_every_limit_is_in_the_readme_with_its_default() -> None:
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    defaults = Settings()
    for name in LIMITS:
        row = f"| `STREAMHOUSE_{name.upper()}` | `{getattr(defaults, name)}` |"
        assert row in readme, f"README settings table lacks {row}"


def test_environment_overrides_and_explicit_grpc_limit() -> None:
    s = load_settings(
        {"STREAMHOUSE_KAFKA_MAX_CONNECTIONS": "7", "STREAMHOUSE_GRPC_MAX_MESSAGE_BYTES": "1_000"}
    )
    assert s.kafka_max_connections == 7
    assert s.grpc_message_limit == 1000


@pytest.mark.parametrize(
    "env, says",
    [
        ({"STREAMHOUSE_KAFKA_MAX_CONNECTIONS": "0"}, "KAFKA_MAX_CONNECTIONS must be positive"),
        ({"STREAMHOUSE_SLOW_CLIENT_TIMEOUT_MS": "-1"}, "SLOW_CLIENT_TIMEOUT_MS must be positive"),
        ({"STREAMHOUSE_GRPC_MAX_MESSAGE_BYTES": "-1"}, "GRPC_MAX_MESSAGE_BYTES must be >= 0"),
        (
            {"STREAMHOUSE_READER_MAX_FETCHES": "8", "STREAMHOUSE_READER_MAX_WAITING_FETCHES": "8"},
            "READER_MAX_WAITING_FETCHES must be >= 0 and below",
        ),
    ],
)
def test_out_of_range_limits_are_refused_by_name(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(env)
