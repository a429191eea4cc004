"""Unit tests for streamctl and the client helpers it builds on (no server needed)."""

from __future__ import annotations

import argparse
import base64
import io
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from streamhouse import client as client_module
from streamhouse import streamctl
from streamhouse.client import (
    IdempotentProducer,
    Record,
    StreamHouseError,
    record_from_pb,
    record_to_pb,
)
from streamhouse.proto import streamhouse_pb2 as pb

# -- helpers ---------------------------------------------------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Runs streamctl.main and returns (exit code, stdout, stderr)."""
    code = streamctl.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("streamctl: error: "), err
    return lines[0]


class FakeClient:
    """Stands in for streamhouse.client.Client inside streamctl.main."""

    instances: list[FakeClient] = []

    def __init__(self, address: str | None = None, timeout: float = 30.0) -> None:
        self.address = address
        self.calls: list[tuple[str, Any]] = []
        self.log: list[Record] = []
        self.closed = False
        self.error: StreamHouseError | None = None
        self.interrupt_after: int | None = None
        FakeClient.instances.append(self)

    def close(self) -> None:
        self.closed = True

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error

    def create_topic(self, name: str, partitions: int = 1, config: Any = None) -> pb.Topic:
        self.calls.append(("create_topic", (name, partitions, config)))
        self._maybe_fail()
        return pb.Topic(name=name, partitions=partitions, config=config or {}, topic_id="id-1")

    def get_topic(self, name: str) -> pb.Topic:
        self.calls.append(("get_topic", name))
        raise StreamHouseError(grpc.StatusCode.NOT_FOUND, f"topic '{name}' does not exist")

    def produce(self, topic: str, value: Any, key: Any = None, headers: Any = (), partition=None):
        self.calls.append(("produce", (topic, value, key, list(headers), partition)))
        return 2, 41

    def produce_batch(self, topic: str, records: Any, partition: int | None = None):
        self.calls.append(("produce_batch", (topic, list(records), partition)))
        base = len(self.log)
        self.log.extend(records)
        return pb.ProduceBatchResponse(
            partition=partition or 0,
            base_offset=base,
            record_count=len(records),
            results=[
                pb.PartitionResult(
                    partition=partition or 0, base_offset=base, record_count=len(records)
                )
            ],
        )

    def consume(
        self,
        topic,
        partition,
        offset,
        max_records=0,
        max_bytes=0,
        max_wait_ms=0,
        isolation="read_uncommitted",
    ):
        self.calls.append(("consume", (topic, partition, offset, max_records, max_wait_ms)))
        self._maybe_fail()
        start = 0 if offset == -2 else len(self.log) if offset == -1 else offset
        end = min(len(self.log), start + (max_records or 3))  # small pages to exercise paging
        records = [
            Record(key=r.key, value=r.value, headers=r.headers, offset=i)
            for i, r in enumerate(self.log[start:end], start)
        ]
        return records, end, len(self.log), 0

    def subscribe(
        self, topic, partition, offset, max_records=0, isolation="read_uncommitted"
    ) -> Iterator[Record]:
        self.calls.append(("subscribe", (topic, partition, offset)))
        number = 0
        while True:
            if self.interrupt_after is not None and number >= self.interrupt_after:
                raise KeyboardInterrupt
            yield Record(value=f"v{number}".encode(), offset=number)
            number += 1

    def commit_offset(self, group, topic, partition, offset, metadata="") -> None:
        self.calls.append(("commit_offset", (group, topic, partition, offset, metadata)))

    def get_offset(self, group, topic, partition) -> tuple[int, str]:
        self.calls.append(("get_offset", (group, topic, partition)))
        return 7, "meta"

    def describe_cluster(self) -> pb.DescribeClusterResponse:
        self.calls.append(("describe_cluster", None))
        self._maybe_fail()
        return CLUSTER


NOW_MS = 1_700_000_010_000
CLUSTER = pb.DescribeClusterResponse(
    answered_by="a",
    now_ms=NOW_MS,
    agents=[
        pb.Agent(
            agent_id="b",
            node_id=1,
            kafka_address="10.0.0.2:9092",
            grpc_address="10.0.0.2:50051",
            zone="z2",
            alive=False,
            state="expired",
            started_at_ms=NOW_MS - 60_000,
            heartbeat_at_ms=NOW_MS - 9_500,
            lease_until_ms=NOW_MS - 5_500,
        ),
        pb.Agent(
            agent_id="a",
            node_id=0,
            kafka_address="10.0.0.1:9092",
            grpc_address="10.0.0.1:50051",
            alive=True,
            state="alive",
            started_at_ms=NOW_MS - 60_000,
            heartbeat_at_ms=NOW_MS - 400,
            lease_until_ms=NOW_MS + 3_600,
        ),
    ],
)


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeClient]]:
    FakeClient.instances = []
    monkeypatch.setattr(streamctl, "Client", FakeClient)
    yield FakeClient


# -- --help ----------------------------------------------------------------------------------

HELP_CASES = [
    ([], ["--server", "--output", "topic", "produce", "consume", "offset"]),
    (["topic"], ["create", "list", "get", "delete"]),
    (["topic", "create"], ["NAME", "--partitions", "--retention-ms", "--config", "--server"]),
    (["topic", "list"], ["--output", "--server"]),
    (["topic", "get"], ["NAME", "--output"]),
    (["topic", "delete"], ["NAME", "--server"]),
    (
        ["produce"],
        ["TOPIC", "--partition", "--key", "--value", "--file", "--batch-size", "--output"],
    ),
    (["consume"], ["TOPIC", "--partition", "--offset", "--limit", "--follow", "--max-wait-ms"]),
    (["offset"], ["commit", "get"]),
    (
        ["offset", "commit"],
        ["--group", "--topic", "--partition", "--offset", "--metadata", "--output"],
    ),
    (["offset", "get"], ["--group", "--topic", "--partition", "--output"]),
]


@pytest.mark.parametrize(("argv", "options"), HELP_CASES, ids=lambda v: " ".join(v) or "-")
def test_help_exits_zero_and_lists_options(
    argv: list[str], options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*argv, "--help"], capsys)
    assert code == 0
    assert err == ""
    assert out.startswith("usage: streamctl")
    for option in options:
        assert option in out, f"{option} missing from help of {argv}"


# -- usage errors ----------------------------------------------------------------------------

USAGE_ERRORS = [
    ([], "required"),
    (["bogus"], "invalid choice"),
    (["topic"], "required"),
    (["topic", "create", "t"], "--partitions"),
    (["topic", "create", "t", "--partitions", "zero"], "--partitions"),
    (["topic", "create", "t", "--partitions", "0"], "--partitions"),
    (["topic", "create", "t", "--partitions", "1", "--config", "novalue"], "KEY=VALUE"),
    (["topic", "create", "t", "--partitions", "1", "--retention-ms", "-5"], "--retention-ms"),
    (["topic", "get"], "NAME"),
    (["produce"], "TOPIC"),
    (["produce", "t", "--value", "v", "--file", "f"], "not allowed with"),
    (["produce", "t", "--partition", "-1", "--value", "v"], "--partition"),
    (["produce", "t", "--value", "v", "--key-separator", ":"], "--key-separator"),
    (["produce", "t", "--file", "/nonexistent/streamctl-input.txt"], "--file"),
    (["consume", "t", "--offset", "0"], "--partition"),
    (["consume", "t", "--partition", "0"], "--offset"),
    (["consume", "t", "--partition", "0", "--offset", "soon"], "invalid offset"),
    (["consume", "t", "--partition", "0", "--offset", "-3"], "invalid offset"),
    (["consume", "t", "--partition", "0", "--offset", "0", "--limit", "0"], "--limit"),
    (["consume", "t", "--partition", "0", "--offset", "0", "--output", "xml"], "--output"),
    (["offset", "commit", "--group", "g", "--topic", "t", "--partition", "0"], "--offset"),
    (["offset", "get", "--group", "g", "--topic", "t"], "--partition"),
    (["--output", "yaml", "topic", "list"], "--output"),
]


@pytest.mark.parametrize(("argv", "fragment"), USAGE_ERRORS, ids=lambda v: str(v))
def test_usage_errors_exit_2_with_one_line(
    argv: list[str],
    fragment: str,
    capsys: pytest.CaptureFixture[str],
    fake_client: type[FakeClient],
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert fragment in assert_one_error_line(err)
    assert all(not c.calls for c in fake_client.instances), "no RPC on a usage error"


# -- argument values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("earliest", -2),
        ("EARLIEST", -2),
        ("latest", -1),
        (" Latest ", -1),
        ("-2", -2),
        ("-1", -1),
        ("0", 0),
        ("12345678901", 12345678901),
    ],
)
def test_parse_offset_words_and_numbers(text: str, expected: int) -> None:
    assert streamctl.parse_offset(text) == expected


@pytest.mark.parametrize("text", ["", "first", "-3", "1.5", "0x10", "earliest1"])
def test_parse_offset_rejects_other_values(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        streamctl.parse_offset(text)


def test_offset_words_reach_the_request(fake_client: type[FakeClient], capsys) -> None:
    for word, expected in [("earliest", -2), ("-2", -2), ("latest", -1), ("-1", -1), ("5", 5)]:
        code, _, _ = run(["consume", "t", "--partition", "1", "--offset", word], capsys)
        assert code == 0
        assert fake_client.instances[-1].calls[0] == ("consume", ("t", 1, expected, 0, 0))


def test_global_options_work_before_and_after_the_command(
    fake_client: type[FakeClient], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMHOUSE_ADDR", "env-host:1")
    argv = ["offset", "get", "--group", "g", "--topic", "t", "--partition", "0"]
    code, out, _ = run(["--server", "a:1", "--output", "json", *argv], capsys)
    assert code == 0
    assert fake_client.instances[-1].address == "a:1"
    assert json.loads(out)["offset"] == 7
    code, out, _ = run(
        ["offset", "get", "--group", "g", "--topic", "t", "--partition", "0", "--server", "b:2"],
        capsys,
    )
    assert code == 0
    assert fake_client.instances[-1].address == "b:2"
    assert out == "7\tmeta\n"
    # Without --server the client resolves STREAMHOUSE_ADDR itself (address None).
    run(["offset", "get", "--group", "g", "--topic", "t", "--partition", "0"], capsys)
    assert fake_client.instances[-1].address is None


def test_client_address_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMHOUSE_ADDR", raising=False)
    with client_module.Client() as c:
        assert c.address == "127.0.0.1:50051"
    monkeypatch.setenv("STREAMHOUSE_ADDR", "example:9")
    with client_module.Client() as c:
        assert c.address == "example:9"
    with client_module.Client("explicit:1") as c:
        assert c.address == "explicit:1"


def test_topic_create_passes_config_and_retention(fake_client, capsys) -> None:
    argv = ["topic", "create", "t", "--partitions", "3", "--retention-ms", "60000"]
    argv += ["--config", "a=1", "b=x=y", "--config", "c=", "--output", "json"]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    config = {"a": "1", "b": "x=y", "c": "", "retention.ms": "60000"}
    assert fake_client.instances[-1].calls == [("create_topic", ("t", 3, config))]
    topic = json.loads(out)
    assert topic["name"] == "t" and topic["partitions"] == 3 and topic["config"] == config


# -- reading records -------------------------------------------------------------------------


def test_read_record_lines_from_file(tmp_path) -> None:
    path = tmp_path / "records.txt"
    path.write_bytes(b"first\nwith\ttab\r\n\n\xff\xfe binary\nno newline at end")
    with open(path, "rb") as stream:
        lines = list(streamctl.read_record_lines(stream))
    assert lines == [b"first", b"with\ttab", b"", b"\xff\xfe binary", b"no newline at end"]


def test_read_record_lines_trailing_newline_adds_no_record() -> None:
    lines = list(streamctl.read_record_lines(io.BytesIO(b"a\nb\n")))
    assert lines == [b"a", b"b"]
    assert list(streamctl.read_record_lines(io.BytesIO(b""))) == []


def test_lines_to_records_with_key_and_separator() -> None:
    records = list(streamctl.lines_to_records([b"v1", b"v2"], key=b"k"))
    assert [(r.key, r.value) for r in records] == [(b"k", b"v1"), (b"k", b"v2")]
    records = list(streamctl.lines_to_records([b"k1:v:1", b"k2:"], key_separator=b":"))
    assert [(r.key, r.value) for r in records] == [(b"k1", b"v:1"), (b"k2", b"")]
    with pytest.raises(streamctl.CommandError, match="line 2"):
        list(streamctl.lines_to_records([b"k:v", b"nosep"], key_separator=b":"))


def test_batched() -> None:
    records = [Record(value=bytes([i])) for i in range(7)]
    assert [len(b) for b in streamctl.batched(records, 3)] == [3, 3, 1]
    assert list(streamctl.batched([], 3)) == []


def test_produce_from_file_sends_batches(fake_client, capsys, tmp_path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"".join(b"line-%d\n" % i for i in range(2500)))
    argv = ["produce", "t", "--partition", "1", "--key", "k", "--file", str(path)]
    code, out, err = run([*argv, "--output", "json"], capsys)
    assert (code, err) == (0, "")
    calls = fake_client.instances[-1].calls
    assert [len(c[1][1]) for c in calls] == [1000, 1000, 500]
    assert all(c[0] == "produce_batch" and c[1][2] == 1 for c in calls)
    sent = [r for c in calls for r in c[1][1]]
    assert sent[0] == Record(key=b"k", value=b"line-0")
    assert sent[-1].value == b"line-2499"
    summary = json.loads(out)
    assert summary["record_count"] == 2500
    assert summary["partitions"] == [
        {"partition": 1, "first_offset": 0, "last_offset": 2499, "record_count": 2500}
    ]


def test_produce_from_stdin(fake_client, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(b"a\nb\nc\n")))
    code, out, _ = run(["produce", "t", "--batch-size", "2"], capsys)
    assert code == 0
    calls = fake_client.instances[-1].calls
    assert [[r.value for r in c[1][1]] for c in calls] == [[b"a", b"b"], [b"c"]]
    assert out.startswith("produced 3 records to t")


def test_produce_single_value(fake_client, capsys) -> None:
    argv = ["produce", "t", "--key", "k", "--value", "", "--header", "h=1", "--output", "json"]
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert fake_client.instances[-1].calls == [("produce", ("t", b"", b"k", [("h", b"1")], None))]
    assert json.loads(out) == {"topic": "t", "partition": 2, "offset": 41}


# -- output formatting -----------------------------------------------------------------------


def test_record_json_utf8_and_binary() -> None:
    record = Record(
        key=b"\xff\x00k",
        value="héllo ✓".encode(),
        headers=[("h1", b"\x80"), ("h2", None), ("h3", b"t")],
        timestamp_ms=1700000000000,
        offset=9,
    )
    obj = json.loads(streamctl.record_to_json(record, topic="t", partition=3))
    assert obj == {
        "topic": "t",
        "partition": 3,
        "offset": 9,
        "timestamp_ms": 1700000000000,
        "key": base64.b64encode(b"\xff\x00k").decode(),
        "key_base64": True,
        "value": "héllo ✓",
        "value_base64": False,
        "headers": [
            {"key": "h1", "value": base64.b64encode(b"\x80").decode(), "value_base64": True},
            {"key": "h2", "value": None, "value_base64": False},
            {"key": "h3", "value": "t", "value_base64": False},
        ],
    }
    assert base64.b64decode(obj["key"]) == b"\xff\x00k"


def test_record_json_null_and_empty_differ_and_stay_on_one_line() -> None:
    line = streamctl.record_to_json(Record(key=None, value=b"a\nb", offset=0))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["key"] is None and obj["key_base64"] is False and obj["value"] == "a\nb"
    assert json.loads(streamctl.record_to_json(Record(key=b"")))["key"] == ""


def test_record_text_escapes() -> None:
    text = streamctl.record_to_text(Record(key=None, value=b"a\nb\t\xff", offset=4))
    assert text == "4\t(null)\ta\\nb\\t\\xff"
    assert "\n" not in text


def test_consume_json_pages_until_limit(fake_client, capsys, monkeypatch) -> None:
    def fake_factory(address=None, timeout=30.0):
        fake = FakeClient(address, timeout)
        fake.log = [Record(key=b"k%d" % i, value=b"\xff%d" % i) for i in range(10)]
        return fake

    monkeypatch.setattr(streamctl, "Client", fake_factory)
    argv = ["consume", "t", "--partition", "0", "--offset", "2", "--limit", "5", "--output", "json"]
    code, out, _ = run(argv, capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["offset"] for r in rows] == [2, 3, 4, 5, 6]
    assert [r["key"] for r in rows] == ["k2", "k3", "k4", "k5", "k6"]
    assert all(r["value_base64"] for r in rows)
    assert base64.b64decode(rows[0]["value"]) == b"\xff2"

    # Without --limit it reads (in pages) until the high watermark.
    code, out, _ = run(["consume", "t", "--partition", "0", "--offset", "earliest"], capsys)
    assert code == 0 and len(out.splitlines()) == 10
    calls = fake_client.instances[-1].calls
    assert [c[1][2] for c in calls] == [-2, 3, 6, 9]


def test_follow_stops_at_limit_and_ctrl_c_exits_quietly(fake_client, capsys, monkeypatch) -> None:
    argv = ["consume", "t", "--partition", "0", "--offset", "latest", "--follow"]
    code, out, err = run([*argv, "--limit", "3"], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["0\t(null)\tv0", "1\t(null)\tv1", "2\t(null)\tv2"]

    def interrupting(address=None, timeout=30.0):
        fake = FakeClient(address, timeout)
        fake.interrupt_after = 2
        return fake

    monkeypatch.setattr(streamctl, "Client", interrupting)
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 2


# -- server errors ---------------------------------------------------------------------------


def test_server_error_exits_1_with_one_line(fake_client, capsys) -> None:
    code, out, err = run(["topic", "get", "missing"], capsys)
    assert (code, out) == (1, "")
    assert assert_one_error_line(err) == (
        "streamctl: error: NOT_FOUND: topic 'missing' does not exist"
    )
    assert fake_client.instances[-1].closed


def test_multiline_server_message_is_one_line(fake_client, capsys, monkeypatch) -> None:
    def failing(address=None, timeout=30.0):
        fake = FakeClient(address, timeout)
        fake.error = StreamHouseError(grpc.StatusCode.INTERNAL, "boom\n  at line 2\n")
        return fake

    monkeypatch.setattr(streamctl, "Client", failing)
    code, _, err = run(["consume", "t", "--partition", "0", "--offset", "0"], capsys)
    assert code == 1
    assert assert_one_error_line(err) == "streamctl: error: INTERNAL: boom at line 2"


def test_unreachable_server_exits_1(capsys) -> None:
    # Port 1 on localhost refuses connections; no StreamHouse server is involved.
    code, out, err = run(["--server", "127.0.0.1:1", "topic", "list"], capsys)
    assert (code, out) == (1, "")
    assert assert_one_error_line(err).startswith("streamctl: error: UNAVAILABLE: ")


# -- client pieces ---------------------------------------------------------------------------


def test_streamhouse_error_str() -> None:
    error = StreamHouseError(grpc.StatusCode.NOT_FOUND, "topic 'x' does not exist")
    assert str(error) == "NOT_FOUND: topic 'x' does not exist"
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.message == "topic 'x' does not exist"


def test_record_pb_round_trip_keeps_absent_and_empty_apart() -> None:
    message = record_to_pb(Record(key=None, value=b"", headers=[("a", None), ("b", b"")]))
    assert not message.HasField("key")
    assert message.HasField("value") and message.value == b""
    assert not message.headers[0].HasField("value")
    assert message.headers[1].HasField("value")
    back = record_from_pb(message)
    assert back == Record(key=None, value=b"", headers=[("a", None), ("b", b"")], offset=0)
    tombstone = record_to_pb(Record(key=b"k"))
    assert tombstone.HasField("key") and not tombstone.HasField("value")
    assert record_from_pb(tombstone).value is None


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "injected"


class _FlakyStub:
    """Fails ProduceBatch with the given codes first, then succeeds."""

    def __init__(self, failures: list[grpc.StatusCode]) -> None:
        self.failures = list(failures)
        self.requests: list[pb.ProduceBatchRequest] = []

    def InitProducer(self, request, timeout=None):  # noqa: N802 - gRPC method name
        return pb.InitProducerResponse(producer_id=77, producer_epoch=3)

    def ProduceBatch(self, request, timeout=None):  # noqa: N802 - gRPC method name
        copy = pb.ProduceBatchRequest()
        copy.CopyFrom(request)
        self.requests.append(copy)
        if self.failures:
            raise _RpcError(self.failures.pop(0))
        return pb.ProduceBatchResponse(partition=request.partition, record_count=1)


def _flaky_client(failures: list[grpc.StatusCode]) -> tuple[client_module.Client, _FlakyStub]:
    client = client_module.Client("127.0.0.1:1")
    stub = _FlakyStub(failures)
    client._stub = stub  # type: ignore[assignment]
    return client, stub


def test_idempotent_producer_retries_with_same_sequence() -> None:
    codes = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
    client, stub = _flaky_client([*codes, grpc.StatusCode.ABORTED])
    sleeps: list[float] = []
    producer = IdempotentProducer(client, sleep=sleeps.append, initial_backoff=0.1)
    assert (producer.producer_id, producer.producer_epoch) == (77, 3)
    producer.produce_batch("t", 4, [Record(value=b"a"), Record(value=b"b")])
    assert len(stub.requests) == 4 and len(sleeps) == 3
    assert sleeps[0] <= 0.1 and sleeps[1] <= 0.2 and sleeps[2] <= 0.4
    for request in stub.requests:
        assert request.HasField("producer_id") and request.producer_id == 77
        assert (request.producer_epoch, request.base_sequence, request.partition) == (3, 0, 4)
    assert producer.sequence("t", 4) == 2
    client.produce_batch("t", [Record(value=b"c")], partition=4, idempotent_as=producer)
    assert stub.requests[-1].base_sequence == 2
    assert producer.sequence("t", 4) == 3 and producer.sequence("t", 5) == 0
    with pytest.raises(ValueError):
        client.produce_batch("t", [Record(value=b"c")], idempotent_as=producer)
    client.close()


def test_idempotent_producer_gives_up_and_keeps_sequence() -> None:
    client, stub = _flaky_client([grpc.StatusCode.UNAVAILABLE] * 10)
    producer = IdempotentProducer(client, max_attempts=3, sleep=lambda s: None)
    with pytest.raises(StreamHouseError) as info:
        producer.produce_batch("t", 0, [Record(value=b"a")])
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert len(stub.requests) == 3
    assert producer.sequence("t", 0) == 0

    client, stub = _flaky_client([grpc.StatusCode.INVALID_ARGUMENT])
    producer = IdempotentProducer(client, sleep=lambda s: None)
    with pytest.raises(StreamHouseError):
        producer.produce_batch("t", 0, [Record(value=b"a")])
    assert len(stub.requests) == 1  # not retryable


def test_plain_produce_batch_is_not_retried() -> None:
    client, stub = _flaky_client([grpc.StatusCode.UNAVAILABLE])
    with pytest.raises(StreamHouseError):
        client.produce_batch("t", [Record(value=b"a")])
    assert len(stub.requests) == 1
    assert not stub.requests[0].HasField("producer_id")
    assert not stub.requests[0].HasField("partition")


# -- cluster -----------------------------------------------------------------------------------


def test_cluster_prints_a_table_of_agents_by_node_id(
    fake_client: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["--server", "h:1", "cluster"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "AGENT", "STATE", "HEARTBEAT", "KAFKA", "GRPC", "ZONE"]
    assert lines[1].split() == [
        "0", "a", "alive", "0.4s", "ago", "10.0.0.1:9092", "10.0.0.1:50051", "-",
    ]  # fmt: skip
    assert lines[2].split() == [
        "1", "b", "expired", "9.5s", "ago", "10.0.0.2:9092", "10.0.0.2:50051", "z2",
    ]  # fmt: skip
    # Columns are aligned: every row starts its STATE column at the same place.
    words = ["STATE", "alive", "expired"]
    assert len({line.index(word) for line, word in zip(lines, words, strict=True)}) == 1
    assert fake_client.instances[0].calls == [("describe_cluster", None)]


@pytest.mark.parametrize("flags", [["cluster", "--json"], ["--output", "json", "cluster"]])
def test_cluster_json_is_one_object_per_agent(
    fake_client: type[FakeClient], capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    code, out, err = run(flags, capsys)
    assert (code, err) == (0, "")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["agent_id"] for r in rows] == ["a", "b"]
    assert rows[0] == {
        "agent_id": "a",
        "node_id": 0,
        "kafka_address": "10.0.0.1:9092",
        "grpc_address": "10.0.0.1:50051",
        "zone": "",
        "state": "alive",
        "alive": True,
        "seconds_since_heartbeat": 0.4,
        "started_at_ms": NOW_MS - 60_000,
        "heartbeat_at_ms": NOW_MS - 400,
        "lease_until_ms": NOW_MS + 3_600,
    }
    assert (rows[1]["state"], rows[1]["seconds_since_heartbeat"]) == ("expired", 9.5)


def test_cluster_server_error_is_one_line(
    fake_client: type[FakeClient], capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    original = FakeClient.__init__

    def failing(self: FakeClient, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.error = StreamHouseError(grpc.StatusCode.UNAVAILABLE, "metadata down")

    monkeypatch.setattr(FakeClient, "__init__", failing)
    code, out, err = run(["cluster"], capsys)
    assert code == 1 and out == ""
    assert assert_one_error_line(err) == "streamctl: error: UNAVAILABLE: metadata down"


def test_cluster_help_mentions_health(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["cluster", "--help"], capsys)
    assert code == 0
    assert "--json" in out and "expired" in out and "stopped" in out
