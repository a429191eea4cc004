"""The lifecycle's decisions, free of I/O: which listed objects are orphans, how deletes are
split into requests, when the delete and byte budgets allow the next request, how long to back
off, which objects are rewritten and how they are grouped.

Everything here takes the clock as an argument, so the tests drive it with plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from streamhouse.objectstore import ObjectInfo
from streamhouse.segment import FOOTER_SIZE, HEADER_SIZE, INDEX_ENTRY_SIZE
from streamhouse.topic_config import TOPIC_CONFIGS

if TYPE_CHECKING:
    from metadata.store import SegmentUsage

__all__ = [
    "SEGMENT_PREFIX",
    "Backoff",
    "BlockLimits",
    "ByteBudget",
    "MAX_GROUP_ROWS",
    "DeleteBudget",
    "RateBudget",
    "RewriteGroup",
    "RewriteGrouper",
    "block_limits",
    "is_partly_live",
    "is_small",
    "object_overhead",
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


# --------------------------------------------------------------------------- rewrites


def object_overhead(block_count: int) -> int:
    """Bytes of a segment object that are not blocks: header, index entries, footer."""
    return HEADER_SIZE + FOOTER_SIZE + INDEX_ENTRY_SIZE * block_count


def is_small(segment: SegmentUsage, now_ms: int, small_bytes: int, min_age_ms: int) -> bool:
    """A live object worth merging with others: smaller than `small_bytes` and committed at
    least `min_age_ms` before `now_ms` (the young tail is still read from the reader's cache
    and may soon have neighbours to merge with)."""
    return (
        segment.live_bytes > 0
        and segment.size < small_bytes
        and segment.created_ms <= now_ms - min_age_ms
    )


def is_partly_live(segment: SegmentUsage, min_live_percent: int) -> bool:
    """A live object kept alive by a few live blocks: its live bytes are below
    `min_live_percent` of its size, and rewriting its live blocks alone would make a smaller
    object (an object whose only "waste" is its own header, index and footer is not)."""
    if min_live_percent <= 0 or segment.live_bytes <= 0:
        return False
    waste = segment.size - segment.live_bytes - object_overhead(segment.block_count)
    return segment.live_bytes * 100 < min_live_percent * segment.size and waste > 0


class RewriteGroup(NamedTuple):
    """Objects whose live blocks are rewritten together into one new object."""

    segments: list[SegmentUsage]
    partly_live: int  # how many of them are partly live (the others are small)

    @property
    def live_bytes(self) -> int:
        return sum(s.live_bytes for s in self.segments)

    def selection(self, max_copy_per_object: int) -> list[SegmentUsage]:
        """The objects of the group worth rewriting together (empty: none).

        A group holding a partly-live object is rewritten whole (that object sheds its dead
        bytes). Otherwise two objects or more become one when that pays: at most
        `max_copy_per_object` live bytes copied per object done away with, or the largest
        holding no more live bytes than all the others together (size-tiered, as an LSM
        tree merges: each byte is copied about once per doubling of its object). When
        neither holds, the largest object is left out and the rest tried again: an object
        already merged is not copied again for every small newcomer, pass after pass (the
        newcomers merge among themselves, and later with it once they weigh as much)."""
        if self.partly_live > 0:
            return list(self.segments)
        chosen = sorted(self.segments, key=lambda s: s.live_bytes)
        while len(chosen) >= 2:
            live = sum(s.live_bytes for s in chosen)
            largest = chosen[-1].live_bytes
            if live <= (len(chosen) - 1) * max_copy_per_object or largest <= live - largest:
                return sorted(chosen, key=lambda s: s.segment_id)
            chosen.pop()
        return []


class BlockLimits(NamedTuple):
    """How much one merged block of a topic may hold (Kafka's segment granularity).

    Time retention drops whole blocks (a block goes when its newest record expires) and size
    retention counts whole blocks, so a block is to StreamHouse what a log segment is to
    Kafka: a record may outlive ``retention.ms`` by the record time its block spans, and
    ``retention.bytes`` is kept to within one block. Kafka bounds both by rolling a segment
    after ``segment.ms`` of record time or ``segment.bytes``; a merged block is bounded by the
    same two configs of its topic (and by the reader's block cap)."""

    max_bytes: int  # batch bytes (the raw length retention.bytes counts)
    max_span_ms: int  # newest max_timestamp minus oldest record timestamp

    def admits(self, size: int, oldest_ms: int, newest_ms: int) -> bool:
        """Whether a block of `size` batch bytes whose records' timestamps run from
        `oldest_ms` to `newest_ms` (-1 for either: no timestamps) keeps within the limits."""
        if size > self.max_bytes:
            return False
        return oldest_ms < 0 or newest_ms < 0 or newest_ms - oldest_ms <= self.max_span_ms


def block_limits(config: dict[str, str], cap_bytes: int) -> BlockLimits:
    """The limits of a merged block of a topic with this config (its values, or the defaults
    of :data:`streamhouse.topic_config.TOPIC_CONFIGS`): at most ``segment.bytes`` and
    `cap_bytes` of batch bytes, spanning at most ``segment.ms`` of record time."""

    def value(key: str) -> int:
        return int(config.get(key, TOPIC_CONFIGS[key][0]))

    return BlockLimits(min(cap_bytes, value("segment.bytes")), value("segment.ms"))


#: Most block rows one rewrite replaces (one metadata transaction; the store takes 100,000).
MAX_GROUP_ROWS = 20_000


class RewriteGrouper:
    """Groups rewrite candidates, fed in segment-id (commit) order, into groups of about
    `target_bytes` of live bytes and at most `max_rows` block rows: a group closes when the
    next candidate would take it past either (a candidate larger than that is a group of its
    own). Commit order keeps each partition's rows of a group consecutive, so they merge into
    few blocks."""

    __slots__ = ("target_bytes", "max_rows", "_segments", "_partly_live", "_live", "_rows")

    def __init__(self, target_bytes: int, max_rows: int = MAX_GROUP_ROWS) -> None:
        if target_bytes <= 0 or max_rows <= 0:
            raise ValueError(
                f"target object bytes {target_bytes} and rows {max_rows} must be positive"
            )
        self.target_bytes = target_bytes
        self.max_rows = max_rows
        self._segments: list[SegmentUsage] = []
        self._partly_live = 0
        self._live = 0
        self._rows = 0

    def add(self, segment: SegmentUsage, partly_live: bool) -> list[RewriteGroup]:
        """Adds a candidate; returns the groups it closed (worth rewriting or not)."""
        closed: list[RewriteGroup] = []
        if self._segments and (
            self._live + segment.live_bytes > self.target_bytes
            or self._rows + segment.block_count > self.max_rows
        ):
            closed.append(self._close())
        self._segments.append(segment)
        self._partly_live += partly_live
        self._live += segment.live_bytes
        self._rows += segment.block_count
        return closed

    def finish(self) -> list[RewriteGroup]:
        """The last, unclosed group (if any)."""
        return [self._close()] if self._segments else []

    def _close(self) -> RewriteGroup:
        group = RewriteGroup(self._segments, self._partly_live)
        self._segments, self._partly_live, self._live, self._rows = [], 0, 0, 0
        return group
