"""Record keys, values and header values as a person reads them: text, pretty JSON or hex.

Sans-I/O. Every function returns HTML that is safe to put inside an element: record bytes are
untrusted input, so all of it goes through `html.escape`.

- text: UTF-8, bytes that are not UTF-8 shown as `\\xNN` escapes;
- json: parsed and pretty-printed with two-space indents, keys in the order produced;
  bytes that are not JSON fall back to text with a marker saying so;
- hex: 16 bytes a line, `offset  hex bytes  |printable ASCII|` (`.` for the rest), as `xxd`.

A null (absent) key, value or header value is shown as the marker `null`, distinct from an empty
one (`""`). Payloads longer than `max_bytes` are cut there and the cut is said.
"""

from __future__ import annotations

import html
import json

__all__ = ["FORMATS", "MAX_BYTES", "hex_dump", "render"]

FORMATS = ("text", "json", "hex")
MAX_BYTES = 64 * 1024


def hex_dump(data: bytes) -> str:
    """Plain-text hex dump lines of `data` (not escaped)."""
    lines = []
    for start in range(0, len(data), 16):
        chunk = data[start : start + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{start:08x}  {hexes:<47}  |{text}|")
    return "\n".join(lines)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def render(data: bytes | None, fmt: str, max_bytes: int = MAX_BYTES) -> str:
    """`data` in format `fmt` (one of FORMATS) as escaped HTML."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if data is None:
        return '<span class="null">null</span>'
    if not data:
        return '<span class="null">""</span>'
    cut = ""
    if len(data) > max_bytes:
        cut = (
            f'<div class="note">{len(data) - max_bytes} more bytes not shown '
            f"({len(data)} in all)</div>"
        )
        data = data[:max_bytes]
    if fmt == "hex":
        return f'<pre class="hex">{html.escape(hex_dump(data))}</pre>{cut}'
    if fmt == "json":
        try:
            parsed = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            return f'<pre>{html.escape(_text(data))}</pre><div class="note">not JSON</div>{cut}'
        pretty = json.dumps(parsed, indent=2, ensure_ascii=False)
        return f'<pre class="json">{html.escape(pretty)}</pre>{cut}'
    return f"<pre>{html.escape(_text(data))}</pre>{cut}"
