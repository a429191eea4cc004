"""streamhouse.process: a background task that dies fails its process (TaskSupervisor)."""

from __future__ import annotations

import asyncio

import pytest

from streamhouse.process import TaskSupervisor, describe_failure


async def boom() -> None:
    await asyncio.sleep(0)
    try:
        raise OSError("disk on fire")
    except OSError as exc:
        raise RuntimeError("ring loop gave up") from exc


async def forever() -> None:
    await asyncio.Event().wait()


async def returns() -> None:
    await asyncio.sleep(0)


def test_a_task_that_raises_fails_the_supervisor() -> None:
    async def go() -> tuple[str, BaseException]:
        supervisor = TaskSupervisor()
        supervisor.spawn(forever(), "quiet")
        supervisor.spawn(boom(), "ring reader")
        return await asyncio.wait_for(supervisor.failed(), 5)

    name, exc = asyncio.run(go())
    assert name == "ring reader"
    line = describe_failure(exc)
    assert "\n" not in line
    assert line.startswith("RuntimeError: ring loop gave up (at ")
    assert "in boom) <- caused by OSError: disk on fire" in line


def test_a_forever_task_that_returns_fails_and_a_finite_one_does_not() -> None:
    async def go() -> tuple[str, BaseException]:
        supervisor = TaskSupervisor()
        await supervisor.spawn(returns(), "one-off", forever=False)
        supervisor.spawn(returns(), "watchdog")
        return await asyncio.wait_for(supervisor.failed(), 5)

    name, exc = asyncio.run(go())
    assert name == "watchdog"
    assert "returned; it must run until stop" in str(exc)


def test_cancelling_tasks_is_not_a_failure() -> None:
    async def go() -> None:
        supervisor = TaskSupervisor()
        task = supervisor.spawn(forever(), "loop")
        await asyncio.sleep(0)
        supervisor.cancel_all()
        with pytest.raises(asyncio.CancelledError):
            await task
        failed = asyncio.ensure_future(supervisor.failed())
        for _ in range(3):  # let every done callback run
            await asyncio.sleep(0)
        assert not failed.done()
        failed.cancel()

    asyncio.run(go())
