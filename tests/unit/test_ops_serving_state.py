"""ServingState (ingest/serving.py): SERVING only after a probe passed and while uploads do
not keep failing; back when a segment is uploaded or a probe passes with no new failures."""

from __future__ import annotations

import pytest

from ingest.serving import ServingState


def test_not_serving_until_a_probe_passes() -> None:
    state = ServingState()
    assert not state.verdict().serving
    assert "has not passed its probe" in state.verdict().reason
    failed = state.probed("object store s3://x is not usable: refused")
    assert not failed.serving and "refused" in failed.reason
    assert state.probed(None).serving


def test_uploads_that_keep_failing_stop_serving_until_one_succeeds() -> None:
    state = ServingState(upload_failures=3)
    state.probed(None)
    # Failures from before this ingest started do not count.
    assert state.counted(put_errors=10, uploaded=5).serving
    assert state.counted(put_errors=12, uploaded=5).serving
    verdict = state.counted(put_errors=13, uploaded=5)
    assert not verdict.serving and "3 failed PUTs" in verdict.reason
    # A probe while PUTs are still failing does not bring it back.
    assert not state.probed(None).serving
    assert not state.counted(put_errors=14, uploaded=5).serving
    assert not state.probed(None).serving
    # A segment stored ends it.
    assert state.counted(put_errors=14, uploaded=6).serving
    assert state.counted(put_errors=16, uploaded=6).serving


def test_a_passing_probe_with_no_new_failures_ends_upload_failures() -> None:
    state = ServingState(upload_failures=2)
    state.probed(None)
    state.counted(0, 0)
    assert not state.counted(2, 0).serving
    assert not state.counted(2, 0).serving  # nothing new failed, but no probe yet
    assert state.probed(None).serving
    # The failures before the probe are forgiven: two more are needed to stop again.
    assert state.counted(3, 0).serving
    assert not state.counted(4, 0).serving


def test_a_failing_probe_wins_over_uploads() -> None:
    state = ServingState()
    state.probed(None)
    state.counted(0, 0)
    verdict = state.probed("object store down")
    assert verdict == state.verdict() and verdict.reason == "object store down"
    assert not state.counted(0, 1).serving


def test_bad_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ServingState(upload_failures=0)
