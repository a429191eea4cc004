"""console/payload.py: record bytes as escaped text, pretty JSON or hex."""

from __future__ import annotations

import pytest

from console.payload import hex_dump, render


def test_text_is_escaped_and_invalid_utf8_shown_as_escapes() -> None:
    out = render(b"<img src=x onerror=alert(1)>\xff", "text")
    assert "<img" not in out
    assert "&lt;img src=x onerror=alert(1)&gt;\\xff" in out


def test_json_is_pretty_and_escaped() -> None:
    out = render(b'{"a":1,"b":"<b>"}', "json")
    assert "{\n  &quot;a&quot;: 1,\n  &quot;b&quot;: &quot;&lt;b&gt;&quot;\n}" in out


def test_json_fallback_says_not_json() -> None:
    out = render(b"plain", "json")
    assert "plain" in out and "not JSON" in out


def test_hex_dump_layout() -> None:
    assert hex_dump(b"AB\x00") == "00000000  41 42 00" + " " * 39 + "  |AB.|"
    lines = hex_dump(bytes(range(20))).split("\n")
    assert len(lines) == 2 and lines[1].startswith("00000010  10 11 12 13")
    assert "&lt;" in render(b"<", "hex")


def test_null_empty_and_cut() -> None:
    assert "null" in render(None, "text")
    assert '""' in render(b"", "text")
    out = render(b"x" * 10, "text", max_bytes=4)
    assert "xxxx" in out and "6 more bytes not shown (10 in all)" in out


def test_unknown_format_refused() -> None:
    with pytest.raises(ValueError, match="not one of text, json, hex"):
        render(b"x", "yaml")
