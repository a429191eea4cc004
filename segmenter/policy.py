"""When to seal the buffered batches into a segment: group commit with a cost rule (sans-I/O).

A produce is acknowledged after its segment is sealed, PUT and committed, so the time a batch
waits in the buffer is part of every produce's latency; each seal is one PUT, so sealing
often costs object-store requests. The policy seals:

1. at once when the buffer reaches ``max_segment_bytes`` (the size cap; the builder also
   seals before a frame that would not fit the sealed ring);
2. at once when the oldest buffered batch has waited ``flush_interval`` (the upper bound on
   waiting, whatever else holds);
3. early, when the uploader is idle (group commit) and the buffer holds at least the cost
   rule's minimum object (rule 5). While an upload is in flight the batches accumulate, and
   the next segment takes everything that arrived meanwhile: the slower the store, the larger
   the objects, and at low load a produce waits only for its own upload.
4. Idle means fewer than ``max_uploading`` (``seal_uploads_in_flight``, default 1) of this
   segmenter's segments are still uploading and at most that many are unacknowledged (the
   uploader's reports, streamhouse/upload_progress.py). One PUT at a time leaves the next
   segment filling while its predecessor is stored, and the one more unacknowledged segment
   lets a PUT overlap its predecessor's metadata commit. A store with long PUT latency may
   want two PUTs at once (more, smaller objects; the cost rule still bounds them).
5. The cost rule: an early seal needs ``min_object_bytes(rate)`` buffered, where ``rate`` is
   the produce rate measured over about ``RATE_WINDOW_S`` (bytes taken from the produce ring,
   exponentially decayed)::

       min_object_bytes(rate) = min(target_bytes, rate * flush_interval * min(1, rate / cost_rate))

   The minimum gap between seals (that size over the rate) grows in proportion to the rate,
   from nothing at rest (an idle uploader takes a produce at once) to a whole flush interval
   at ``cost_rate`` (there objects are as large as with a plain flush timer); above it, the
   gap is what it takes to fill ``target_bytes``, so objects never get smaller than that and
   PUTs per GB stay at most about 1e9 / target_bytes at every sustained rate from
   ``cost_rate`` up, while the gap (and the latency) shrinks as the rate grows.
   Why: a PUT costs the same whatever its size, so at sustained rates the objects per GB are
   the bill, and cost_rate is where that bill is measured against the peer (issue 10:
   at least 10x fewer objects per GB from 10 MB/s). Below it the PUT count is bounded by the
   uploader's pace (one PUT at a time) and by the requests that arrive, and latency wins.
6. The PUT budget: an early seal of less than ``target_bytes`` comes at least
   ``1 / max_small_seals_per_second`` after the previous seal (``seal_max_puts_per_second``,
   default 50). Without it the PUT count below the cost rate is bounded only by the
   uploader's pace, which on a fast store (a local folder, a nearby MinIO) is hundreds of
   PUTs a second for a trickle of single-record requests; with it a constantly trickling
   agent makes at most that many PUTs a second (50/s is about $650 a month at S3's list
   price; 10/s about $130, for up to 100 ms more latency), a sporadic produce after a
   quiet spell still seals at once, and seals of ``target_bytes`` or more (sustained
   rates) are never held back by it.
7. Never early in the middle of a request: while the last frame taken says more frames of
   its request follow (``ProduceFrame.following``; ingest writes them back to back), the
   early seal waits for them, so a request's partitions share one segment and one PUT, and
   its acknowledgement waits for one upload, not two in a row.
8. The decision is a function of (now, buffered bytes, oldest batch's time, the uploader's
   state, the rate, the last seal's time): ``decide`` returns seal-now, or the time and
   buffered size at which to decide again; the process also decides again when an uploader
   report arrives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streamhouse.frames import UploadProgress

#: Time constant of the rate estimate, in seconds (rule 5).
RATE_WINDOW_S = 1.0


@dataclass(frozen=True, slots=True)
class Decision:
    """Seal now, or wait: until monotonic time ``until_ns`` (None: no deadline) or until the
    buffer holds ``until_bytes`` (None: no size makes a difference), whichever comes first,
    or until an uploader report; then decide again."""

    seal: bool
    reason: str
    until_ns: int | None = None
    until_bytes: int | None = None


class SealPolicy:
    """The seal timing of one segmenter run (``epoch``); see the module docstring."""

    def __init__(
        self,
        epoch: int,
        flush_interval_ns: int,
        max_segment_bytes: int,
        target_bytes: int,
        cost_rate: int,
        max_uploading: int = 1,
        max_small_seals_per_second: float = 50.0,
    ) -> None:
        if flush_interval_ns <= 0 or max_segment_bytes <= 0 or target_bytes <= 0:
            raise ValueError("flush interval, max segment bytes and target bytes must be > 0")
        if cost_rate <= 0:
            raise ValueError("cost rate must be > 0 (bytes per second)")
        if max_uploading < 1:
            raise ValueError("max uploading must be >= 1 (segments)")
        self.epoch = epoch
        self.flush_interval_ns = flush_interval_ns
        self.max_segment_bytes = max_segment_bytes
        self.target_bytes = target_bytes
        self.cost_rate = cost_rate
        self.max_uploading = max_uploading
        if max_small_seals_per_second <= 0:
            raise ValueError("max small seals per second must be > 0")
        self.small_seal_gap_ns = int(1e9 / max_small_seals_per_second)  # rule 6
        self.last_seal_ns: int | None = None
        self.sent_through = -1  # last sequence sealed and sent
        self.stored_through = -1  # every segment up to it is done uploading
        self.done_through = -1  # every segment up to it is acknowledged
        self.in_request = False  # more frames of the last frame's request follow (rule 7)
        self._decayed = 0.0  # bytes taken, each weighted exp(-age / RATE_WINDOW_S)
        self._decayed_ns = 0  # when _decayed was last brought up to date

    # -- the uploader's state --------------------------------------------------------------

    def sealed(self, sequence: int, now_ns: int | None = None) -> None:
        """Segment ``sequence`` was sent to the uploader (refusals, sequence -1, are not),
        sealed at monotonic ``now_ns`` (the PUT budget's clock, rule 6)."""
        if now_ns is not None and sequence >= 0:
            self.last_seal_ns = now_ns
        if sequence > self.sent_through:
            self.sent_through = sequence

    def progress(self, report: UploadProgress) -> None:
        """An uploader report; reports about another segmenter run are ignored."""
        if report.segmenter_epoch != self.epoch:
            return
        # Marks never pass what was sent: a report can name only segments this run sealed.
        sent = self.sent_through
        self.stored_through = max(self.stored_through, min(report.stored_through, sent))
        self.done_through = max(self.done_through, min(report.done_through, sent))

    def uploader_restarted(self) -> None:
        """The uploader restarted: every segment sent so far is gone from it."""
        self.stored_through = self.done_through = self.sent_through

    @property
    def uploading(self) -> int:
        return self.sent_through - self.stored_through

    @property
    def unacked(self) -> int:
        return self.sent_through - self.done_through

    @property
    def idle(self) -> bool:
        return self.uploading < self.max_uploading and self.unacked <= self.max_uploading

    # -- the produce rate ------------------------------------------------------------------

    def observe(self, now_ns: int, nbytes: int) -> None:
        """``nbytes`` were taken from the produce ring at ``now_ns``."""
        self._decayed = self._decay(now_ns) + nbytes
        self._decayed_ns = now_ns

    def _decay(self, now_ns: int) -> float:
        age_s = (now_ns - self._decayed_ns) / 1e9
        if age_s <= 0:
            return self._decayed
        return self._decayed * math.exp(-age_s / RATE_WINDOW_S)

    def rate(self, now_ns: int) -> float:
        """The produce rate in bytes per second (a steady rate R reads R after a few windows)."""
        return self._decay(now_ns) / RATE_WINDOW_S

    def min_object_bytes(self, rate: float) -> float:
        """The smallest segment an early seal may make at this rate (rule 5)."""
        flush_s = self.flush_interval_ns / 1e9
        return min(self.target_bytes, rate * flush_s * min(1.0, rate / self.cost_rate))

    # -- the decision ----------------------------------------------------------------------

    def decide(self, now_ns: int, buffered_bytes: int, oldest_ns: int | None) -> Decision:
        """Whether to seal what is buffered now (rules 1-3), else when to decide again."""
        if buffered_bytes <= 0 or oldest_ns is None:
            return Decision(False, "empty", None, 1)
        if buffered_bytes >= self.max_segment_bytes:
            return Decision(True, "full")
        flush_at = oldest_ns + self.flush_interval_ns
        if now_ns >= flush_at:
            return Decision(True, "flush interval")
        if not self.idle:
            return Decision(False, "uploader busy", flush_at)
        if self.in_request:
            return Decision(False, "request in progress", flush_at)
        need = self.min_object_bytes(self.rate(now_ns))
        if buffered_bytes < need:
            return Decision(False, "cost rule", flush_at, math.ceil(need))
        if buffered_bytes < self.target_bytes and self.last_seal_ns is not None:
            budget_at = self.last_seal_ns + self.small_seal_gap_ns
            if now_ns < budget_at:
                return Decision(False, "PUT budget", min(budget_at, flush_at), self.target_bytes)
        return Decision(True, "uploader idle")
