"""Ingest's health follows the object store (ingest/serving.py): a stack whose S3 endpoint
refuses connections says NOT_SERVING with the reason (health check, `streamhouse status`);
once the store answers it says SERVING; when uploads then keep failing it says NOT_SERVING
again, and SERVING once the store is back.

The store is SeaweedFS behind a TCP forwarder the test opens and closes (closing it also cuts
the connections in use), so "the store is down" is a refused connection on a real port."""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import subprocess
import sys
import threading
from typing import Any

import grpc
import pytest
from confluent_kafka import Producer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamhouse.testing import Stack, free_port, wait_until


class Forwarder:
    """127.0.0.1:`port` -> 127.0.0.1:`target`, while open."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def health(address: str) -> str:
    """SERVING / NOT_SERVING, or UNREACHABLE while nothing answers."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def status(stack: Stack) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "streamhouse.cli", "status", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout)


def test_health_follows_the_object_store(
    tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    seaweed: Any = request.getfixturevalue("seaweed")
    forwarder = Forwarder(seaweed.port)
    env = seaweed.env()
    env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{forwarder.port}"
    env["STREAMHOUSE_STORE_TIMEOUT_MS"] = "5000"
    env["STREAMHOUSE_UPLOAD_ATTEMPTS"] = "3"
    stack = Stack(tmp_path / "stack", env)
    stack.launch()
    try:
        # The endpoint refuses connections: ingest answers its health check, NOT_SERVING.
        wait_until(lambda: health(stack.grpc_address) == "NOT_SERVING", 90, "NOT_SERVING")
        rc, shown = status(stack)
        assert rc == 1
        assert shown["serving"]["status"] == "NOT_SERVING"
        assert "is not usable" in shown["serving"]["reason"]
        assert "STREAMHOUSE_OBJECT_STORE" in shown["serving"]["reason"]
        assert not shown["object_store"]["ok"]

        forwarder.open()
        wait_until(
            lambda: health(stack.grpc_address) == "SERVING", 30, "SERVING once the store is up"
        )
        stack.wait_ready(30)
        rc, shown = status(stack)
        assert shown["serving"] == {"status": "SERVING", "reason": None}, shown
        assert rc == 0, shown

        producer = Producer({"bootstrap.servers": stack.kafka_address, "linger.ms": 0})
        delivered: list[Any] = []
        producer.produce("serving", b"stored", on_delivery=lambda err, _m: delivered.append(err))
        assert producer.flush(60) == 0 and delivered == [None], delivered

        # The store goes away under traffic: the uploader's PUTs keep failing.
        forwarder.close()
        for i in range(5):
            producer.produce("serving", f"lost-{i}".encode())
            producer.poll(0)
        wait_until(lambda: health(stack.grpc_address) == "NOT_SERVING", 60, "NOT_SERVING again")
        rc, shown = status(stack)
        assert rc == 1 and shown["serving"]["status"] == "NOT_SERVING"
        assert shown["serving"]["reason"], shown

        forwarder.open()
        wait_until(lambda: health(stack.grpc_address) == "SERVING", 90, "SERVING once it is back")
        producer.flush(60)
        log = (stack.data_dir / "logs" / "ingest.log").read_text()
        assert "Traceback" not in log
        assert "SERVING" in log
    finally:
        forwarder.close()
        stack.stop()
