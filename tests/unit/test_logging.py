"""Process log lines (streamhouse.process.configure_logging): one line per event with the
error's cause at INFO and above, stack dumps only at DEBUG, JSON lines on request."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging, sys
from streamhouse.process import configure_logging
configure_logging("ingest", sys.argv[1], sys.argv[2])
log = logging.getLogger("ingest.test")
log.info("ready on %s", "127.0.0.1:1")
try:
    try:
        raise OSError("connection refused")
    except OSError as exc:
        raise RuntimeError("object store unreachable") from exc
except RuntimeError:
    log.exception("upload of %s failed", "seg-1")
log.debug("a detail")
"""


def run(level: str, fmt: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, level, fmt], capture_output=True, text=True, check=True
    )
    return out.stderr.splitlines()


def test_text_lines_carry_the_cause_without_a_stack_at_info() -> None:
    lines = run("info", "text")
    assert len(lines) == 2, lines
    assert " ingest INFO ingest.test: ready on 127.0.0.1:1" in lines[0]
    error = lines[1]
    assert " ingest ERROR ingest.test: upload of seg-1 failed: RuntimeError: object store " in error
    assert "caused by OSError: connection refused" in error
    assert "Traceback" not in "\n".join(lines)


def test_debug_adds_the_stack() -> None:
    text = "\n".join(run("debug", "text"))
    assert "Traceback (most recent call last)" in text
    assert "a detail" in text


def test_json_lines() -> None:
    lines = run("info", "json")
    entries = [json.loads(line) for line in lines]
    assert [e["level"] for e in entries] == ["INFO", "ERROR"]
    for entry in entries:
        assert set(entry) == {"ts", "level", "process", "logger", "msg", "error"}
        assert entry["process"] == "ingest" and entry["logger"] == "ingest.test"
        assert entry["ts"].endswith("Z")
    assert entries[0]["error"] is None and entries[0]["msg"] == "ready on 127.0.0.1:1"
    assert entries[1]["msg"] == "upload of seg-1 failed"
    assert entries[1]["error"].startswith("RuntimeError: object store unreachable")
    assert "caused by OSError: connection refused" in entries[1]["error"]
