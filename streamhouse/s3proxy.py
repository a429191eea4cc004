"""An S3 proxy on 127.0.0.1 that counts (and can slow) the requests and bytes passing through it:
shared by the lifecycle fault tests (tests/faults/lifecycle_tools.py) and the benches
(bench/lifecycle_bench.py, the harness in bench/harness/).

`S3CountingProxy` sits between an S3 client (StreamHouse processes, a peer broker) and an S3
server such as SeaweedFS (point AWS_ENDPOINT_URL at `proxy.endpoint`). It reads each HTTP/1.1
request from the client (request line, headers and a body framed by Content-Length or chunked
transfer coding), counts it by kind, optionally waits `delay_s` before forwarding it, and
forwards the bytes unchanged; responses are piped back untouched (their bytes are counted, not
parsed). Kinds: ``GET`` (object reads, ranged or not), ``LIST`` (a GET of the bucket with
``list-type=``), ``PUT``, ``HEAD``, ``DELETE`` and ``POST`` (batch deletes, multipart
uploads). Counting the wire is the honest request count of a client: it sees every request,
retries included, whatever its caches do.

Bytes (`traffic()`): ``sent`` is the request bytes clients sent (heads and bodies, chunk framing
included), ``received`` the response bytes they got back (status lines, headers and bodies).
Without TLS these are the bytes on the wire; a PUT's payload is within ``sent`` and a GET's
within ``received``.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable

from streamhouse.testing import free_port

#: Largest request head (request line + headers) the proxy accepts.
MAX_HEAD_BYTES = 1 << 20
#: Bytes copied per read of a body or a response.
CHUNK = 256 * 1024


class ProxyError(RuntimeError):
    """The proxy could not start or met a request it cannot frame (the message says which)."""


class S3CountingProxy:
    """A counting, optionally slowing HTTP proxy on 127.0.0.1, in a thread of its own."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        #: Added before each request is forwarded while above zero.
        self.delay_s = 0.0
        self._counts: collections.Counter[str] = collections.Counter()
        self._bytes = {"sent": 0, "received": 0}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3-counting-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> dict[str, int]:
        """Requests forwarded since the last `reset`, by kind."""
        with self._lock:
            return dict(self._counts)

    def traffic(self) -> dict[str, int]:
        """Bytes since the last `reset`: ``sent`` by clients (requests), ``received`` by them
        (responses)."""
        with self._lock:
            return dict(self._bytes)

    def reset(self) -> dict[str, int]:
        """Zeroes the counters (requests and bytes); returns the request counts they were."""
        with self._lock:
            before = dict(self._counts)
            self._counts.clear()
            self._bytes = {"sent": 0, "received": 0}
        return before

    def start(self) -> S3CountingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise ProxyError("the counting S3 proxy did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> S3CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- the proxy thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, limit=MAX_HEAD_BYTES)
        )
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        # Connections still open end here, inside the loop: closing their transports needs it.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def _count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def _add_bytes(self, direction: str, n: int) -> None:
        with self._lock:
            self._bytes[direction] += n

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            upstream, to_upstream = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port, limit=MAX_HEAD_BYTES
            )
        except OSError:
            to_client.close()
            return
        back = asyncio.ensure_future(_pipe(upstream, to_client, self._add_bytes))
        try:
            await self._requests(client, to_upstream)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProxyError):
            pass
        finally:
            to_upstream.close()
            try:
                await back
            finally:
                to_client.close()

    async def _requests(self, client: asyncio.StreamReader, out: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await client.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise ProxyError("a request head cut short") from exc
                return  # the client closed between requests
            line, _, rest = head.partition(b"\r\n")
            method, _, target = line.decode("latin-1").partition(" ")
            headers = {}
            for raw in rest.split(b"\r\n"):
                name, sep, value = raw.partition(b":")
                if sep:
                    headers[name.strip().lower().decode("latin-1")] = value.strip()
            kind = method.upper()
            if kind == "GET" and "list-type=" in target:
                kind = "LIST"
            self._count(kind)
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)  # the fault itself: a slow store
            out.write(head)
            if b"chunked" in headers.get("transfer-encoding", b"").lower():
                body = await _copy_chunked(client, out)
            else:
                body = await _copy_exactly(client, out, int(headers.get("content-length", b"0")))
            self._add_bytes("sent", len(head) + body)
            await out.drain()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    add_bytes: Callable[[str, int], None],
) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            add_bytes("received", len(chunk))
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _copy_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> int:
    """Copies exactly n bytes; returns n."""
    total = n
    while n > 0:
        chunk = await reader.read(min(n, CHUNK))
        if not chunk:
            raise ProxyError(f"a request body ended {n} bytes short")
        writer.write(chunk)
        n -= len(chunk)
        await writer.drain()
    return total


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copies a chunked body up to its final blank line; returns the bytes copied."""
    copied = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        copied += len(size_line)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the blank line that ends the body
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                copied += len(trailer)
                if trailer == b"\r\n":
                    return copied
        copied += await _copy_exactly(reader, writer, size + 2)  # the chunk and its CRLF
