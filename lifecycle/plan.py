"""The lifecycle's decisions, free of I/O: which listed objects are orphans, how deletes are
split into requests, when the delete budget allows the next request, how long to back off.

Everything here takes the clock as an argument, so the tests drive it with plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from streamhouse.objectstore import ObjectInfo

__all__ = [
    "SEGMENT_PREFIX",
    "Backoff",
    "ByteBudget",
    "DeleteBudget",
    "RateBudget",
    "chunk_size",
    "chunks",
    "orphan_candidates",
    "orphans",
]

#: Every segment object the uploader writes lives under this prefix (uploader.new_segment_key).
SEGMENT_PREFIX = "segments/"

#: S3 DeleteObjects takes at most 1,000 keys a request.
MAX_KEYS_PER_DELETE = 1000


def orphan_candidates(page: Iterable[ObjectInfo], now_ms: int, grace_ms: int) -> list[str]:
    """Keys of the listed objects old enough to be orphans: last written before
    `now_ms - grace_ms`. A younger object may belong to a PUT whose commit is still on its
    way, so it is never a candidate (and metadata is not even asked about it)."""
    cutoff = now_ms - grace_ms
    return [info.key for info in page if info.last_modified_ms < cutoff]


def orphans(candidates: Sequence[str], known: set[str]) -> list[str]:
    """The candidates that no segment row knows: objects nobody can ever read."""
    return [key for key in candidates if key not in known]


def chunk_size(deletes_per_second: int, concurrency: int) -> int:
    """Keys per delete request: the budget spread over the concurrent requests, so one
    request never takes more than its share of a second's budget (at least 1, at most
    S3's 1,000)."""
    return max(1, min(MAX_KEYS_PER_DELETE, deletes_per_second // max(1, concurrency)))


def chunks(keys: Sequence[str], size: int) -> list[list[str]]:
    """`keys` in order, in lists of at most `size`."""
    if size <= 0:
        raise ValueError(f"chunk size {size} must be positive")
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


class RateBudget:
    """At most `per_second` units (deleted objects, bytes) per second, on average, from the
    first request.

    Each reservation of n units occupies n / per_second seconds of a schedule; a request
    starts when the ones reserved before it are paid for. `reserve` returns how long the
    caller waits before sending its request (0 for the first one, so a small pass is not
    delayed at all)."""

    __slots__ = ("per_second", "_paid_until")

    #: What the budget counts, for error messages.
    unit = "units"

    def __init__(self, per_second: int) -> None:
        if per_second <= 0:
            raise ValueError(f"{self.unit} per second {per_second} must be positive")
        self.per_second = per_second
        self._paid_until = float("-inf")

    def reserve(self, count: int, now_s: float) -> float:
        """Books `count` units; returns the seconds to wait from `now_s` before sending."""
        if count < 0:
            raise ValueError(f"cannot reserve {count} {self.unit}")
        start = max(now_s, self._paid_until)
        self._paid_until = start + count / self.per_second
        return start - now_s


class DeleteBudget(RateBudget):
    """At most `per_second` objects deleted per second (lifecycle_deletes_per_second)."""

    __slots__ = ()
    unit = "deletes"


class ByteBudget(RateBudget):
    """At most `per_second` bytes read and written per second by the rewriting steps
    (lifecycle_rewrite_bytes_per_second)."""

    __slots__ = ()
    unit = "bytes"


class Backoff:
    """Pause after a failed pass: `initial_s`, doubling per failure in a row, at most
    `max_s`; a successful pass resets it."""

    __slots__ = ("initial_s", "max_s", "_failures")

    def __init__(self, initial_s: float, max_s: float) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"backoff needs 0 < initial ({initial_s}) <= max ({max_s})")
        self.initial_s = initial_s
        self.max_s = max_s
        self._failures = 0

    def failed(self) -> float:
        """Counts a failure; returns how long to pause before the next pass."""
        delay = min(self.max_s, self.initial_s * 2 ** min(self._failures, 30))
        self._failures += 1
        return delay

    def succeeded(self) -> None:
        self._failures = 0
