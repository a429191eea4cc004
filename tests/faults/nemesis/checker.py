"""The checker: a pure function from a history (see `history.py`) to anomaly counts.

What it counts, per Jepsen's Kafka analyses, each of which must be zero:

- `lost`: a value whose send was acknowledged at offset o of partition p, never read, although
  some read reached offset o of p or beyond (the final full read reaches the high watermark).
- `unseen`: acknowledged, never read, and no read reached its offset. After the final full read
  of every partition this too means loss (the high watermark went backwards).
- `duplicates`: a value read at two different (partition, offset) positions.
- `inconsistent_offsets`: a (partition, offset) at which two different values were read, or at
  which a value was acknowledged and a different one read.
- `nonmonotonic`: within one consumer's assignment, a poll returned an offset of a partition at
  or below one it had already returned (a new `assign` op resets this).
- `skipped`: within one consumer's assignment, offsets of a partition jumped forward (StreamHouse
  offsets are contiguous: no transactions, no compaction here, so a jump skips records).
- `group_skipped`: an offset of a partition that no member of the consumer group ever polled,
  although the group polled beyond it. The group starts at the earliest offset and commits only
  what it polled, so a rebalance may re-deliver records but never skip one; a skip means a
  commit or offset fetch went wrong. (All `poll` ops are by members of one group; the final
  read is `read`.)
- `failed_reads`: a value read whose send definitely failed.
- `unknown_reads`: a value read that no send ever invoked.

It also counts `acknowledged` values (and acknowledged send operations): a run that
acknowledged nothing proved nothing, so `Verdict.valid` is false then too.

An acknowledgement may carry no offset (`null`): librdkafka's idempotent producer reports a
message as delivered without one when a later batch's acknowledgement proved it persisted
(its own batch's answer was lost to a fault). Such a value must still be read in its partition;
if it never is, it is `lost` once some read of that partition exists, else `unseen`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .history import Op

ANOMALIES = (
    "lost",
    "unseen",
    "duplicates",
    "inconsistent_offsets",
    "nonmonotonic",
    "skipped",
    "group_skipped",
    "failed_reads",
    "unknown_reads",
)
EXAMPLES = 5


@dataclass
class Verdict:
    """Counts of every anomaly (each must be 0) and of acknowledged writes (must be > 0)."""

    acknowledged: int = 0
    acknowledged_ops: int = 0
    acknowledged_without_offset: int = 0
    sends_failed: int = 0
    sends_unknown: int = 0
    records_read: int = 0
    lost: int = 0
    unseen: int = 0
    duplicates: int = 0
    inconsistent_offsets: int = 0
    nonmonotonic: int = 0
    skipped: int = 0
    group_skipped: int = 0
    failed_reads: int = 0
    unknown_reads: int = 0
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def valid(self) -> bool:
        return self.acknowledged > 0 and all(getattr(self, name) == 0 for name in ANOMALIES)

    def note(self, anomaly: str, example: str) -> None:
        setattr(self, anomaly, getattr(self, anomaly) + 1)
        if len(self.examples[anomaly]) < EXAMPLES:
            self.examples[anomaly].append(example)

    def report(self) -> str:
        """One `name: count` line per counter, examples of each anomaly found, and the verdict."""
        lines = [
            f"acknowledged values: {self.acknowledged}",
            f"acknowledged send operations: {self.acknowledged_ops}",
            f"acknowledged values without an offset: {self.acknowledged_without_offset}",
            f"sends definitely failed: {self.sends_failed}",
            f"sends with unknown outcome: {self.sends_unknown}",
            f"records read (polls and final read): {self.records_read}",
        ]
        for name in ANOMALIES:
            lines.append(f"{name}: {getattr(self, name)}")
            lines.extend(f"    e.g. {example}" for example in self.examples.get(name, []))
        if self.acknowledged == 0:
            lines.append("INVALID: nothing was acknowledged, so the run proved nothing")
        lines.append("VALID" if self.valid else "INVALID")
        return "\n".join(lines)


def check(history: Iterable[Op]) -> Verdict:
    """Counts every anomaly in `history` (an iterable of operations, in recorded order)."""
    verdict = Verdict()
    invoked: set[str] = set()
    failed: set[str] = set()
    acked: dict[str, tuple[int, int | None]] = {}
    # (partition, offset) -> values read or acknowledged there
    at: dict[tuple[int, int], set[str]] = defaultdict(set)
    read_at: dict[str, set[tuple[int, int]]] = defaultdict(set)
    highest_read: dict[int, int] = {}
    # (process, partition) -> last offset that process read since its last assignment
    last_read: dict[tuple[str, int], int] = {}
    group_polled: dict[int, set[int]] = defaultdict(set)

    for op in history:
        f, type_, process = op["f"], op["type"], op["process"]
        if f == "send":
            values = op["values"]
            if type_ == "invoke":
                invoked.update(values)
            elif type_ == "ok":
                verdict.acknowledged_ops += 1
                verdict.acknowledged += len(values)
                partition = op["partition"]
                for value, offset in zip(values, op["offsets"], strict=True):
                    acked[value] = (partition, offset)
                    if offset is None:
                        verdict.acknowledged_without_offset += 1
                    else:
                        at[(partition, offset)].add(value)
            elif type_ == "fail":
                verdict.sends_failed += len(values)
                failed.update(values)
            else:
                verdict.sends_unknown += len(values)
        elif f == "assign":
            for key in [key for key in last_read if key[0] == process]:
                del last_read[key]
        elif f in ("poll", "read") and type_ == "ok":
            for partition, offset, value in op["records"]:
                verdict.records_read += 1
                if f == "poll":
                    group_polled[partition].add(offset)
                at[(partition, offset)].add(value)
                read_at[value].add((partition, offset))
                if offset > highest_read.get(partition, -1):
                    highest_read[partition] = offset
                key = (process, partition)
                last = last_read.get(key)
                if last is not None and offset <= last:
                    verdict.note(
                        "nonmonotonic",
                        f"{process} read {partition}/{offset} after {partition}/{last}",
                    )
                elif last is not None and offset > last + 1:
                    verdict.note(
                        "skipped", f"{process} read {partition}/{offset} after {partition}/{last}"
                    )
                last_read[key] = offset

    for value, positions in read_at.items():
        if len(positions) > 1:
            verdict.note("duplicates", f"{value!r} read at {sorted(positions)}")
        if value in failed:
            verdict.note("failed_reads", f"{value!r} read at {sorted(positions)}, its send failed")
        if value not in invoked:
            verdict.note("unknown_reads", f"{value!r} read at {sorted(positions)}, never sent")
    for (partition, offset), values in sorted(at.items()):
        if len(values) > 1:
            verdict.note("inconsistent_offsets", f"{partition}/{offset} holds {sorted(values)}")
    for partition, offsets in sorted(group_polled.items()):
        for offset in range(max(offsets) + 1):
            if offset not in offsets:
                verdict.note(
                    "group_skipped",
                    f"{partition}/{offset} never polled by the group, which polled up to "
                    f"{partition}/{max(offsets)}",
                )
    for value, (partition, offset) in acked.items():
        if value in read_at:
            if offset is None and all(p != partition for p, _ in read_at[value]):
                verdict.note(
                    "inconsistent_offsets",
                    f"{value!r} acknowledged in partition {partition}, read at "
                    f"{sorted(read_at[value])}",
                )
            continue
        highest = highest_read.get(partition, -1)
        if (offset is None and highest >= 0) or (offset is not None and offset <= highest):
            verdict.note("lost", f"{value!r} acknowledged at {partition}/{offset}, never read")
        else:
            verdict.note(
                "unseen",
                f"{value!r} acknowledged at {partition}/{offset}, beyond every read "
                f"(highest {highest})",
            )
    return verdict
