"""A process started with streamhouse.process.run_process exits with status 1 when one of its
background tasks dies, with one log line naming the task and the cause, even while a worker
thread is stuck in a blocking call; a clean stop exits 0."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

PROGRAM = textwrap.dedent(
    """
    import asyncio, sys, time
    from streamhouse.process import run_process, spawn

    async def ring_loop():
        await asyncio.sleep(0.05)
        try:
            raise OSError("doorbell gone")
        except OSError as exc:
            raise RuntimeError("ring loop gave up") from exc

    async def main(settings, stop):
        mode = sys.argv[1]
        if mode == "stuck-thread":
            asyncio.get_running_loop().run_in_executor(None, time.sleep, 600)
        if mode in ("die", "stuck-thread"):
            spawn(ring_loop(), "test ring loop")
        print("ready", flush=True)
        await stop.wait()

    run_process("probe", main)
    """
)


def run(tmp_path: pathlib.Path, mode: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMHOUSE_")}
    env["STREAMHOUSE_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.Popen(
        [sys.executable, "-c", PROGRAM, mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_dead_background_task_exits_the_process_with_one_line(tmp_path: pathlib.Path) -> None:
    proc = run(tmp_path, "die")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if "died" in line]
    assert len(lines) == 1, err
    assert "background task test ring loop died: RuntimeError: ring loop gave up" in lines[0]
    assert "<- caused by OSError: doorbell gone" in lines[0]
    assert "exiting so supervisord restarts probe" in lines[0]
    assert "Traceback" not in err


def test_a_stuck_worker_thread_does_not_keep_a_failed_process_alive(
    tmp_path: pathlib.Path,
) -> None:
    start = time.monotonic()
    proc = run(tmp_path, "stuck-thread")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert time.monotonic() - start < 30, "the failed process waited for its stuck thread"


def test_sigterm_stops_the_process_cleanly(tmp_path: pathlib.Path) -> None:
    proc = run(tmp_path, "quiet")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in err
