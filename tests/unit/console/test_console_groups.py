"""console/groups.py: ConsumerProtocolAssignment bytes and lag per partition."""

from __future__ import annotations

import struct

import pytest

from console.groups import decode_assignment, group_lag
from streamhouse.kafka.primitives import DecodeError


def assignment(version: int, topics: dict[str, list[int]], user_data: bytes | None) -> bytes:
    out = struct.pack(">hi", version, len(topics))
    for topic, parts in topics.items():
        name = topic.encode()
        out += struct.pack(">h", len(name)) + name + struct.pack(">i", len(parts))
        out += b"".join(struct.pack(">i", p) for p in parts)
    if user_data is None:
        return out + struct.pack(">i", -1)
    return out + struct.pack(">i", len(user_data)) + user_data


@pytest.mark.parametrize("version", [0, 1, 3])
def test_decode_assignment(version: int) -> None:
    data = assignment(version, {"orders": [2, 0], "audit": [1]}, b"ud")
    assert decode_assignment(data) == {"orders": [0, 2], "audit": [1]}
    assert decode_assignment(assignment(version, {}, None)) == {}


def test_empty_bytes_are_no_assignment() -> None:
    assert decode_assignment(b"") == {}


@pytest.mark.parametrize(
    "data",
    [b"\x00", b"\x00\x00\x00\x00\x00\x01\x00\x05ab", b"\xff\xff\x00\x00\x00\x00"],
)
def test_bad_assignment_bytes_raise(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_assignment(data)


def test_group_lag() -> None:
    rows = group_lag(
        {("orders", 1): 10, ("orders", 0): 4, ("gone", 0): 3},
        {("orders", 0): 4, ("orders", 1): 15, ("orders", 2): 9},
        assigned=[("orders", 2), ("orders", 1)],
    )
    assert [(r.topic, r.partition, r.committed, r.high_watermark, r.lag) for r in rows] == [
        ("gone", 0, 3, -1, None),
        ("orders", 0, 4, 4, 0),
        ("orders", 1, 10, 15, 5),
        ("orders", 2, -1, 9, None),
    ]
