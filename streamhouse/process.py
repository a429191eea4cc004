"""Start-up shared by the StreamHouse processes: settings, logging, uvloop, signals, supervision.

Each process logs to stderr; supervisord writes that to `<data_dir>/logs/<program>.log` and
rotates it.

Log lines (`configure_logging`, every process): one line per event. At INFO and above an
exception is folded into that line as its cause (`describe_failure`: type, message, where, and
the cause chain); the stack dump is added only when the level is DEBUG. Formats (setting
`log_format`):
- `text`: `<ISO time> <process> <LEVEL> <logger>: <message>[: <error>]`
- `json`: one JSON object per line with the keys `ts` (ISO 8601 UTC, milliseconds), `level`,
  `process`, `logger`, `msg` and `error` (null when the record carries no exception; at DEBUG a
  `stack` key holds the traceback).

Rules (a process is never left up but deaf):
- Every background task of a process (ring reader loops, the ack taker, the watchdog...) is
  started with `spawn`. A spawned task that raises, or that returns although it was spawned
  `forever`, fails the process: one log line names the task, the exception, its cause and
  where it was raised, and the process exits with status 1 so supervisord restarts it.
- Cancelling a task is not a failure (that is how a process stops its tasks).
- SIGTERM/SIGINT set `stop`; `main` returns and the process exits 0. A failed process gives
  `main` a few seconds to clean up, then exits at once (`os._exit`), whatever threads hang.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import uvloop

from streamhouse.config import ConfigError, Settings, load_settings

__all__ = [
    "TaskSupervisor",
    "check_ports_free",
    "configure_logging",
    "describe_failure",
    "run_process",
    "spawn",
]

T = TypeVar("T")

log = logging.getLogger("streamhouse.process")

# How long a failed process gives `main` to clean up before it exits anyway.
_FAILED_EXIT_GRACE_S = 5.0


def describe_failure(exc: BaseException) -> str:
    """One line: exception type and message, where it was raised, and its cause chain."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{type(current).__name__}: {current}".rstrip(": ")
        frames = traceback.extract_tb(current.__traceback__)
        if frames:
            last = frames[-1]
            text += f" (at {last.filename}:{last.lineno} in {last.name})"
        parts.append(text)
        current = current.__cause__ or current.__context__
    return " <- caused by ".join(parts).replace("\n", " ")


def _iso(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OneLineFormatter(logging.Formatter):
    """`text` lines: the record's message and its exception's cause on one line; the stack
    dump only when `stacks` (log level DEBUG)."""

    def __init__(self, process: str, *, stacks: bool) -> None:
        super().__init__()
        self.process = process
        self.stacks = stacks

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace("\n", " ")
        line = f"{_iso(record.created)} {self.process} {record.levelname} {record.name}: {msg}"
        if record.exc_info and record.exc_info[1] is not None:
            line += f": {describe_failure(record.exc_info[1])}"
            if self.stacks:
                line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


class JsonLineFormatter(logging.Formatter):
    """`json` lines: one object per record (see the module docstring for the keys)."""

    def __init__(self, process: str, *, stacks: bool) -> None:
        super().__init__()
        self.process = process
        self.stacks = stacks

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        entry: dict[str, object] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "process": self.process,
            "logger": record.name,
            "msg": record.getMessage(),
            "error": describe_failure(exc) if exc is not None else None,
        }
        if exc is not None and self.stacks and record.exc_info:
            entry["stack"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(process: str, level: str, log_format: str = "text") -> None:
    """Every process's logging: one line per event on stderr (module docstring), replacing
    any handler configured before."""
    numeric = logging.getLevelName(level.upper())
    stacks = numeric == logging.DEBUG or (isinstance(numeric, int) and numeric < logging.INFO)
    formatter: logging.Formatter = (
        JsonLineFormatter(process, stacks=stacks)
        if log_format == "json"
        else OneLineFormatter(process, stacks=stacks)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def check_ports_free(settings: Settings, fields: tuple[str, ...]) -> None:
    """Startup check: each listen setting in `fields` ("grpc_listen", ...) can be bound; else
    raises SystemExit naming the setting to fix (one log line, exit 1: supervisord retries)."""
    import socket

    for field in fields:
        value = str(getattr(settings, field))
        host, _, port = value.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, int(port)))
            except OSError as exc:
                log.error(
                    "%s %s cannot be bound (%s): another program holds it; stop it or set "
                    "STREAMHOUSE_%s",
                    field,
                    value,
                    exc.strerror or exc,
                    field.upper(),
                )
                raise SystemExit(1) from None


async def probe_object_store(settings: Settings, role: str) -> None:
    """PUT + GET + DELETE of a small probe object under `_probe/`; raises what the store
    raised."""
    from streamhouse import objectstore

    store = objectstore.open_object_store(settings.object_store_url, settings.store_timeout_ms)
    key = f"_probe/{role}-{os.getpid()}"
    body = f"streamhouse startup probe of {role}".encode()

    async def probe() -> None:
        await objectstore.put(store, key, body)
        got = await objectstore.get(store, key)
        if bytes(got) != body:
            raise RuntimeError("the probe object read back differs from what was written")
        await objectstore.delete(store, key)

    await asyncio.wait_for(probe(), settings.store_timeout_ms / 1000)


class TaskSupervisor:
    """Background tasks whose death fails their process (see the module rules)."""

    def __init__(self) -> None:
        self._failure: asyncio.Future[tuple[str, BaseException]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _failure_future(self) -> asyncio.Future[tuple[str, BaseException]]:
        if self._failure is None:
            self._failure = asyncio.get_running_loop().create_future()
        return self._failure

    def spawn(
        self, coro: Coroutine[Any, Any, T], name: str, *, forever: bool = True
    ) -> asyncio.Task[T]:
        """Start `coro` as a task named `name`; its exception (or, if `forever`, its return)
        fails the process."""
        failure = self._failure_future()
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[T]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or failure.done():
                return
            exc = t.exception()
            if exc is None:
                if not forever:
                    return
                exc = RuntimeError(f"background task {name} returned; it must run until stop")
            failure.set_result((name, exc))

        task.add_done_callback(done)
        return task

    async def failed(self) -> tuple[str, BaseException]:
        """Wait until a spawned task fails; returns its name and exception."""
        return await asyncio.shield(self._failure_future())

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


_supervisor: TaskSupervisor | None = None


def spawn(coro: Coroutine[Any, Any, T], name: str, *, forever: bool = True) -> asyncio.Task[T]:
    """`TaskSupervisor.spawn` on the process's supervisor. Outside `run_process` (tests,
    embedding) the task is not supervised: its failure is logged in one line."""
    if _supervisor is not None:
        return _supervisor.spawn(coro, name, forever=forever)
    task = asyncio.get_running_loop().create_task(coro, name=name)

    def done(t: asyncio.Task[T]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("background task %s died: %s", name, describe_failure(t.exception()))

    task.add_done_callback(done)
    return task


def run_process(name: str, main: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> None:
    """Runs `main(settings, stop)` on uvloop until it returns; SIGTERM/SIGINT set `stop`; a
    failed spawned task or an exception from `main` exits with status 1."""
    global _supervisor
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(name, settings.log_level, settings.log_format)
    from streamhouse.metrics import setup_process_metrics

    setup_process_metrics(settings, name)  # before any metric is touched
    plog = logging.getLogger(name)

    async def runner() -> None:
        global _supervisor
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        supervisor = _supervisor = TaskSupervisor()
        plog.info("starting (data dir %s)", settings.data_path)
        main_task = loop.create_task(main(settings, stop), name=f"{name} main")
        failure = loop.create_task(supervisor.failed())
        try:
            await asyncio.wait({main_task, failure}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            main_task.cancel()
            raise
        if failure.done():
            task_name, exc = failure.result()
            plog.error(
                "background task %s died: %s; exiting so supervisord restarts %s",
                task_name,
                describe_failure(exc),
                name,
            )
            stop.set()
            supervisor.cancel_all()
            main_task.cancel()
            await asyncio.wait({main_task}, timeout=_FAILED_EXIT_GRACE_S)
            _exit_failed()
        failure.cancel()
        supervisor.cancel_all()
        try:
            main_task.result()
        except Exception as exc:
            plog.error("%s failed: %s; supervisord will restart it", name, describe_failure(exc))
            _exit_failed()
        plog.info("stopped")

    try:
        uvloop.run(runner())
    except Exception as exc:
        plog.error("%s failed: %s", name, describe_failure(exc))
        _exit_failed()
    finally:
        _supervisor = None


def _exit_failed() -> NoReturn:
    """Exit with status 1 at once: a worker thread stuck in a blocking call (a busy database,
    a hung store) must not keep a failed process alive; the OS releases its mappings and
    files, and nothing unacknowledged was promised to anyone."""
    logging.shutdown()
    os._exit(1)
