"""streamhouse.testing.Stack: a stack that cannot become ready leaves nothing running (its
supervisord and programs are stopped before the error is raised)."""

from __future__ import annotations

import pathlib
import re
import socket

import psutil
import pytest

from streamhouse.testing import Stack, StackError


def _started_pids(data_dir: pathlib.Path) -> list[int]:
    """supervisord's and every program's pid, from the stack's supervisord output."""
    text = (data_dir / "logs" / "stack-console.log").read_text(errors="replace")
    pids = [int(p) for p in re.findall(r"supervisord started with pid (\d+)", text)]
    pids += [int(p) for p in re.findall(r"spawned: '[a-z_]+' with pid (\d+)", text)]
    return pids


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_stack_that_never_gets_ready_is_stopped_before_the_error(tmp_path: pathlib.Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        stack = Stack(tmp_path / "data", env={"STREAMHOUSE_KAFKA_LISTEN": f"127.0.0.1:{port}"})
        with pytest.raises(StackError, match="not ready"):
            stack.start(timeout=4)
        assert not stack.running
        pids = _started_pids(stack.data_dir)
        # supervisord and the programs it spawned (ingest over and over, the others once).
        assert len(pids) >= 2, pids
        assert [pid for pid in pids if _running(pid)] == []
        ingest_log = (stack.data_dir / "logs" / "ingest.log").read_text(errors="replace")
        assert "STREAMHOUSE_KAFKA_LISTEN" in ingest_log  # it failed for the reason we made
    finally:
        busy.close()
