"""The sql service's runner supervisor with a stand-in runner command (a tiny Python
script, real processes): one child per query, restarts with doubling backoff after a failing
exit, the last stderr line kept as the error, children of dropped queries stopped, all
stopped on close. The real runner (python3 -m sql.continuous run) is used by
tests/sql/test_service.py against a stack."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import time
from collections.abc import Awaitable, Callable

import pytest

from sql.service import MAX_BACKOFF_MS, MAX_LINE_BYTES, RunnerSupervisor, rendezvous_owner

# A runner that records its start, then either sleeps until SIGTERM or fails at once.
FAKE_RUNNER = """
import os, pathlib, sys, time
name, state = sys.argv[1], pathlib.Path(sys.argv[2])
with open(state / f"{name}.starts", "a") as fh:
    fh.write(f"{os.getpid()} {time.monotonic()}\\n")
if (state / f"{name}.fail").exists():
    print(f"runner {name}: the plan does not restore", file=sys.stderr, flush=True)
    sys.exit(1)
if (state / f"{name}.fenced").exists():
    print(f"query {name} was claimed by a newer runner", file=sys.stderr, flush=True)
    sys.exit(3)
while True:
    time.sleep(0.05)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout}s")
        await asyncio.sleep(0.02)


def _start_times(state: pathlib.Path, name: str) -> list[tuple[int, float]]:
    """(pid, time.monotonic()) of every start of the fake runner ``name``."""
    path = state / f"{name}.starts"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(int(pid), float(t)) for pid, t in lines]


def _starts(state: pathlib.Path, name: str) -> list[int]:
    return [pid for pid, _t in _start_times(state, name)]


def _supervisor(
    tmp_path: pathlib.Path,
    queries: list[str],
    backoff_ms: int = 100,
    fenced_backoff_ms: int = 5_000,
) -> RunnerSupervisor:
    script = tmp_path / "fake_runner.py"
    script.write_text(FAKE_RUNNER)

    async def names() -> list[str]:
        return list(queries)

    def command(name: str) -> list[str]:
        return [sys.executable, str(script), name, str(tmp_path)]

    return RunnerSupervisor(
        names,
        command=command,
        backoff_ms=backoff_ms,
        interval_s=0.05,
        env=dict(os.environ),
        fenced_backoff_ms=fenced_backoff_ms,
    )


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def test_one_runner_per_query_and_dropped_queries_stop(tmp_path: pathlib.Path) -> None:
    queries = ["a", "b"]
    sup = _supervisor(tmp_path, queries)

    async def test() -> None:
        task = asyncio.create_task(sup.run())
        try:
            await _until(lambda: _starts(tmp_path, "a") and _starts(tmp_path, "b"), 20, "started")
            pid_a, pid_b = _starts(tmp_path, "a")[0], _starts(tmp_path, "b")[0]
            assert sup.status("a").state == "running" and sup.status("a").pid == pid_a
            queries.remove("a")
            await sup.sync("a")  # returns once a's runner is gone
            assert not _alive(pid_a)
            assert sup.status("a").state == "stopped"
            assert _alive(pid_b)
            # still one start each: the reconcile loop does not start duplicates
            await asyncio.sleep(0.3)
            assert len(_starts(tmp_path, "b")) == 1
            assert len(_starts(tmp_path, "a")) == 1
        finally:
            task.cancel()
            await sup.stop_all()
        assert not _alive(pid_b)

    _run(test)


def test_a_failing_runner_is_restarted_with_doubling_backoff(tmp_path: pathlib.Path) -> None:
    (tmp_path / "q.fail").touch()
    sup = _supervisor(tmp_path, ["q"], backoff_ms=100)

    async def test() -> None:
        task = asyncio.create_task(sup.run())
        try:
            await _until(lambda: len(_starts(tmp_path, "q")) >= 4, 30, "four starts")
            status = sup.status("q")
            assert status.last_exit_code == 1
            assert status.last_error == "runner q: the plan does not restore"
            assert status.restarts >= 3
            # backoff doubles: 100, 200, 400, ... ms (capped at MAX_BACKOFF_MS)
            await _until(lambda: sup.status("q").state == "backoff", 10, "in backoff")
            assert sup.status("q").backoff_ms in {
                min(MAX_BACKOFF_MS, 100 * 2**k) for k in range(3, 12)
            }
            # a runner that is fixed runs on
            (tmp_path / "q.fail").unlink()
            await _until(lambda: sup.status("q").state == "running", 30, "running again")
            pid = sup.status("q").pid
            await asyncio.sleep(0.3)
            assert sup.status("q").pid == pid and _alive(pid)
        finally:
            task.cancel()
            await sup.stop_all()
        assert not _alive(pid)

    _run(test)


def test_a_fenced_runner_waits_the_fenced_backoff_and_says_so(tmp_path: pathlib.Path) -> None:
    (tmp_path / "q.fenced").touch()
    sup = _supervisor(tmp_path, ["q"], backoff_ms=50, fenced_backoff_ms=1_500)

    async def test() -> None:
        task = asyncio.create_task(sup.run())
        try:
            await _until(lambda: len(_starts(tmp_path, "q")) >= 1, 20, "first start")
            await _until(lambda: sup.status("q").last_exit_code == 3, 20, "fenced exit")
            status = sup.status("q")
            assert status.state == "backoff"
            assert status.backoff_ms == 1_500  # not the 50 ms of a first failure
            assert status.last_error is not None
            assert status.last_error.startswith("fenced (exit 3): another runner claimed")
            assert "query q was claimed by a newer runner" in status.last_error
            await _until(lambda: len(_starts(tmp_path, "q")) >= 3, 30, "three starts")
            times = [t for _pid, t in _start_times(tmp_path, "q")]
            # each restart came at least the fenced backoff after the previous start, and
            # the backoff doubles from there (1.5 s, then 50 ms * 2 = 100 ms < 1.5 s: 1.5 s)
            assert times[1] - times[0] >= 1.5
            assert times[2] - times[1] >= 1.5
            # no longer fenced: it runs on
            (tmp_path / "q.fenced").unlink()
            await _until(lambda: sup.status("q").state == "running", 30, "running again")
        finally:
            task.cancel()
            await sup.stop_all()

    _run(test)


def test_stop_all_kills_a_runner_that_ignores_sigterm(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, time, pathlib, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "pathlib.Path(sys.argv[1]).write_text('up')\n"
        "while True: time.sleep(0.05)\n"
    )

    async def names() -> list[str]:
        return ["s"]

    sup = RunnerSupervisor(
        names,
        command=lambda n: [sys.executable, str(script), str(tmp_path / "up")],
        interval_s=0.05,
    )

    async def test() -> None:
        import sql.service as service

        old = service.STOP_GRACE_S
        service.STOP_GRACE_S = 0.5
        try:
            await sup.reconcile()
            await _until(lambda: (tmp_path / "up").exists(), 20, "stubborn runner up")
            pid = sup.status("s").pid
            await sup.stop_all()
            assert not _alive(pid)
        finally:
            service.STOP_GRACE_S = old

    _run(test)


def test_rendezvous_owner_spreads_queries_and_moves_only_the_lost_agents() -> None:
    agents = ["a1", "a2", "a3"]
    names = [f"q{i}" for i in range(300)]
    owners = {n: rendezvous_owner(n, agents) for n in names}
    counts = {a: sum(1 for o in owners.values() if o == a) for a in agents}
    assert all(60 <= c <= 140 for c in counts.values()), counts
    after = {n: rendezvous_owner(n, ["a1", "a3"]) for n in names}
    moved = [n for n in names if owners[n] != after[n]]
    assert moved and all(owners[n] == "a2" for n in moved)


@pytest.mark.parametrize("bad", [0, -5])
def test_backoff_is_at_least_a_millisecond(tmp_path: pathlib.Path, bad: int) -> None:
    assert _supervisor(tmp_path, [], backoff_ms=bad).backoff_ms == 1


def test_huge_stderr_lines_are_cut_and_the_last_one_is_the_error(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "loud.py"
    script.write_text(
        "import sys\n"
        "sys.stderr.write('x' * 200_000)\n"
        "sys.stderr.write('\\nfirst line\\n')\n"
        "sys.stderr.write('the last words')\n"  # no newline at the end
        "sys.exit(1)\n"
    )

    async def names() -> list[str]:
        return ["loud"]

    sup = RunnerSupervisor(
        names,
        command=lambda n: [sys.executable, str(script)],
        interval_s=0.05,
        backoff_ms=60_000,
    )

    async def test() -> None:
        await sup.reconcile()
        await _until(lambda: sup.status("loud").state == "backoff", 20, "exited")
        assert sup.status("loud").last_error == "the last words"
        assert sup.status("loud").last_exit_code == 1
        lines = list(sup.children["loud"].lines)
        assert lines[0] == "x" * MAX_LINE_BYTES
        assert lines[-2:] == ["first line", "the last words"]
        await sup.stop_all()

    _run(test)
