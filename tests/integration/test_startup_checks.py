"""Startup checks of ingest (streamhouse.process): an object store S3 rejects and a busy port
each give one log line naming the setting to fix, and no listener accepts produces."""

from __future__ import annotations

import pathlib
import socket
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamhouse.testing import Stack, wait_until


def wait_for_line(path: pathlib.Path, needle: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if needle in line]
            if lines:
                return lines
        time.sleep(0.1)
    text = path.read_text() if path.exists() else "(no log)"
    raise AssertionError(f"no line with {needle!r} in {path}:\n{text[-3000:]}")


def health_status(address: str) -> str:
    """The gRPC health check's answer (SERVING, NOT_SERVING), or UNREACHABLE."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return "UNREACHABLE"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_bucket_name_s3_rejects(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> None:
    seaweed: Any = request.getfixturevalue("seaweed")
    env = seaweed.env()
    env["STREAMHOUSE_OBJECT_STORE"] = "s3://Bad_Bucket"
    stack = Stack(tmp_path / "stack", env)
    stack.launch()
    try:
        log = stack.data_dir / "logs" / "ingest.log"
        lines = wait_for_line(log, "object store s3://Bad_Bucket is not usable")
        assert "set STREAMHOUSE_OBJECT_STORE" in lines[0]
        assert "\n" not in lines[0] and "Traceback" not in log.read_text()
        assert "Debug source" not in lines[0]  # obstore's dump is cut from the line
        # The listeners are up, and the health check says the stack cannot store anything.
        wait_until(lambda: health_status(stack.grpc_address) == "NOT_SERVING", 60, "NOT_SERVING")
        assert len(wait_for_line(log, "object store s3://Bad_Bucket is not usable")) == 1
    finally:
        stack.stop()


def test_busy_grpc_port(tmp_path: pathlib.Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = Stack(tmp_path / "stack", {"STREAMHOUSE_GRPC_LISTEN": f"127.0.0.1:{port}"})
        stack.launch()
        try:
            lines = wait_for_line(
                stack.data_dir / "logs" / "ingest.log",
                f"grpc_listen 127.0.0.1:{port} cannot be bound",
            )
            assert "set STREAMHOUSE_GRPC_LISTEN" in lines[0]
            assert "Traceback" not in (stack.data_dir / "logs" / "ingest.log").read_text()
        finally:
            stack.stop()
