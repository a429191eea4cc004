"""streamhouse._memory: unzeroed bytearrays of the asked size, page offsets of buffers."""

from __future__ import annotations

import ctypes

import pytest
from streamhouse._memory import page_offset, uninitialized_bytearray


@pytest.mark.parametrize("size", [0, 1, 4095, 10**6])
def test_an_uninitialized_bytearray_has_the_size_asked_and_is_writable(size: int) -> None:
    buffer = uninitialized_bytearray(size)
    assert type(buffer) is bytearray and len(buffer) == size
    buffer[:] = b"\x07" * size
    assert buffer == b"\x07" * size
    buffer += b"more"  # an ordinary bytearray in every other way
    assert len(buffer) == size + 4


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="size must be >= 0, got -1"):
        uninitialized_bytearray(-1)
    with pytest.raises(TypeError):
        uninitialized_bytearray("10")  # type: ignore[arg-type]


@pytest.mark.parametrize("align", [1, 8, 4096])
def test_page_offset_leads_to_an_aligned_address(align: int) -> None:
    for size in (1, 100, 70_000):
        buffer = bytearray(size + align)
        offset = page_offset(buffer, align)
        assert 0 <= offset < align
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        assert (address + offset) % align == 0
        view = memoryview(buffer)[offset:]
        assert page_offset(view, align) == 0


def test_page_offset_refuses_bad_alignments_and_read_only_buffers() -> None:
    with pytest.raises(ValueError, match="power of two, got 3000"):
        page_offset(bytearray(10), 3000)
    with pytest.raises(ValueError, match="power of two, got 0"):
        page_offset(bytearray(10), 0)
    with pytest.raises(TypeError):
        page_offset(b"read-only", 4096)  # type: ignore[arg-type]
