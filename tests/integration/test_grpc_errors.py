"""Every bad request gets a specific status and a message that says what is wrong."""

from __future__ import annotations

import socket

import grpc
import pytest

from streamhouse.client import Client, Record, StreamHouseError
from streamhouse.testing import Stack


def status_of(call) -> tuple[str, str]:
    with pytest.raises(StreamHouseError) as err:
        call()
    return err.value.code.name, str(err.value)


def test_admin_errors(stack: Stack) -> None:
    with Client(stack.grpc_address) as c:
        c.create_topic("exists", 2)
        code, msg = status_of(lambda: c.create_topic("exists", 1))
        assert code == "ALREADY_EXISTS" and "exists" in msg
        for bad in ("", "a b", "x" * 250, "..", "naïve"):
            code, msg = status_of(lambda bad=bad: c.create_topic(bad, 1))
            assert code == "INVALID_ARGUMENT", bad
        code, msg = status_of(lambda: c.create_topic("badcfg", 1, {"retention.ms": "soon"}))
        assert code == "INVALID_ARGUMENT" and "retention.ms" in msg
        code, msg = status_of(lambda: c.create_topic("unknowncfg", 1, {"no.such.key": "1"}))
        assert code == "INVALID_ARGUMENT" and "no.such.key" in msg
        assignment = {"streamhouse.replica.assignment": "0:0"}
        code, msg = status_of(lambda: c.create_topic("assigned", 1, assignment))
        assert code == "INVALID_ARGUMENT" and "replica assignment" in msg
        code, msg = status_of(lambda: c.alter_topic_config("exists", assignment))
        assert code == "INVALID_ARGUMENT" and "replica assignment" in msg
        code, msg = status_of(
            lambda: c.alter_topic_config("exists", delete_entries=list(assignment))
        )
        assert code == "INVALID_ARGUMENT" and "replica assignment" in msg
        # Not set on the topic, max.message.bytes is what this agent applies (max_batch_bytes).
        applied = str(stack.settings.max_batch_bytes)
        assert c.get_topic("exists").config["max.message.bytes"] == applied
        limited = c.create_topic("limited", 1, {"max.message.bytes": "1000"})
        assert limited.config["max.message.bytes"] == "1000"
        for call in (
            lambda: c.get_topic("missing"),
            lambda: c.delete_topic("missing"),
            lambda: c.produce("missing", b"v"),
            lambda: c.consume("missing", 0, 0),
        ):
            code, msg = status_of(call)
            assert code == "NOT_FOUND" and "missing" in msg


def test_produce_and_consume_errors(stack: Stack) -> None:
    with Client(stack.grpc_address) as c:
        c.create_topic("t", 2)
        code, msg = status_of(lambda: c.produce("t", b"v", partition=2))
        assert code == "INVALID_ARGUMENT" and "partition 2" in msg
        code, msg = status_of(lambda: c.produce_batch("t", [], partition=0))
        assert code == "INVALID_ARGUMENT" and "empty" in msg
        big = stack.settings.max_record_bytes + 1
        code, msg = status_of(lambda: c.produce("t", b"x" * big, partition=0))
        assert code == "INVALID_ARGUMENT" and "limit" in msg
        many = [Record(value=b"x" * 900_000) for _ in range(10)]
        code, msg = status_of(lambda: c.produce_batch("t", many, partition=0))
        assert code == "INVALID_ARGUMENT" and "split" in msg
        code, msg = status_of(lambda: c.consume("t", 5, 0))
        assert code == "INVALID_ARGUMENT" and "partition 5" in msg
        c.produce("t", b"v", partition=0)
        code, msg = status_of(lambda: c.consume("t", 0, 7))
        assert code == "OUT_OF_RANGE" and "0..1" in msg
        code, msg = status_of(lambda: c.consume("t", 0, -5))
        assert code == "INVALID_ARGUMENT"


def test_garbage_on_the_grpc_port_harms_no_other_client(stack: Stack) -> None:
    with Client(stack.grpc_address) as c:
        c.create_topic("survivor", 1)
        for garbage in (b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 40):
            with socket.create_connection(("127.0.0.1", stack.grpc_port), timeout=5) as sock:
                # The server answers garbage by closing this connection (maybe mid-send).
                try:
                    sock.sendall(garbage)
                    while sock.recv(4096):
                        pass
                except (ConnectionResetError, BrokenPipeError):
                    pass
        # A malformed protobuf body on a real HTTP/2 call is refused, not fatal.
        with grpc.insecure_channel(stack.grpc_address) as channel:
            raw = channel.unary_unary("/streamhouse.v1.StreamHouse/Produce")
            with pytest.raises(grpc.RpcError) as err:
                raw(b"\xff\xff\xff\xff\x0f", timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "ProduceRequest" in err.value.details()
        assert c.produce("survivor", b"still here", partition=0) == (0, 0)
