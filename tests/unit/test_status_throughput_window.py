"""ingest/throughput.py's window: readings in, rates over the last minute out (no processes)."""

from __future__ import annotations

import json
import pathlib
import time

import pytest

from ingest.throughput import STALE_S, ThroughputWindow, read_state_file
from streamhouse.config import load_settings


def test_rates_are_growth_over_the_seconds_between_oldest_and_newest() -> None:
    window = ThroughputWindow(window_s=60)
    window.add(100.0, {"a": (10, 1000, 0, 0)})
    window.add(110.0, {"a": (60, 6000, 20, 2000), "b": (5, 50, 0, 0)})
    rates = window.rates()
    assert rates["window_s"] == 10.0
    assert rates["topics"] == {
        "a": {
            "produce_records_per_s": 5.0,
            "produce_bytes_per_s": 500.0,
            "fetch_records_per_s": 2.0,
            "fetch_bytes_per_s": 200.0,
        },
        # a topic first counted inside the window grew from 0
        "b": {
            "produce_records_per_s": 0.5,
            "produce_bytes_per_s": 5.0,
            "fetch_records_per_s": 0.0,
            "fetch_bytes_per_s": 0.0,
        },
    }
    assert rates["total"] == {
        "produce_records_per_s": 5.5,
        "produce_bytes_per_s": 505.0,
        "fetch_records_per_s": 2.0,
        "fetch_bytes_per_s": 200.0,
    }


def test_window_keeps_one_minute_and_the_reading_before_it() -> None:
    window = ThroughputWindow(window_s=60)
    window.add(0.0, {"a": (0, 0, 0, 0)})
    window.add(30.0, {"a": (300, 0, 0, 0)})  # 10/s for 30 s
    window.add(61.0, {"a": (300, 0, 0, 0)})  # then quiet
    assert window.rates()["window_s"] == 61.0  # 0.0 is still the reading before the minute
    window.add(95.0, {"a": (300, 0, 0, 0)})
    rates = window.rates()
    assert rates["window_s"] == 65.0  # from 30.0, the newest reading at or before 35.0
    assert rates["topics"] == {}  # nothing moved since 30.0
    assert rates["total"]["produce_records_per_s"] == 0.0


def test_one_reading_has_no_rates_and_time_never_goes_back() -> None:
    window = ThroughputWindow()
    assert window.rates() == {
        "window_s": 0.0,
        "total": {
            "produce_records_per_s": 0.0,
            "produce_bytes_per_s": 0.0,
            "fetch_records_per_s": 0.0,
            "fetch_bytes_per_s": 0.0,
        },
        "topics": {},
    }
    window.add(5.0, {"a": (1, 1, 1, 1)})
    assert window.rates()["topics"] == {}
    with pytest.raises(ValueError, match="back in time"):
        window.add(4.0, {})
    with pytest.raises(ValueError, match="positive"):
        ThroughputWindow(window_s=0)


def test_busiest_topics_by_bytes_are_kept_and_the_total_counts_all() -> None:
    window = ThroughputWindow(window_s=60, max_topics=2)
    window.add(0.0, {})
    window.add(1.0, {"small": (1, 10, 0, 0), "big": (1, 1000, 0, 0), "mid": (1, 0, 1, 100)})
    rates = window.rates()
    assert list(rates["topics"]) == ["big", "mid"]
    assert rates["total"]["produce_records_per_s"] == 3.0
    assert rates["total"]["produce_bytes_per_s"] == 1010.0


def test_state_file_older_than_stale_s_is_not_current(tmp_path: pathlib.Path) -> None:
    settings = load_settings({"STREAMHOUSE_DATA_DIR": str(tmp_path)})
    settings.run_dir.mkdir(parents=True)
    assert read_state_file(settings) is None  # none written yet
    path = settings.run_dir / "throughput.json"
    now_ms = int(time.time() * 1000)
    state = {"window_s": 4.0, "written_ms": now_ms, "pid": 1, "total": {}, "topics": {}}
    path.write_text(json.dumps(state))
    assert read_state_file(settings) == state
    path.write_text(json.dumps({**state, "written_ms": now_ms - int(STALE_S * 1000) - 1000}))
    assert read_state_file(settings) is None
    path.write_text("{not json")
    assert read_state_file(settings) is None
