"""Consumer groups as the console shows them: members with their assignments, lag per partition.

Sans-I/O: `decode_assignment` reads the bytes a member of a `consumer` group was assigned;
`group_lag` joins committed offsets with high watermarks. The Kafka calls that fetch both are in
console/kafka_admin.py.

Member assignment bytes (Kafka's ConsumerProtocolAssignment, versions 0-3, never flexible;
`/work/shared/kafka-protocol/message/ConsumerProtocolAssignment.json`), big-endian:

    version            int16
    assigned topics    int32 count, then per topic:
        topic          int16 length + UTF-8
        partitions     int32 count, then int32 each
    user data          int32 length + bytes (-1: null)

Newer versions are read with the same layout (the schema's own rule: fields are only added at
the end). Empty bytes mean no assignment (a member before SyncGroup, or a non-consumer group).

Lag of a partition = high watermark - committed offset (never below 0); a partition with no
committed offset (assigned to a member, nothing committed yet) has no lag figure (None), and the
group's total lag sums the known ones.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

import msgspec

from streamhouse.kafka.primitives import DecodeError, read_array_length, read_string

__all__ = [
    "GroupMember",
    "GroupView",
    "PartitionLag",
    "decode_assignment",
    "group_lag",
]

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")


class GroupMember(msgspec.Struct, frozen=True):
    member_id: str
    client_id: str
    client_host: str
    assignment: dict[str, list[int]]  # topic -> partitions
    instance_id: str | None = None


class PartitionLag(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    committed: int  # -1: nothing committed
    high_watermark: int  # -1: partition unknown (topic deleted)
    lag: int | None


class GroupView(msgspec.Struct, frozen=True):
    group_id: str
    state: str
    protocol_type: str
    protocol: str
    coordinator: str  # host:port of the agent that answered for it
    members: list[GroupMember]
    partitions: list[PartitionLag]
    error: str = ""  # why the group could not be described, if it could not

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions if p.lag is not None)


def decode_assignment(data: bytes) -> dict[str, list[int]]:
    """Topic -> assigned partitions from ConsumerProtocolAssignment bytes; raises DecodeError
    for bytes that do not follow the layout above."""
    if not data:
        return {}
    buf = memoryview(data)
    try:
        (version,) = _INT16.unpack_from(buf, 0)
        if version < 0:
            raise DecodeError(f"assignment version {version} is negative")
        count, pos = read_array_length(buf, 2)
        out: dict[str, list[int]] = {}
        for _ in range(max(count, 0)):
            topic, pos = read_string(buf, pos)
            n, pos = read_array_length(buf, pos)
            if n < 0 or pos + 4 * n > len(buf):
                raise DecodeError(f"partition list of {topic!r} has a bad length {n}")
            partitions = [_INT32.unpack_from(buf, pos + 4 * i)[0] for i in range(n)]
            pos += 4 * n
            out.setdefault(topic, []).extend(partitions)
    except struct.error as exc:
        raise DecodeError(f"assignment bytes end too early: {exc}") from None
    return {topic: sorted(parts) for topic, parts in out.items()}


def group_lag(
    committed: Mapping[tuple[str, int], int],
    high_watermarks: Mapping[tuple[str, int], int],
    assigned: Iterable[tuple[str, int]] = (),
) -> list[PartitionLag]:
    """One row per committed or assigned partition, by topic and partition."""
    rows = []
    wanted = dict(committed)
    for key in assigned:
        wanted.setdefault(key, -1)
    for (topic, partition), offset in sorted(wanted.items()):
        hw = high_watermarks.get((topic, partition), -1)
        lag = max(0, hw - offset) if offset >= 0 and hw >= 0 else None
        rows.append(PartitionLag(topic, partition, offset, hw, lag))
    return rows
