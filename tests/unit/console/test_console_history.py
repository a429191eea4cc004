"""console/history.py: sampled series, counter rates, the one-hour horizon."""

from __future__ import annotations

import pytest

from console.history import History


def test_rate_over_the_window() -> None:
    h = History(keep_s=3600)
    for i in range(13):  # a counter growing 50 per 5 s = 10/s
        h.add(1000.0 + 5 * i, {"records:a": 50.0 * i})
    assert h.rate("records:a") == pytest.approx(10.0)
    assert h.rate_points("records:a")[-1] == (1060.0, pytest.approx(10.0))
    assert h.names("records") == ["a"]


def test_rate_unknown_until_two_points_and_never_negative() -> None:
    h = History()
    h.add(0.0, {"records:a": 100.0})
    assert h.rate("records:a") is None
    h.add(10.0, {"records:a": 20.0})  # topic recreated: the counter fell
    assert h.rate("records:a") == 0.0
    h.add(20.0, {"records:a": 120.0})
    assert h.rate("records:a", window_s=10) == pytest.approx(10.0)


def test_old_points_and_gone_series_are_dropped() -> None:
    h = History(keep_s=60)
    h.add(0.0, {"lag:g": 5.0, "lag:old": 1.0})
    h.add(30.0, {"lag:g": 7.0})
    h.add(90.0, {"lag:g": 9.0})
    assert h.points("lag:g") == [(30.0, 7.0), (90.0, 9.0)]
    assert h.names("lag") == ["g"]
    assert h.latest("lag:old") is None


def test_out_of_order_samples_are_ignored() -> None:
    h = History()
    h.add(10.0, {"lag:g": 1.0})
    h.add(5.0, {"lag:g": 2.0})
    assert h.points("lag:g") == [(10.0, 1.0)]


def test_keep_must_be_positive() -> None:
    with pytest.raises(ValueError, match="keep_s"):
        History(keep_s=0)
