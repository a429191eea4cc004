"""Differential property of batch validation: what the validator (C record walk) accepts, the
Python decoder decodes into exactly what the header promised.

Hypothesis builds valid batches (any codec), mutates them (byte edits, lying varints), and
repairs length and CRC so the mutation reaches the record walk; the oracle is
``tests/fuzz/fuzz_batch.py``'s ``check`` (only ``InvalidBatchError`` may escape scan, validate
and decode; an accepted buffer decodes to its record count, offset deltas 0..n-1, its
maxTimestamp, and keys where the topic requires them). ``test_batch_validation.py`` has the
validator's own properties; this adds the cross-check between the two implementations.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhouse.recordbatch import encode_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import fuzz_batch  # noqa: E402  (tests/fuzz is not a package)

sys.path.pop(0)

NOW = fuzz_batch.NOW_MS
RECORD = st.tuples(
    st.none() | st.binary(max_size=20),
    st.none() | st.binary(max_size=60),
    st.lists(st.tuples(st.text(max_size=6), st.none() | st.binary(max_size=6)), max_size=2),
    st.integers(NOW - 10**6, NOW + 10**6),
)
VARINT_LIES = [b"\xff\xff\xff\xff\x0f", b"\x01", b"\x00", b"\x7f", b"\xfe\xff\xff\xff\xff\xff"]


def scaled(n: int) -> int:
    return max(1, n * settings.default.max_examples // 100)


@settings(max_examples=scaled(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(RECORD, min_size=1, max_size=8),
    codec=st.sampled_from([0, 0, 1, 2, 3, 4]),
    flags=st.integers(0, 15),
    edits=st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.sampled_from(["set", "del", "ins", "lie"]),
            st.binary(max_size=1),
        ),
        max_size=3,
    ),
    lie=st.sampled_from(VARINT_LIES),
)
def test_validated_batches_decode_as_promised(
    records: list, codec: int, flags: int, edits: list, lie: bytes
) -> None:
    keys, values, headers, timestamps = (list(c) for c in zip(*records, strict=True))
    batch = encode_batch(keys, values, headers, timestamps)
    if codec:
        batch = fuzz_batch.with_codec(batch, codec)
    data = bytearray(batch)
    for at, kind, byte in edits:
        at = 61 + at % max(1, len(data) - 60)  # inside the records: the header has its checks
        if kind == "set" and at < len(data) and byte:
            data[at] = byte[0]
        elif kind == "del" and at < len(data):
            del data[at]
        elif kind == "ins":
            data[at:at] = byte
        else:
            data[at : at + 1] = lie
    # Bit 0 set: repair length and CRC, so every edit reaches the record walk.
    fuzz_batch.check(bytes([flags | 1]) + bytes(data))


def test_unedited_batches_validate_and_decode() -> None:
    batch = encode_batch([b"k", None], [b"v", b"w"], [[], [("h", None)]], [NOW, NOW + 1])
    for codec in (0, 1, 2, 3, 4):
        data = fuzz_batch.with_codec(batch, codec) if codec else batch
        infos = fuzz_batch.validate_batches(data, fuzz_batch.RULES[(False, False, False)], NOW)
        assert [i.record_count for i in infos] == [2]
        fuzz_batch.check(b"\x01" + data)
