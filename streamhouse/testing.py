"""A whole StreamHouse on a temporary directory and free ports, for our tests and yours.

    with Stack(tmp_path) as stack:
        client = Client(stack.grpc_address)

The stack runs under supervisord exactly as `streamhouse up` does; `kill(program)` sends
SIGKILL to one process (supervisord restarts it), `restart()` stops and starts everything.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamhouse.cli import SUPERVISORD_CONF, prepare_data_dir, stack_environment
from streamhouse.config import load_settings
from streamhouse.rings import unlink_all

MiB = 1024 * 1024

# Small rings and cache so many test stacks fit side by side.
TEST_SETTINGS = {
    "STREAMHOUSE_PRODUCE_RING_BYTES": str(32 * MiB),
    "STREAMHOUSE_SEALED_RING_BYTES": str(32 * MiB),
    "STREAMHOUSE_COMMITTED_RING_BYTES": str(32 * MiB),
    "STREAMHOUSE_ACK_RING_BYTES": str(4 * MiB),
    "STREAMHOUSE_FETCH_REQUEST_RING_BYTES": str(2 * MiB),
    "STREAMHOUSE_FETCH_RESPONSE_RING_BYTES": str(32 * MiB),
    "STREAMHOUSE_MAX_SEGMENT_BYTES": str(8 * MiB),
    "STREAMHOUSE_MAX_BATCH_BYTES": str(8 * MiB),
    "STREAMHOUSE_MAX_FETCH_BYTES": str(8 * MiB),
    "STREAMHOUSE_CACHE_BYTES": str(64 * MiB),
    "STREAMHOUSE_FLUSH_INTERVAL_MS": "20",
    "STREAMHOUSE_LOG_LEVEL": "INFO",
    # Every metadata call made on an event loop raises (metadata/store.py rule 6).
    "STREAMHOUSE_DEBUG_LOOP_CALLS": "1",
}

PROGRAMS = ("ingest", "segmenter", "uploader", "reader")
# Pause between polls of supervisorctl while waiting for a process state (bounded waits).
POLL_S = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StackError(RuntimeError):
    pass


class Stack:
    """One StreamHouse stack (supervisord + four processes) on `data_dir`."""

    def __init__(
        self, data_dir: os.PathLike[str] | str, env: Mapping[str, str] | None = None
    ) -> None:
        self.data_dir = pathlib.Path(data_dir).resolve()
        self.grpc_port = free_port()
        self.kafka_port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMHOUSE_")}
        base.update(TEST_SETTINGS)
        base.update(
            {
                "STREAMHOUSE_DATA_DIR": str(self.data_dir),
                "STREAMHOUSE_GRPC_LISTEN": f"127.0.0.1:{self.grpc_port}",
                "STREAMHOUSE_KAFKA_LISTEN": f"127.0.0.1:{self.kafka_port}",
            }
        )
        base.update(env or {})
        self.settings = load_settings(base)
        self.env = stack_environment(self.settings, base)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 60) -> Stack:
        prepare_data_dir(self.settings)
        log = open(self.data_dir / "logs" / "stack-console.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(SUPERVISORD_CONF)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Blocks until every program runs and the gRPC health check says SERVING."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.grpc_address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise StackError(f"supervisord exited early; see {self.data_dir}/logs")
                try:
                    remaining = max(0.1, deadline - time.monotonic())
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(),
                        timeout=min(remaining, 2),
                        wait_for_ready=True,
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING and all(
                        self.pid(p) for p in PROGRAMS
                    ):
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(f"stack not ready after {timeout}s; see {self.data_dir}/logs")
                time.sleep(POLL_S)

    def supervisorctl(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(SUPERVISORD_CONF), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip()

    def pid(self, program: str) -> int:
        """The pid of a running program, 0 when it is not running."""
        text = self.supervisorctl("pid", program)
        return int(text) if text.isdigit() else 0

    def kill(self, program: str) -> int:
        """SIGKILLs one program; returns the killed pid (supervisord restarts it)."""
        pid = self.pid(program)
        if not pid:
            raise StackError(f"{program} is not running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, program: str, old_pid: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(program)
            if pid and pid != old_pid:
                return pid
            time.sleep(POLL_S)
        raise StackError(f"{program} did not restart within {timeout}s")

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        unlink_all(self.settings)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
