"""Sans-I/O tests of the segmenter's seal policy (segmenter/policy.py): group commit with a
cost rule, the flush interval as the bound on waiting, the size cap, and the uploader's
state as its reports and restarts tell it."""

from __future__ import annotations

import pytest

from segmenter.policy import RATE_WINDOW_S, SealPolicy
from streamhouse.frames import UploadProgress

MS = 1_000_000
S = 1_000_000_000
EPOCH = 77
FLUSH = 50 * MS
TARGET = 2 * 1024 * 1024
COST_RATE = 10_000_000
MAX_SEGMENT = 8 * 1024 * 1024
T0 = 1_000 * S  # an arbitrary monotonic start


def policy() -> SealPolicy:
    return SealPolicy(EPOCH, FLUSH, MAX_SEGMENT, TARGET, COST_RATE)


def steady(p: SealPolicy, rate: float, until_ns: int, step_ns: int = MS) -> None:
    """Feeds the rate estimate `rate` bytes/s for several windows, ending at `until_ns`."""
    start = until_ns - int(8 * RATE_WINDOW_S * S)
    for t in range(start, until_ns + 1, step_ns):
        p.observe(t, int(rate * step_ns / S))


def report(stored: int, done: int, epoch: int = EPOCH) -> UploadProgress:
    return UploadProgress(epoch, stored, done)


def test_empty_buffer_waits_for_data() -> None:
    d = policy().decide(T0, 0, None)
    assert not d.seal
    assert d.until_ns is None and d.until_bytes == 1


def test_idle_uploader_at_rest_seals_a_produce_at_once() -> None:
    p = policy()
    p.observe(T0, 120)
    d = p.decide(T0, 120, T0)
    assert d.seal and d.reason == "uploader idle"


def test_busy_uploader_accumulates_until_its_report() -> None:
    p = policy()
    p.observe(T0, 100)
    p.sealed(0)  # segment 0 is uploading
    assert p.uploading == 1 and not p.idle
    d = p.decide(T0 + MS, 300, T0 + MS)
    assert not d.seal and d.reason == "uploader busy"
    assert d.until_ns == T0 + MS + FLUSH  # the flush interval still bounds the wait
    assert d.until_bytes is None  # more data changes nothing until the uploader reports
    p.progress(report(0, -1))  # stored; its commit may still run
    assert p.idle
    assert p.decide(T0 + 2 * MS, 300, T0 + MS).seal


def test_unacknowledged_segments_also_make_the_uploader_busy() -> None:
    p = policy()
    for sequence in range(2):
        p.sealed(sequence)
    p.progress(report(1, -1))  # both stored, none acknowledged
    assert p.uploading == 0 and p.unacked == 2 and not p.idle
    assert not p.decide(T0, 100, T0).seal
    p.progress(report(1, 0))  # one commit may overlap the next PUT
    assert p.idle and p.decide(T0, 100, T0).seal


def test_two_uploads_in_flight_when_configured() -> None:
    p = SealPolicy(EPOCH, FLUSH, MAX_SEGMENT, TARGET, COST_RATE, max_uploading=2)
    p.sealed(0)
    assert p.idle and p.decide(T0, 100, T0).seal  # one uploading: a second may start
    p.sealed(1)
    assert not p.idle and not p.decide(T0, 100, T0).seal
    p.progress(report(0, 0))
    assert p.idle


def test_flush_interval_bounds_the_wait_whatever_the_uploader_says() -> None:
    p = policy()
    p.sealed(0)  # busy, and it never reports
    assert not p.decide(T0 + FLUSH - 1, 10, T0).seal
    d = p.decide(T0 + FLUSH, 10, T0)
    assert d.seal and d.reason == "flush interval"


def test_max_segment_bytes_seals_at_once_even_when_busy() -> None:
    p = policy()
    p.sealed(0)
    d = p.decide(T0, MAX_SEGMENT, T0)
    assert d.seal and d.reason == "full"


def test_cost_rule_at_high_rate_keeps_objects_at_the_target_size() -> None:
    p = policy()
    rate = 100_000_000  # 100 MB/s, well above the cost rate
    steady(p, rate, T0)
    assert p.rate(T0) == pytest.approx(rate, rel=0.01)
    assert p.min_object_bytes(p.rate(T0)) == TARGET
    d = p.decide(T0, TARGET // 2, T0 - 10 * MS)
    assert not d.seal and d.reason == "cost rule"
    assert d.until_bytes == TARGET  # the intake wakes the sealer at the target size
    assert d.until_ns == T0 - 10 * MS + FLUSH
    assert p.decide(T0, TARGET, T0 - 10 * MS).seal


def test_cost_rule_at_the_cost_rate_waits_a_flush_interval() -> None:
    p = policy()
    steady(p, COST_RATE, T0)
    need = p.min_object_bytes(p.rate(T0))
    # A flush interval's worth of data at that rate: the early seal gains nothing there.
    assert need == pytest.approx(COST_RATE * FLUSH / S, rel=0.02)
    assert not p.decide(T0, int(need * 0.9), T0 - 40 * MS).seal


def test_cost_rule_gap_shrinks_in_proportion_below_the_cost_rate() -> None:
    p = policy()
    gaps = []
    for rate in (100_000, 1_000_000, 5_000_000):
        gap_s = p.min_object_bytes(rate) / rate
        gaps.append(gap_s)
        assert gap_s == pytest.approx(FLUSH / S * rate / COST_RATE)
    assert gaps[0] < gaps[1] < gaps[2] < FLUSH / S
    # 1,000 records/s of 100 bytes: under a millisecond's worth, i.e. seal when idle.
    assert p.min_object_bytes(100_000) < 100


def test_rate_estimate_decays_when_producing_stops() -> None:
    p = policy()
    steady(p, 50_000_000, T0)
    assert p.rate(T0) == pytest.approx(50_000_000, rel=0.01)
    later = T0 + int(10 * RATE_WINDOW_S * S)
    assert p.rate(later) < 50_000_000 * 0.01
    # After a pause, a lone produce is sealed at once again.
    p.observe(later, 200)
    assert p.decide(later, 200, later).seal


def test_reports_of_another_segmenter_run_are_ignored() -> None:
    p = policy()
    p.sealed(0)
    p.progress(report(5, 5, epoch=EPOCH - 1))  # the previous run's segments
    assert p.uploading == 1


def test_reports_never_count_more_than_was_sent() -> None:
    p = policy()
    p.sealed(0)
    p.progress(report(9, 9))  # a stale or bogus mark past what this run sealed
    p.sealed(1)
    assert p.uploading == 1 and p.unacked == 1


def test_marks_only_move_forward() -> None:
    p = policy()
    for sequence in range(3):
        p.sealed(sequence)
    p.progress(report(2, 1))
    p.progress(report(0, 0))  # an older report read late
    assert (p.stored_through, p.done_through) == (2, 1)


def test_uploader_restart_ends_everything_in_flight() -> None:
    p = policy()
    for sequence in range(4):
        p.sealed(sequence)
    assert not p.idle
    p.uploader_restarted()
    assert p.uploading == 0 and p.unacked == 0 and p.idle
    # Not an idle flood: the next segment sealed makes it busy again.
    p.sealed(4)
    assert p.uploading == 1 and not p.idle


def test_refusals_do_not_count_as_uploads() -> None:
    p = policy()
    p.sealed(-1)
    assert p.idle and p.sent_through == -1


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        SealPolicy(EPOCH, 0, MAX_SEGMENT, TARGET, COST_RATE)
    with pytest.raises(ValueError, match="cost rate"):
        SealPolicy(EPOCH, FLUSH, MAX_SEGMENT, TARGET, 0)
    with pytest.raises(ValueError, match="max uploading"):
        SealPolicy(EPOCH, FLUSH, MAX_SEGMENT, TARGET, COST_RATE, max_uploading=0)


def test_no_early_seal_in_the_middle_of_a_request() -> None:
    p = policy()
    p.observe(T0, 300)
    p.in_request = True  # more frames of the request follow
    d = p.decide(T0, 300, T0)
    assert not d.seal and d.reason == "request in progress"
    assert d.until_ns == T0 + FLUSH
    assert p.decide(T0 + FLUSH, 300, T0).seal  # the flush interval still bounds it
    p.in_request = False
    assert p.decide(T0, 300, T0).seal


def test_settings_refuse_more_seal_uploads_than_upload_slots() -> None:
    from streamhouse.config import ConfigError, load_settings

    env = {"STREAMHOUSE_SEAL_UPLOADS_IN_FLIGHT": "5", "STREAMHOUSE_UPLOAD_CONCURRENCY": "4"}
    with pytest.raises(ConfigError, match="SEAL_UPLOADS_IN_FLIGHT=5 must not exceed"):
        load_settings(env)
    with pytest.raises(ConfigError, match="SEAL_TARGET_BYTES must be positive"):
        load_settings({"STREAMHOUSE_SEAL_TARGET_BYTES": "0"})
    assert load_settings({"STREAMHOUSE_SEAL_UPLOADS_IN_FLIGHT": "2"}).seal_uploads_in_flight == 2


def test_put_budget_paces_small_early_seals_of_a_trickle() -> None:
    p = SealPolicy(EPOCH, FLUSH, MAX_SEGMENT, TARGET, COST_RATE, max_small_seals_per_second=50)
    steady(p, 100_000, T0)  # a trickle: the cost rule asks for almost nothing
    p.sealed(0, T0)
    p.progress(report(0, 0))  # the uploader is idle again at once (a fast store)
    d = p.decide(T0 + 5 * MS, 200, T0 + 4 * MS)
    assert not d.seal and d.reason == "PUT budget"
    assert d.until_ns == T0 + 20 * MS  # 1/50 s after the previous seal
    assert d.until_bytes == TARGET  # a target-sized object is never held back
    assert p.decide(T0 + 20 * MS, 200, T0 + 4 * MS).seal


def test_put_budget_never_delays_a_produce_after_a_quiet_spell() -> None:
    p = policy()
    p.observe(T0, 120)
    p.sealed(0, T0)
    p.progress(report(0, 0))
    later = T0 + 30 * MS  # more than the budget's gap since the last seal
    p.observe(later, 120)
    d = p.decide(later, 120, later)
    assert d.seal and d.reason == "uploader idle"


def test_put_budget_does_not_hold_back_target_sized_objects() -> None:
    p = policy()
    steady(p, 50_000_000, T0)
    p.sealed(0, T0)
    p.progress(report(0, 0))
    d = p.decide(T0 + 1 * MS, TARGET, T0)
    assert d.seal and d.reason == "uploader idle"


def test_put_budget_bound_by_the_flush_interval() -> None:
    p = SealPolicy(EPOCH, FLUSH, MAX_SEGMENT, TARGET, COST_RATE, max_small_seals_per_second=1)
    p.observe(T0, 120)
    p.sealed(0, T0)
    p.progress(report(0, 0))
    d = p.decide(T0 + 1 * MS, 120, T0 + 1 * MS)
    assert not d.seal and d.until_ns == T0 + 1 * MS + FLUSH  # flush interval comes first
    with pytest.raises(ValueError, match="seals per second"):
        SealPolicy(EPOCH, FLUSH, MAX_SEGMENT, TARGET, COST_RATE, max_small_seals_per_second=0)
