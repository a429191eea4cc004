"""Segment object keys: layout, order, and what parse reads back."""

from __future__ import annotations

import secrets
import time

import pytest

from streamhouse import segment_keys
from streamhouse.segment_keys import KeyWriter, SegmentKeys


def test_keys_name_their_writer_and_count_up_from_zero() -> None:
    keys = SegmentKeys()
    made = [keys.new_key() for _ in range(300)]
    assert [segment_keys.parse(k) for k in made] == [
        KeyWriter(keys.writer, n) for n in range(1, 301)
    ]
    assert made == sorted(made)  # time-ordered, then by sequence
    assert len(set(made)) == len(made)


def test_key_layout() -> None:
    before = time.time_ns()
    key = SegmentKeys("0a1b2c3d").new_key()
    prefix, rest = key.split("/")
    ns, tail = rest.removesuffix(".seg").split("-")
    assert prefix == "segments" and len(key) == 50
    assert len(ns) == 20 and before <= int(ns) <= time.time_ns()
    assert tail == "0a1b2c3d00000001"


def test_a_writer_starts_over_as_another_after_two_to_the_32_keys() -> None:
    keys = SegmentKeys("00000001")
    keys._next = (1 << 32) - 1
    last = segment_keys.parse(keys.new_key())
    following = segment_keys.parse(keys.new_key())
    assert last == KeyWriter("00000001", (1 << 32) - 1)
    assert following is not None and following.sequence == 1 and following.writer != "00000001"


def test_random_keys_of_other_writers_parse_as_some_writer() -> None:
    """Lifecycle rewrites and the SQL sink make 16 random hex digits: a writer and sequence
    like any other (no ring delivers them, so a reader never waits for them)."""
    token = secrets.token_hex(8)
    key = f"segments/{time.time_ns():020d}-{token}.seg"
    assert segment_keys.parse(key) == KeyWriter(token[:8], int(token[8:], 16))


@pytest.mark.parametrize(
    "key",
    [
        "segments/00000000000000000001.seg",
        "segments/00000000000000000001-0a1b2c3d0000000.seg",
        "segments/00000000000000000001_0a1b2c3d00000000.seg",
        "segments/00000000000000000001-0A1B2C3D00000000.seg",
        "segments/00000000000000000001-0a1b2c3d0000000g.seg",
        "objects/00000000000000000001-0a1b2c3d00000000.seg",
        "segments/00000000000000000001-0a1b2c3d00000000.sex",
        "",
    ],
)
def test_keys_of_another_shape_do_not_parse(key: str) -> None:
    assert segment_keys.parse(key) is None


@pytest.mark.parametrize("writer", ["", "0a1b2c3", "0a1b2c3d0", "0A1B2C3D", "xyzxyzxy"])
def test_a_writer_is_eight_lowercase_hex_digits(writer: str) -> None:
    with pytest.raises(ValueError, match="8 hex digits"):
        SegmentKeys(writer)


def test_the_hello_is_sequence_zero_of_the_writer_and_no_key_repeats_it() -> None:
    keys = SegmentKeys()
    hello = segment_keys.parse(keys.hello_key())
    assert hello == KeyWriter(keys.writer, 0)
    assert segment_keys.parse(keys.new_key()) == KeyWriter(keys.writer, 1)
