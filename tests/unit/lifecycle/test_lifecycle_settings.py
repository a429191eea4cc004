"""Lifecycle settings: defaults, and values that would break reads or stall the lifecycle
refused at load with a message naming the setting."""

from __future__ import annotations

import pytest

from streamhouse.config import ConfigError, load_settings


def test_defaults() -> None:
    s = load_settings({})
    assert (
        s.lifecycle_enabled,
        s.lifecycle_interval_ms,
        s.lifecycle_grace_ms,
        s.lifecycle_delete_concurrency,
        s.lifecycle_deletes_per_second,
    ) == (True, 30_000, 600_000, 4, 200)


def test_environment_overrides() -> None:
    s = load_settings(
        {
            "STREAMHOUSE_LIFECYCLE_ENABLED": "false",
            "STREAMHOUSE_LIFECYCLE_INTERVAL_MS": "500",
            "STREAMHOUSE_LIFECYCLE_DELETES_PER_SECOND": "5",
        }
    )
    assert not s.lifecycle_enabled
    assert (s.lifecycle_interval_ms, s.lifecycle_deletes_per_second) == (500, 5)


@pytest.mark.parametrize(
    "name",
    [
        "LIFECYCLE_INTERVAL_MS",
        "LIFECYCLE_GRACE_MS",
        "LIFECYCLE_DELETE_CONCURRENCY",
        "LIFECYCLE_DELETES_PER_SECOND",
    ],
)
def test_non_positive_values_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"STREAMHOUSE_{name} must be positive"):
        load_settings({f"STREAMHOUSE_{name}": "0"})


@pytest.mark.parametrize(
    "longer",
    [
        "STREAMHOUSE_PRODUCE_TIMEOUT_MS",
        "STREAMHOUSE_READER_MAX_WAIT_MS",
        "STREAMHOUSE_STORE_TIMEOUT_MS",
    ],
)
def test_the_grace_period_must_outlast_every_request_in_flight(longer: str) -> None:
    env = {
        "STREAMHOUSE_PRODUCE_TIMEOUT_MS": "1000",
        "STREAMHOUSE_READER_MAX_WAIT_MS": "1000",
        "STREAMHOUSE_STORE_TIMEOUT_MS": "1000",
        "STREAMHOUSE_LIFECYCLE_GRACE_MS": "5000",
    }
    assert load_settings(env).lifecycle_grace_ms == 5000
    with pytest.raises(ConfigError, match="LIFECYCLE_GRACE_MS=5000 must exceed"):
        load_settings({**env, longer: "5000"})
