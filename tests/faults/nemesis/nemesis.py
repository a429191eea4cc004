"""The nemesis: faults at random moments, drawn from a seeded random generator.

Kinds (`KINDS`), one at a time, each healed before the next starts:

| kind                       | what happens                                                |
|----------------------------|-------------------------------------------------------------|
| `kill:<program>`           | SIGKILL of ingest, segmenter, uploader or reader (restarted) |
| `pause:<program>`          | SIGSTOP of that program, SIGCONT after a random pause        |
| `store-kill`               | SIGKILL of SeaweedFS; restarted on the same dir and ports    |
| `store-pause`              | SIGSTOP of SeaweedFS, SIGCONT after a random pause           |
| `store-slow`               | the proxy before SeaweedFS delays every chunk for a while    |
| `store-kill+kill:uploader` | SeaweedFS killed, then the uploader, which restarts meanwhile |
| `stack-restart`            | the whole stack stopped (SIGTERM to supervisord), started    |
| `stack-kill`               | supervisord and all four programs SIGKILLed, then started    |

The first `len(KINDS)` faults are every kind once, in a seeded shuffled order, so even a short
run exercises each (a run stopped before that finishes the kinds left first); later ones are
drawn uniformly. A fault lasts its full drawn duration even when the run is stopping. Every
fault is written to the history (`process` `nemesis`) with the moment it started and ended.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections import Counter

from streamhouse.testing import PROGRAMS, Stack

from .history import History
from .servers import LatencyProxy, SeaweedServer

KINDS: tuple[str, ...] = (
    *(f"kill:{p}" for p in PROGRAMS),
    *(f"pause:{p}" for p in PROGRAMS),
    "store-kill",
    "store-pause",
    "store-slow",
    "store-kill+kill:uploader",
    "stack-restart",
    "stack-kill",
)


class Nemesis(threading.Thread):
    """Runs faults until `stop()`, waiting `interval` seconds (±50 %) between them."""

    def __init__(
        self,
        history: History,
        stack: Stack,
        store: SeaweedServer,
        proxy: LatencyProxy,
        seed: int,
        interval: float,
        max_pause: float = 6.0,
    ) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.history = history
        self.stack = stack
        self.store = store
        self.proxy = proxy
        self.random = random.Random(seed)
        self.interval = interval
        self.max_pause = max_pause
        self.done = Counter[str]()
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._paused: list[int] = []

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        order = list(KINDS)
        self.random.shuffle(order)
        try:
            while True:
                gap = self.interval * self.random.uniform(0.5, 1.5)
                # The random moment of the next fault; once stopped, the kinds not yet done
                # follow at once, so every run has every kind.
                if self._halt.wait(gap) and not order:
                    return
                kind = order.pop(0) if order else self.random.choice(KINDS)
                self.history.record("nemesis", "invoke", kind)
                detail = self.inflict(kind)
                self.history.record("nemesis", "ok", kind, detail=detail)
                self.done[kind] += 1
        except BaseException as exc:  # reported by the run
            self.error = exc
            self.history.record("nemesis", "info", "crash", error=repr(exc))

    @staticmethod
    def _hold(seconds: float) -> None:
        """Keeps a fault in effect for its duration (the fault itself, not synchronisation)."""
        threading.Event().wait(seconds)

    def _pause_s(self) -> float:
        return self.random.uniform(1.0, self.max_pause)

    def inflict(self, kind: str) -> str:
        """Causes one fault and heals it; returns what was done, for the history."""
        if kind.startswith("kill:"):
            program = kind.split(":", 1)[1]
            old = self.stack.kill(program)
            new = self.stack.wait_restarted(program, old, timeout=60)
            return f"pid {old} killed, restarted as {new}"
        if kind.startswith("pause:"):
            program = kind.split(":", 1)[1]
            pid = self.stack.pid(program)
            pause = self._pause_s()
            os.kill(pid, signal.SIGSTOP)
            self._paused.append(pid)
            self._hold(pause)
            self._resume(pid)
            return f"pid {pid} stopped for {pause:.1f}s"
        if kind == "store-kill":
            pause = self._pause_s()
            self.store.kill()
            self._hold(pause)
            self.store.start()
            return f"down for {pause:.1f}s"
        if kind == "store-kill+kill:uploader":
            pause = self._pause_s()
            self.store.kill()
            old = self.stack.kill("uploader")
            new = self.stack.wait_restarted("uploader", old, timeout=60)
            self._hold(pause)
            self.store.start()
            return f"store down for {pause:.1f}s; uploader {old} killed, restarted as {new}"
        if kind == "store-pause":
            pause = self._pause_s()
            self.store.signal(signal.SIGSTOP)
            self._hold(pause)
            self.store.signal(signal.SIGCONT)
            return f"stopped for {pause:.1f}s"
        if kind == "store-slow":
            span = self._pause_s() * 2
            delay = self.random.uniform(0.1, 1.0)
            self.proxy.delay_s = delay
            self._hold(span)
            self.proxy.delay_s = 0.0
            return f"{delay * 1000:.0f} ms per chunk for {span:.1f}s"
        if kind == "stack-restart":
            self.stack.restart()
            return "stopped and started"
        if kind == "stack-kill":
            return self._kill_stack()
        raise ValueError(f"unknown nemesis kind {kind!r}; known: {', '.join(KINDS)}")

    def _resume(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        if pid in self._paused:
            self._paused.remove(pid)

    def _kill_stack(self) -> str:
        """SIGKILLs supervisord and every program (each runs in its own process group)."""
        proc = self.stack.proc
        assert proc is not None, "the stack is not running"
        pids = [self.stack.pid(p) for p in PROGRAMS]
        os.kill(proc.pid, signal.SIGKILL)
        for pid in pids:
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.wait()
        self.stack.stop()  # forgets the dead supervisord, removes its rings
        self.stack.start()
        return f"supervisord {proc.pid} and programs {pids} killed, started again"

    def heal(self) -> None:
        """Undoes anything still in effect (after `stop()` and join)."""
        for pid in list(self._paused):
            self._resume(pid)
        self.proxy.delay_s = 0.0
        if self.store.proc is None:
            self.store.start()
        else:
            self.store.signal(signal.SIGCONT)
        if self.stack.proc is None:
            self.stack.start()
        self.stack.wait_ready(timeout=120)
