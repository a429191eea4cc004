"""streamctl: a thin command line interface over :class:`streamhouse.client.Client`.

Examples::

    streamctl topic create events --partitions 3 --retention-ms 86400000
    streamctl produce events --key user-1 --value hello
    seq 1000 | streamctl produce events --partition 0
    streamctl consume events --partition 0 --offset earliest --limit 10 --output json
    streamctl offset commit --group g --topic events --partition 0 --offset 10
    streamctl cluster            # the agents of the cluster and their health (--json)
    streamctl topic alter-config events --set retention.bytes=1073741824 --delete retention.ms
    streamctl storage --cost     # bytes per topic and in total; the monthly bill vs. Kafka
    streamctl sql "CREATE MATERIALIZED VIEW v AS SELECT ..."   # through the sql service
    streamctl query list         # continuous queries: runner state, lag, rows/s (--json)
    streamctl query describe v   # one query: checkpoint, watermark, lag per partition, errors
    streamctl query drop v

Exit status: 0 on success, 1 when the server (or reading input) fails, 2 for usage errors;
every failure prints exactly one line on stderr, ``streamctl: error: ...``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, NoReturn

from streamhouse.client import (
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    EARLIEST,
    LATEST,
    Client,
    Record,
    StreamHouseError,
)
from streamhouse.cost import CostEstimate, Prices, Usage, estimate
from streamhouse.proto import streamhouse_pb2 as pb

PROG = "streamctl"
DEFAULT_BATCH_SIZE = 1000
RETENTION_MS_CONFIG = "retention.ms"
OFFSET_WORDS = {"earliest": EARLIEST, "latest": LATEST}


class UsageError(Exception):
    """Bad command line usage; reported with exit status 2."""


class CommandError(Exception):
    """A failure that is not the server's (e.g. unreadable input); reported with exit status 1."""


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# -- argument value parsers ----------------------------------------------------------------


def parse_offset(text: str) -> int:
    """Parses a start offset: a non-negative number, ``earliest``/``-2`` or ``latest``/``-1``."""
    word = text.strip().lower()
    if word in OFFSET_WORDS:
        return OFFSET_WORDS[word]
    try:
        value = int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid offset {text!r} (use a number, earliest or latest)"
        ) from None
    if value < EARLIEST:
        raise argparse.ArgumentTypeError(f"invalid offset {text!r} (use -2, -1 or a number >= 0)")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _commit_offset(text: str) -> int:
    """A committed offset: a number >= -1 (-1 meaning nothing consumed yet)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid offset {text!r}") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"invalid offset {text!r} (must be >= -1)")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1: {text!r}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    """Parses ``k=v`` (the value may be empty or contain ``=``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


# -- input ---------------------------------------------------------------------------------


def read_record_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Yields each line of a binary stream without its line ending (``\\n`` or ``\\r\\n``).

    Every line is one record, so an empty line is an empty value; a missing final newline
    does not matter.
    """
    for line in stream:
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield line


def lines_to_records(
    lines: Iterable[bytes],
    key: bytes | None = None,
    key_separator: bytes | None = None,
    headers: Sequence[tuple[str, bytes | None]] = (),
) -> Iterator[Record]:
    """Turns input lines into records: the line is the value and ``key`` the key.

    With ``key_separator``, each line is split at its first separator into key and value.
    """
    for number, line in enumerate(lines, start=1):
        record_key = key
        value = line
        if key_separator is not None:
            record_key, sep, value = line.partition(key_separator)
            if not sep:
                raise CommandError(f"line {number}: no key separator {key_separator!r}")
        yield Record(key=record_key, value=value, headers=list(headers))


def batched(items: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """Groups ``items`` into lists of at most ``size``."""
    batch: list[Record] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- output --------------------------------------------------------------------------------


def bytes_to_json(data: bytes | None) -> tuple[str | None, bool]:
    """Returns ``(text, is_base64)``: UTF-8 text when decodable, else base64."""
    if data is None:
        return None, False
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def record_to_json(record: Record, topic: str | None = None, partition: int | None = None) -> str:
    """Formats a record as one line of JSON.

    ``key``/``value`` are UTF-8 text when decodable, otherwise base64 with ``key_base64`` /
    ``value_base64`` set to true; null stays null. Header values follow the same rule.
    """
    key, key_b64 = bytes_to_json(record.key)
    value, value_b64 = bytes_to_json(record.value)
    headers = []
    for hkey, hvalue in record.headers:
        text, is_b64 = bytes_to_json(hvalue)
        headers.append({"key": hkey, "value": text, "value_base64": is_b64})
    obj: dict[str, Any] = {}
    if topic is not None:
        obj["topic"] = topic
    if partition is not None:
        obj["partition"] = partition
    obj.update(
        offset=record.offset,
        timestamp_ms=record.timestamp_ms,
        key=key,
        key_base64=key_b64,
        value=value,
        value_base64=value_b64,
        headers=headers,
    )
    return json.dumps(obj, ensure_ascii=False)


_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_SURROGATE = re.compile("[\udc80-\udcff]")


def _text(data: bytes | None) -> str:
    """Human-readable bytes: UTF-8 with escapes for undecodable bytes and line breaks."""
    if data is None:
        return "(null)"
    text = data.decode("utf-8", errors="surrogateescape").translate(_TEXT_ESCAPES)
    return _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def record_to_text(record: Record) -> str:
    """Formats a record as one tab-separated line: offset, key, value (and headers if any)."""
    fields = [str(record.offset), _text(record.key), _text(record.value)]
    if record.headers:
        fields.append(",".join(f"{k}={_text(v)}" for k, v in record.headers))
    return "\t".join(fields)


def topic_to_dict(topic: pb.Topic) -> dict[str, Any]:
    """Converts a topic to a plain JSON-ready dict."""
    return {
        "name": topic.name,
        "topic_id": topic.topic_id,
        "partitions": topic.partitions,
        "config": dict(sorted(topic.config.items())),
        "partition_info": [
            {
                "partition": p.partition,
                "log_start_offset": p.log_start_offset,
                "high_watermark": p.high_watermark,
            }
            for p in topic.partition_info
        ],
    }


def topic_to_text(topic: pb.Topic) -> str:
    """Describes a topic over several lines."""
    lines = [
        f"name: {topic.name}",
        f"topic_id: {topic.topic_id}",
        f"partitions: {topic.partitions}",
    ]
    if topic.config:
        lines.append("config:")
        lines.extend(f"  {k}={v}" for k, v in sorted(topic.config.items()))
    for p in topic.partition_info:
        lines.append(
            f"partition {p.partition}: log_start_offset={p.log_start_offset}"
            f" high_watermark={p.high_watermark}"
        )
    return "\n".join(lines)


class _Printer:
    """Writes results to stdout in the chosen format, flushing per line for pipes."""

    def __init__(self, output: str, stream: IO[str]) -> None:
        self.json = output == "json"
        self.stream = stream

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def obj(self, obj: dict[str, Any], text: str) -> None:
        self.line(json.dumps(obj, ensure_ascii=False) if self.json else text)


# -- commands ------------------------------------------------------------------------------


def _cmd_topic_create(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    config = dict(args.config or [])
    if args.retention_ms is not None:
        config[RETENTION_MS_CONFIG] = str(args.retention_ms)
    topic = client.create_topic(args.name, partitions=args.partitions, config=config)
    out.obj(topic_to_dict(topic), f"created topic {topic.name} ({topic.partitions} partitions)")
    return 0


def _cmd_topic_list(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    for topic in sorted(client.list_topics(), key=lambda t: t.name):
        out.obj(topic_to_dict(topic), f"{topic.name}\t{topic.partitions}")
    return 0


def _cmd_topic_get(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    topic = client.get_topic(args.name)
    out.obj(topic_to_dict(topic), topic_to_text(topic))
    return 0


def _cmd_topic_alter_config(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    entries = dict(args.set or [])
    deleted = list(dict.fromkeys(args.delete or []))
    if not entries and not deleted:
        raise UsageError("topic alter-config: give at least one --set KEY=VALUE or --delete KEY")
    topic = client.alter_topic_config(args.name, entries, deleted, args.validate_only)
    verb = "would alter" if args.validate_only else "altered"
    changes = [f"{k}={v}" for k, v in sorted(entries.items())] + [f"-{k}" for k in deleted]
    out.obj(
        {**topic_to_dict(topic), "validate_only": args.validate_only},
        f"{verb} the config of topic {topic.name}: {' '.join(changes)}",
    )
    return 0


def _cmd_topic_delete(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    client.delete_topic(args.name)
    out.obj({"deleted": args.name}, f"deleted topic {args.name}")
    return 0


def _encode(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _open_input(args: argparse.Namespace) -> IO[bytes]:
    if args.file is None or args.file == "-":
        return sys.stdin.buffer
    try:
        return open(args.file, "rb")
    except OSError as error:
        raise UsageError(f"argument --file: cannot open {args.file!r}: {error.strerror}") from None


def _cmd_produce(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    headers = [(k, _encode(v)) for k, v in (args.header or [])]
    key = _encode(args.key)
    if args.value is not None:
        if args.key_separator is not None:
            raise UsageError("argument --key-separator: only applies to --file or stdin input")
        partition, offset = client.produce(
            args.topic, _encode(args.value), key=key, headers=headers, partition=args.partition
        )
        out.obj(
            {"topic": args.topic, "partition": partition, "offset": offset},
            f"produced to {args.topic} partition {partition} at offset {offset}",
        )
        return 0

    separator = _encode(args.key_separator)
    if separator == b"":
        raise UsageError("argument --key-separator: must not be empty")
    stream = _open_input(args)
    # Per partition: [first offset, last offset, record count].
    summary: dict[int, list[int]] = {}
    total = 0
    try:
        records = lines_to_records(read_record_lines(stream), key, separator, headers)
        for batch in batched(records, args.batch_size):
            response = client.produce_batch(args.topic, batch, partition=args.partition)
            results = list(response.results) or [
                pb.PartitionResult(
                    partition=response.partition,
                    base_offset=response.base_offset,
                    record_count=response.record_count or len(batch),
                )
            ]
            for result in results:
                last = result.base_offset + result.record_count - 1
                entry = summary.setdefault(result.partition, [result.base_offset, last, 0])
                entry[0] = min(entry[0], result.base_offset)
                entry[1] = max(entry[1], last)
                entry[2] += result.record_count
            total += len(batch)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    partitions = [
        {"partition": p, "first_offset": e[0], "last_offset": e[1], "record_count": e[2]}
        for p, e in sorted(summary.items())
    ]
    text = f"produced {total} records to {args.topic}" + "".join(
        f"\n  partition {p['partition']}: offsets {p['first_offset']}..{p['last_offset']}"
        for p in partitions
    )
    out.obj({"topic": args.topic, "record_count": total, "partitions": partitions}, text)
    return 0


def _cmd_consume(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    def emit(record: Record) -> None:
        if out.json:
            out.line(record_to_json(record, topic=args.topic, partition=args.partition))
        else:
            out.line(record_to_text(record))

    remaining = args.limit
    if args.follow:
        records = client.subscribe(
            args.topic, args.partition, args.offset, isolation=args.isolation
        )
        try:
            for record in records:
                emit(record)
                if remaining is not None:
                    remaining -= 1
                    if remaining <= 0:
                        break
        finally:
            records.close()
        return 0

    offset = args.offset
    while remaining is None or remaining > 0:
        records, next_offset, high_watermark, _ = client.consume(
            args.topic,
            args.partition,
            offset,
            max_records=min(remaining, DEFAULT_BATCH_SIZE) if remaining else 0,
            max_wait_ms=args.max_wait_ms,
            isolation=args.isolation,
        )
        for record in records[:remaining]:
            emit(record)
        if remaining is not None:
            remaining -= min(len(records), remaining)
        if next_offset >= high_watermark or (not records and next_offset == offset):
            break  # caught up with the end of the log (or no progress)
        offset = next_offset
    return 0


def _cmd_offset_commit(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    client.commit_offset(args.group, args.topic, args.partition, args.offset, args.metadata)
    out.obj(
        {
            "group": args.group,
            "topic": args.topic,
            "partition": args.partition,
            "offset": args.offset,
            "metadata": args.metadata,
        },
        f"committed offset {args.offset} for group {args.group} on {args.topic}"
        f" partition {args.partition}",
    )
    return 0


def _cmd_offset_get(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    offset, metadata = client.get_offset(args.group, args.topic, args.partition)
    text = str(offset) if not metadata else f"{offset}\t{metadata}"
    out.obj(
        {
            "group": args.group,
            "topic": args.topic,
            "partition": args.partition,
            "offset": offset,
            "metadata": metadata,
        },
        text,
    )
    return 0


def agent_to_dict(agent: pb.Agent, now_ms: int) -> dict[str, Any]:
    """An agent as a plain JSON-ready dict, with the seconds since its last heartbeat."""
    return {
        "agent_id": agent.agent_id,
        "node_id": agent.node_id,
        "kafka_address": agent.kafka_address,
        "grpc_address": agent.grpc_address,
        "zone": agent.zone,
        "state": agent.state,
        "alive": agent.alive,
        "seconds_since_heartbeat": round(max(0, now_ms - agent.heartbeat_at_ms) / 1000, 3),
        "started_at_ms": agent.started_at_ms,
        "heartbeat_at_ms": agent.heartbeat_at_ms,
        "lease_until_ms": agent.lease_until_ms,
    }


CLUSTER_COLUMNS = ("NODE", "AGENT", "STATE", "HEARTBEAT", "KAFKA", "GRPC", "ZONE")


def cluster_table(agents: Sequence[pb.Agent], now_ms: int) -> str:
    """The agents as an aligned text table, one row per agent."""
    rows = [CLUSTER_COLUMNS]
    for agent in agents:
        seconds = max(0, now_ms - agent.heartbeat_at_ms) / 1000
        rows.append(
            (
                str(agent.node_id),
                agent.agent_id,
                agent.state,
                f"{seconds:.1f}s ago",
                agent.kafka_address,
                agent.grpc_address,
                agent.zone or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(CLUSTER_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _cmd_cluster(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    response = client.describe_cluster()
    agents = sorted(response.agents, key=lambda a: a.node_id)
    if out.json or args.json:
        for agent in agents:
            out.line(json.dumps(agent_to_dict(agent, response.now_ms), ensure_ascii=False))
        return 0
    out.line(cluster_table(agents, response.now_ms))
    return 0


# -- continuous queries (the sql service; in-process when it does not answer) ---------------


def _query_source(args: argparse.Namespace) -> Any:
    """A connected SqlClient, or None when the service does not answer (then the command
    runs in this process against the STREAMHOUSE_* environment's stores)."""
    from sql.service_client import SqlClient, SqlServiceError

    try:
        client = SqlClient(
            args.sql_server,
            timeout=60.0,
            tls_ca_file=args.tls_ca,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            token=args.token,
        )
    except SqlServiceError as exc:
        raise CommandError(exc.message) from None
    if client.reachable(1.0):
        return client
    client.close()
    sys.stderr.write(
        f"{PROG}: the sql service at {client.address} does not answer; reading the catalog "
        "here (runner state unknown)\n"
    )
    return None


def _local_queries(action: str, name: str | None = None, if_exists: bool = False) -> Any:
    from sql.__main__ import local_query_command  # DataFusion loads only here
    from sql.engine import SqlError

    try:
        return local_query_command(action, name, if_exists)
    except SqlError as exc:
        raise CommandError(str(exc)) from None


def _query_error(exc: Exception) -> CommandError:
    return CommandError(str(exc))


def _ms_text(ms: int | None) -> str:
    return "-" if ms is None or ms <= 0 else utc_time(ms)


def queries_table(queries: Sequence[Any]) -> str:
    rows = [("NAME", "KIND", "RUNNER", "RESTARTS", "LAG", "IN/S", "OUT/S", "WATERMARK (UTC)",
             "OUTPUT")]  # fmt: skip
    for q in queries:
        rows.append(
            (
                q.name,
                q.kind,
                q.runner.state,
                str(q.runner.restarts),
                str(q.lag),
                f"{q.rows_in_per_s:.1f}",
                f"{q.rows_out_per_s:.1f}",
                _ms_text(q.watermark_ms if q.HasField("watermark_ms") else None),
                q.output_topic or "(view)",
            )
        )
    if len(rows) == 1:
        return "no continuous queries (CREATE MATERIALIZED VIEW / CREATE STREAM ... AS SELECT)"
    return _table(rows, right=frozenset({3, 4, 5, 6}))


def query_text(q: Any) -> str:
    r = q.runner
    runner = r.state
    if r.pid:
        runner += f" (pid {r.pid})"
    runner += f", {r.restarts} restart{'s' if r.restarts != 1 else ''}"
    if r.HasField("last_exit_code"):
        runner += f", last exit status {r.last_exit_code}"
    if r.state == "backoff":
        runner += f", next start in {r.backoff_ms} ms"
    lines = [
        f"query {q.name} ({'materialized view' if q.kind == 'view' else 'stream query'}"
        + (f" writing topic {q.output_topic}" if q.output_topic else "")
        + ")",
        f"  sql:        {q.sql}",
        f"  options:    {', '.join(f'{k}={v}' for k, v in sorted(q.options.items())) or '-'}",
        f"  runner:     {runner}",
        f"  checkpoint: step {q.step} at {_ms_text(q.checkpoint_ms)}, generation {q.generation}",
        "  watermark:  " + _ms_text(q.watermark_ms if q.HasField("watermark_ms") else None),
        f"  rows:       in {q.rows_in} ({q.rows_in_per_s:.1f}/s), out {q.rows_out} "
        f"({q.rows_out_per_s:.1f}/s)",
        f"  errors:     {q.decode_errors} undecodable, {q.late_rows_dropped} late rows dropped, "
        f"{q.dead_lettered} dead-lettered",
        f"  last error: {q.last_error or r.last_error or '-'}",
        f"  input lag:  {q.lag} records",
    ]
    if q.sources:
        rows = [("SOURCE", "TOPIC", "PARTITION", "POSITION", "HIGH WATERMARK", "LAG")]
        rows += [
            (s.source, s.topic, str(s.partition), str(s.position), str(s.high_watermark),
             str(s.lag))
            for s in q.sources
        ]  # fmt: skip
        lines += ["    " + line for line in _table(rows, frozenset({2, 3, 4, 5})).splitlines()]
    return "\n".join(lines)


def _cmd_query_list(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    from sql.service_client import SqlServiceError, status_to_dict

    service = _query_source(args)
    try:
        queries = _local_queries("list") if service is None else service.list_queries()
    except SqlServiceError as exc:
        raise _query_error(exc) from None
    finally:
        if service is not None:
            service.close()
    if out.json or args.json:
        for q in queries:
            out.line(json.dumps(status_to_dict(q), ensure_ascii=False))
        return 0
    out.line(queries_table(queries))
    return 0


def _cmd_query_describe(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    from sql.service_client import SqlServiceError, status_to_dict

    service = _query_source(args)
    try:
        if service is None:
            query = _local_queries("describe", args.name)[0]
        else:
            query = service.describe(args.name)
    except SqlServiceError as exc:
        raise _query_error(exc) from None
    finally:
        if service is not None:
            service.close()
    if out.json or args.json:
        out.line(json.dumps(status_to_dict(query), ensure_ascii=False))
    else:
        out.line(query_text(query))
    return 0


def _cmd_query_drop(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    from sql.service_client import SqlServiceError

    service = _query_source(args)
    try:
        if service is None:
            message = _local_queries("drop", args.name, args.if_exists)
        else:
            message = service.drop(args.name, args.if_exists)
    except SqlServiceError as exc:
        raise _query_error(exc) from None
    finally:
        if service is not None:
            service.close()
    out.obj({"dropped": args.name, "message": message}, message)
    return 0


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(count: int) -> str:
    """A byte count for people: ``512 B``, ``1.5 MiB``."""
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def utc_time(ms: int) -> str:
    """A time in ms since the epoch as ISO 8601 UTC to the second; ``-`` for -1 (none)."""
    if ms < 0:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def topic_storage_to_dict(topic: pb.TopicStorage) -> dict[str, Any]:
    return {
        "name": topic.name,
        "topic_id": topic.topic_id,
        "partitions": topic.partitions,
        "objects": topic.objects,
        "bytes_stored": topic.bytes_stored,
        "bytes_live": topic.bytes_live,
        "records": topic.records,
        "oldest_offset": topic.oldest_offset,
        "oldest_timestamp_ms": topic.oldest_timestamp_ms,
        "cleanup_policy": topic.cleanup_policy,
        "dirty_bytes": topic.dirty_bytes,
    }


def storage_to_dict(response: pb.DescribeStorageResponse) -> dict[str, Any]:
    """The storage report as one JSON-ready dict: ``topics`` (by name) and ``total``."""
    return {
        "topics": [topic_storage_to_dict(t) for t in response.topics],
        "total": {
            "objects": response.objects,
            "bytes_stored": response.bytes_stored,
            "bytes_live": response.bytes_live,
            "dead_objects": response.dead_objects,
            "dead_bytes": response.dead_bytes,
            "small_objects": response.small_objects,
            "small_bytes": response.small_bytes,
            "small_object_bytes": response.small_object_bytes,
            "dirty_bytes": sum(t.dirty_bytes for t in response.topics),
            "segments_created_last_hour": response.segments_created_last_hour,
            "bytes_created_last_hour": response.bytes_created_last_hour,
        },
        "now_ms": response.now_ms,
        "answered_by": response.answered_by,
    }


STORAGE_COLUMNS = (
    "TOPIC",
    "PARTS",
    "OBJECTS",
    "STORED",
    "LIVE",
    "RECORDS",
    "OLDEST OFFSET",
    "OLDEST TIME (UTC)",
    "POLICY",
    "BACKLOG",
)


def _table(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def storage_table(response: pb.DescribeStorageResponse) -> str:
    """The storage report for people: a row per topic and a total row, then the bucket's
    dead and small objects and what was written in the last hour. An object holding blocks of
    several topics counts once per topic and once in the total; BACKLOG is the bytes a compacted
    topic has not key-compacted yet."""
    rows: list[tuple[str, ...]] = [STORAGE_COLUMNS]
    for t in response.topics:
        rows.append(
            (
                t.name,
                str(t.partitions),
                str(t.objects),
                human_bytes(t.bytes_stored),
                human_bytes(t.bytes_live),
                str(t.records),
                str(t.oldest_offset),
                utc_time(t.oldest_timestamp_ms),
                t.cleanup_policy,
                human_bytes(t.dirty_bytes) if "compact" in t.cleanup_policy else "-",
            )
        )
    rows.append(
        (
            "TOTAL",
            str(sum(t.partitions for t in response.topics)),
            str(response.objects),
            human_bytes(response.bytes_stored),
            human_bytes(response.bytes_live),
            str(sum(t.records for t in response.topics)),
            "",
            "",
            "",
            human_bytes(sum(t.dirty_bytes for t in response.topics)),
        )
    )
    dead_inside = max(0, response.bytes_stored - response.bytes_live)
    lines = [
        _table(rows, right=frozenset({1, 2, 3, 4, 5, 6, 9})),
        "",
        f"bytes of live objects that no reader reaches: {human_bytes(dead_inside)} (dropped"
        " batches, block headers and index; an object under lifecycle_min_live_percent live"
        " is rewritten)",
        f"dead objects awaiting deletion: {response.dead_objects}"
        f" ({human_bytes(response.dead_bytes)})",
        f"small objects (< {human_bytes(response.small_object_bytes)}): "
        f"{response.small_objects} ({human_bytes(response.small_bytes)}), the small-object "
        "compaction backlog",
        f"created in the last hour: {response.segments_created_last_hour} objects"
        f" ({human_bytes(response.bytes_created_last_hour)})",
        f"as of {utc_time(response.now_ms)}, answered by {response.answered_by}",
    ]
    return "\n".join(lines)


def storage_usage(response: pb.DescribeStorageResponse, args: argparse.Namespace) -> Usage:
    written = args.written_bytes_per_hour
    return Usage(
        bytes_stored=response.bytes_stored,
        dead_bytes=response.dead_bytes,
        bytes_live=response.bytes_live,
        objects_created_last_hour=response.segments_created_last_hour,
        bytes_written_per_hour=response.bytes_created_last_hour if written is None else written,
        gets_per_second=args.gets_per_second,
    )


def cost_to_dict(cost: CostEstimate) -> dict[str, Any]:
    def lines(items: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {
                "item": line.item,
                "quantity": line.quantity,
                "unit": line.unit,
                "unit_price_usd": line.unit_price_usd,
                "monthly_usd": round(line.monthly_usd, 4),
                "basis": line.basis,
            }
            for line in items
        ]

    return {
        "streamhouse": lines(cost.streamhouse),
        "streamhouse_monthly_usd": round(cost.streamhouse_monthly_usd, 4),
        "kafka": lines(cost.kafka),
        "kafka_monthly_usd": round(cost.kafka_monthly_usd, 4),
        "saving_percent": None if cost.saving_percent is None else round(cost.saving_percent, 2),
        "prices": {f: getattr(cost.prices, f) for f in cost.prices.__struct_fields__},
    }


def cost_table(cost: CostEstimate) -> str:
    """The monthly estimate: StreamHouse's lines, Kafka's lines, the totals and the basis."""
    rows: list[tuple[str, ...]] = [("", "ITEM", "QUANTITY", "UNIT", "PRICE USD", "MONTH USD")]
    for system, items in (("StreamHouse", cost.streamhouse), ("Kafka", cost.kafka)):
        for i, line in enumerate(items):
            rows.append(
                (
                    system if i == 0 else "",
                    line.item,
                    f"{line.quantity:,.2f}",
                    line.unit,
                    f"{line.unit_price_usd:g}",
                    f"{line.monthly_usd:,.2f}",
                )
            )
    lines = [
        "monthly cost estimate (list prices; see streamhouse/cost.py for sources)",
        _table(rows, right=frozenset({2, 4, 5})),
        "",
        f"StreamHouse: ${cost.streamhouse_monthly_usd:,.2f} a month;"
        f" replicated Kafka: ${cost.kafka_monthly_usd:,.2f} a month"
        + (
            f"; {cost.saving_percent:.0f}% lower"
            if cost.saving_percent is not None and cost.saving_percent >= 0
            else ""
        ),
        "basis:",
    ]
    lines += [f"  {line.item}: {line.basis}" for line in (*cost.streamhouse, *cost.kafka)]
    puts = next((line.monthly_usd for line in cost.streamhouse if line.item == "S3 PUT"), 0.0)
    if cost.streamhouse_monthly_usd > 0 and puts / cost.streamhouse_monthly_usd > 0.5:
        lines.append(
            f"  PUTs are {100 * puts / cost.streamhouse_monthly_usd:.0f}% of the bill: each "
            "agent writes an object every flush_interval_ms while data arrives; a longer "
            "interval (or fewer agents) means fewer, larger objects"
        )
    if cost.usage.gets_per_second == 0:
        lines.append(
            "  GETs are not counted by StreamHouse: pass --gets-per-second from your request "
            "metrics (tail reads on the writing agent cost none; other agents about one per "
            "block; cold reads one per block)"
        )
    return "\n".join(lines)


def _cmd_storage(client: Client, args: argparse.Namespace, out: _Printer) -> int:
    try:
        prices = Prices(
            s3_gb_month_usd=args.s3_gb_month_usd,
            s3_put_per_1000_usd=args.s3_put_per_1000_usd,
            s3_get_per_1000_usd=args.s3_get_per_1000_usd,
            block_gb_month_usd=args.block_gb_month_usd,
            cross_az_gb_usd=args.cross_az_gb_usd,
            replication_factor=args.replication_factor,
            disk_fill=args.disk_fill,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    response = client.describe_storage(args.small_object_bytes)
    cost = estimate(storage_usage(response, args), prices) if args.cost else None
    if out.json or args.json:
        obj = storage_to_dict(response)
        if cost is not None:
            obj["cost"] = cost_to_dict(cost)
        out.line(json.dumps(obj, ensure_ascii=False))
        return 0
    out.line(storage_table(response))
    if cost is not None:
        out.line("")
        out.line(cost_table(cost))
    return 0


# -- parser --------------------------------------------------------------------------------

Command = Callable[[Client, argparse.Namespace, _Printer], int]


# Options of the gRPC connection's TLS and token (README "Security"), global or per command.
_TLS_OPTIONS = ("--tls-ca", "--tls-cert", "--tls-key", "--token")


def _add_tls_options(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    helps = {
        "--tls-ca": "use TLS; verify the server against this PEM CA bundle",
        "--tls-cert": "client certificate (PEM) for servers with grpc_auth=mtls; needs --tls-key",
        "--tls-key": "the client certificate's private key (PEM)",
        "--token": "token for servers with grpc_auth=token (default: $STREAMHOUSE_TOKEN)",
    }
    for option, text in helps.items():
        metavar = "TOKEN" if option == "--token" else "FILE"
        parser.add_argument(option, metavar=metavar, default=None, help=text)
        common.add_argument(option, metavar=metavar, default=argparse.SUPPRESS, help=text)


def build_parser() -> argparse.ArgumentParser:
    """Builds the streamctl argument parser (errors raise :class:`UsageError`)."""
    # --server/--output are accepted before or after the command; the copies on subcommands
    # default to SUPPRESS so they only override the global values when given.
    common = _ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        metavar="ADDR",
        default=argparse.SUPPRESS,
        help=f"server address host:port (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})",
    )
    common.add_argument(
        "--output",
        choices=("text", "json"),
        default=argparse.SUPPRESS,
        help="output format: text (default) or json (one object per line)",
    )

    parser = _ArgumentParser(
        prog=PROG,
        description="Command line client for StreamHouse.",
        epilog="Exit status: 0 success, 1 server or input error, 2 usage error.",
    )
    parser.add_argument(
        "--server",
        metavar="ADDR",
        default=None,
        help=f"server address host:port (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="output format: text (default) or json (one object per line)",
    )
    _add_tls_options(parser, common)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # topic ...
    topic = commands.add_parser("topic", help="create, list, get and delete topics")
    topic_commands = topic.add_subparsers(dest="topic_command", metavar="ACTION", required=True)

    create = topic_commands.add_parser("create", parents=[common], help="create a topic")
    create.add_argument("name", metavar="NAME", help="topic name")
    create.add_argument(
        "--partitions", type=_positive_int, required=True, metavar="N", help="partition count"
    )
    create.add_argument(
        "--retention-ms",
        type=_non_negative_int,
        metavar="MS",
        help=f"retention in milliseconds (sets config {RETENTION_MS_CONFIG})",
    )
    create.add_argument(
        "--config",
        type=_key_value,
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="topic config entries (repeatable)",
    )
    create.set_defaults(func=_cmd_topic_create)

    listing = topic_commands.add_parser("list", parents=[common], help="list topics")
    listing.set_defaults(func=_cmd_topic_list)

    get = topic_commands.add_parser("get", parents=[common], help="describe a topic")
    get.add_argument("name", metavar="NAME", help="topic name")
    get.set_defaults(func=_cmd_topic_get)

    alter = topic_commands.add_parser(
        "alter-config",
        parents=[common],
        help="set or remove topic config entries",
        description=(
            "Set and remove config entries of a topic (removed entries go back to their "
            "defaults), as Kafka's IncrementalAlterConfigs; the other entries stay. E.g. "
            "retention.ms, retention.bytes (-1: forever); a lifecycle pass applies them."
        ),
    )
    alter.add_argument("name", metavar="NAME", help="topic name")
    alter.add_argument(
        "--set",
        type=_key_value,
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="config entries to set (repeatable)",
    )
    alter.add_argument(
        "--delete",
        nargs="+",
        action="extend",
        metavar="KEY",
        help="config entries to remove, back to their defaults (repeatable)",
    )
    alter.add_argument(
        "--validate-only", action="store_true", help="check the new config, change nothing"
    )
    alter.set_defaults(func=_cmd_topic_alter_config)

    delete = topic_commands.add_parser("delete", parents=[common], help="delete a topic")
    delete.add_argument("name", metavar="NAME", help="topic name")
    delete.set_defaults(func=_cmd_topic_delete)

    # produce
    produce = commands.add_parser(
        "produce",
        parents=[common],
        help="produce one record, or one record per line of a file or stdin",
        description=(
            "Produce one record with --value, or else one record per line read from --file "
            "(or stdin), sent in batches."
        ),
    )
    produce.add_argument("topic", metavar="TOPIC", help="topic name")
    produce.add_argument(
        "--partition",
        type=_non_negative_int,
        metavar="P",
        help="target partition (default: chosen by the server, by key)",
    )
    produce.add_argument("--key", metavar="K", help="record key (for every record)")
    source = produce.add_mutually_exclusive_group()
    source.add_argument("--value", metavar="V", help="produce one record with this value")
    source.add_argument(
        "--file", metavar="PATH", help="read one record per line from PATH ('-' for stdin)"
    )
    produce.add_argument(
        "--key-separator",
        metavar="SEP",
        help="split each input line at the first SEP into key and value",
    )
    produce.add_argument(
        "--header",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="record header (repeatable)",
    )
    produce.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"records per ProduceBatch call for line input (default: {DEFAULT_BATCH_SIZE})",
    )
    produce.set_defaults(func=_cmd_produce)

    # consume
    consume = commands.add_parser(
        "consume",
        parents=[common],
        help="read records from a partition",
        description=(
            "Print records of one partition from --offset up to the end of the log, or "
            "forever with --follow (Ctrl-C stops)."
        ),
    )
    consume.add_argument("topic", metavar="TOPIC", help="topic name")
    consume.add_argument(
        "--partition", type=_non_negative_int, required=True, metavar="P", help="partition"
    )
    consume.add_argument(
        "--offset",
        type=parse_offset,
        required=True,
        metavar="O",
        help="start offset: a number, earliest (-2) or latest (-1)",
    )
    consume.add_argument("--limit", type=_positive_int, metavar="N", help="stop after N records")
    consume.add_argument(
        "--follow", action="store_true", help="keep following the tail for new records"
    )
    consume.add_argument(
        "--max-wait-ms",
        type=_non_negative_int,
        default=0,
        metavar="MS",
        help="long-poll at the end of the log for up to MS milliseconds (without --follow)",
    )
    consume.add_argument(
        "--isolation",
        choices=("read_uncommitted", "read_committed"),
        default="read_uncommitted",
        help="read_committed: only committed transactions' records, up to the last stable "
        "offset (default read_uncommitted: everything, as Kafka)",
    )
    consume.set_defaults(func=_cmd_consume)

    # offset ...
    offset = commands.add_parser("offset", help="commit and get consumer group offsets")
    offset_commands = offset.add_subparsers(dest="offset_command", metavar="ACTION", required=True)
    for name, help_text in (
        ("commit", "commit a consumer group offset"),
        ("get", "get a committed consumer group offset"),
    ):
        sub = offset_commands.add_parser(name, parents=[common], help=help_text)
        sub.add_argument("--group", required=True, metavar="G", help="consumer group")
        sub.add_argument("--topic", required=True, metavar="T", help="topic name")
        sub.add_argument(
            "--partition", type=_non_negative_int, required=True, metavar="P", help="partition"
        )
        if name == "commit":
            sub.add_argument(
                "--offset",
                type=_commit_offset,
                required=True,
                metavar="O",
                help="next offset to consume",
            )
            sub.add_argument("--metadata", default="", metavar="M", help="free-form metadata")
            sub.set_defaults(func=_cmd_offset_commit)
        else:
            sub.set_defaults(func=_cmd_offset_get)

    # cluster
    cluster = commands.add_parser(
        "cluster",
        parents=[common],
        help="list the agents of the cluster and their health",
        description=(
            "List every registered agent: node id, agent id, state (alive; expired: its lease "
            "ran out; stopped: it stopped cleanly), seconds since its last heartbeat, Kafka "
            "and gRPC addresses, zone."
        ),
    )
    cluster.add_argument(
        "--json", action="store_true", help="one JSON object per agent (same as --output json)"
    )
    cluster.set_defaults(func=_cmd_cluster)

    # query ...
    sql_server = _ArgumentParser(add_help=False)
    sql_server.add_argument(
        "--sql-server",
        metavar="ADDR",
        default=None,
        help="the sql service host:port (default: $STREAMHOUSE_SQL_LISTEN, else "
        "127.0.0.1:50053); when it does not answer, the command runs in this process",
    )
    query = commands.add_parser(
        "query", help="list, describe and drop continuous queries (views, stream queries)"
    )
    query_commands = query.add_subparsers(dest="query_command", metavar="ACTION", required=True)
    q_list = query_commands.add_parser(
        "list",
        parents=[common, sql_server],
        help="every continuous query: runner state, restarts, input lag, rows/s, watermark",
    )
    q_list.add_argument("--json", action="store_true", help="one JSON object per query")
    q_list.set_defaults(func=_cmd_query_list)
    q_describe = query_commands.add_parser(
        "describe",
        parents=[common, sql_server],
        help="one query: definition, checkpoint, watermark, rows in/out per second, errors, "
        "input lag per source partition, runner",
    )
    q_describe.add_argument("name", metavar="NAME")
    q_describe.add_argument("--json", action="store_true", help="one JSON object")
    q_describe.set_defaults(func=_cmd_query_describe)
    q_drop = query_commands.add_parser(
        "drop",
        parents=[common, sql_server],
        help="drop a query: its runner stops, its checkpoint goes (a stream's topic stays)",
    )
    q_drop.add_argument("name", metavar="NAME")
    q_drop.add_argument("--if-exists", action="store_true", help="no error when there is none")
    q_drop.set_defaults(func=_cmd_query_drop)

    # storage
    storage = commands.add_parser(
        "storage",
        parents=[common],
        help="bytes and objects per topic and in total; --cost: the monthly bill vs. Kafka",
        description=(
            "Per topic and in total: live objects, bytes stored (a topic's share of its "
            "objects), bytes live (its blocks), records, oldest offset and time, and the "
            "compaction backlog (bytes a compacted topic has not key-compacted; small objects "
            "awaiting merging); dead objects awaiting deletion; objects written in the last "
            "hour. With --cost, a monthly estimate at S3 list prices beside the same data on "
            "replicated Kafka (prices and assumptions in streamhouse/cost.py, each a flag)."
        ),
    )
    storage.add_argument(
        "--json", action="store_true", help="one JSON object (same as --output json)"
    )
    storage.add_argument(
        "--small-object-bytes",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="objects below N bytes count as small (default: the server's setting)",
    )
    storage.add_argument("--cost", action="store_true", help="add the monthly cost estimate")
    defaults = Prices()
    for flag, dest, help_text in (
        ("--s3-gb-month-usd", "s3_gb_month_usd", "S3 storage per GB-month"),
        ("--s3-put-per-1000-usd", "s3_put_per_1000_usd", "S3 PUT per 1,000 requests"),
        ("--s3-get-per-1000-usd", "s3_get_per_1000_usd", "S3 GET per 1,000 requests"),
        ("--block-gb-month-usd", "block_gb_month_usd", "Kafka block storage per GB-month"),
        ("--cross-az-gb-usd", "cross_az_gb_usd", "transfer between zones per GB"),
    ):
        storage.add_argument(
            flag,
            dest=dest,
            type=_non_negative_float,
            default=getattr(defaults, dest),
            metavar="USD",
            help=f"{help_text} (default: {getattr(defaults, dest)})",
        )
    storage.add_argument(
        "--replication-factor",
        type=_positive_int,
        default=defaults.replication_factor,
        metavar="N",
        help=f"Kafka replicas per partition (default: {defaults.replication_factor})",
    )
    storage.add_argument(
        "--disk-fill",
        type=_fraction,
        default=defaults.disk_fill,
        metavar="F",
        help=f"share of Kafka's provisioned disk the data fills (default: {defaults.disk_fill})",
    )
    storage.add_argument(
        "--gets-per-second",
        type=_non_negative_float,
        default=0.0,
        metavar="R",
        help="object-store GETs per second, from your metrics (default 0: not counted)",
    )
    storage.add_argument(
        "--written-bytes-per-hour",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="bytes written per hour for Kafka's replication traffic (default: the bytes of "
        "the objects created in the last hour)",
    )
    storage.set_defaults(func=_cmd_storage)

    # user, token: handled by main() before parsing (streamhouse/authctl.py).
    commands.add_parser(
        "user",
        help="streamctl user add|list|delete: SCRAM users of the Kafka listener, in the "
        "metadata store (--metadata, else the STREAMHOUSE_* environment's)",
    )
    commands.add_parser(
        "token",
        help="streamctl token create|list|delete: gRPC tokens (grpc_auth=token), stored hashed",
    )

    # acl: handled by main() before parsing (streamhouse/aclctl.py).
    commands.add_parser(
        "acl",
        help="streamctl acl add|list|delete: Kafka ACLs (kafka-acls.sh options), in the "
        "metadata store (--metadata, else the STREAMHOUSE_* environment's)",
    )

    # status: handled by main() before parsing (streamhouse status); listed for --help.
    commands.add_parser(
        "status",
        help="streamctl status [--json]: programs, rings, object store and metadata of the "
        "stack on the STREAMHOUSE_* environment's data dir (as streamhouse status)",
    )

    # sql: handled by main() before parsing (its arguments are sql.__main__'s); listed here
    # for --help.
    commands.add_parser(
        "sql",
        help='SQL over topics: streamctl sql "SELECT ..." [--format table|jsonl|csv], or '
        "streamctl sql for a shell (through the sql service when it answers, else in this "
        "process over the STREAMHOUSE_* environment's stores)",
    )
    return parser


def _error(message: str) -> None:
    text = " ".join(str(message).split())
    sys.stderr.write(f"{PROG}: error: {text}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Runs streamctl with ``argv`` (default ``sys.argv[1:]``) and returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    # `streamctl [--server A] [--output F] sql ...`: the sql command takes its own arguments
    # (the main gRPC server is not used by it)
    i = 0
    while i < len(argv) and argv[i] in ("--server", "--output", *_TLS_OPTIONS):
        i += 2
    if argv[i : i + 1] == ["sql"]:
        # the TLS/token options given before `sql` apply to the sql service too
        security = [a for j in range(0, i, 2) if argv[j] in _TLS_OPTIONS for a in argv[j : j + 2]]
        return _sql(argv[i + 1 :] + security)
    if argv[i : i + 1] == ["status"]:
        return _status(argv[i + 1 :])
    if argv[i : i + 1] == ["acl"]:
        from streamhouse.aclctl import main as aclctl_main  # Kafka ACLs in the metadata store

        return aclctl_main(argv[i + 1 :])
    if argv[i : i + 1] in (["user"], ["token"]):
        from streamhouse.authctl import main as authctl_main  # SCRAM users, gRPC tokens

        return authctl_main(argv[i], argv[i + 1 :])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        _error(str(error))
        return 2
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0

    out = _Printer(args.output, sys.stdout)
    command: Command = args.func
    security = {
        "tls_ca_file": args.tls_ca,
        "tls_cert_file": args.tls_cert,
        "tls_key_file": args.tls_key,
        "token": args.token,
    }
    client = Client(args.server, timeout=30.0, **{k: v for k, v in security.items() if v})
    try:
        return command(client, args, out)
    except UsageError as error:
        _error(str(error))
        return 2
    except (StreamHouseError, CommandError) as error:
        _error(str(error))
        return 1
    except OSError as error:
        if isinstance(error, BrokenPipeError):
            # The reader went away (e.g. `| head`); stop quietly.
            _silence_stdout()
            return 0
        _error(f"{error.strerror or error}")
        return 1
    except KeyboardInterrupt:
        if getattr(args, "follow", False):
            return 0
        _error("interrupted")
        return 130
    finally:
        client.close()


def _sql(argv: list[str]) -> int:
    """``streamctl sql "SELECT ..." [--format table|jsonl|csv] [--stats] [--max-read-mb N]
    [--via auto|service|local] [--service ADDR]`` runs one statement; ``streamctl sql`` with no
    statement (or ``streamctl sql shell``) reads statements ended by ``;`` from standard
    input. Statements go to the sql service (``sql_listen``, rows back as Arrow IPC) when it
    answers; otherwise (or with ``--via local``) they run in this process, reading the log
    where the agent keeps it: the metadata store and object store the ``STREAMHOUSE_*``
    environment names (the same settings as ``streamhouse up``)."""
    from sql.__main__ import main as sql_main  # DataFusion loads only for this command

    if argv[:1] == ["shell"]:
        sql_argv = argv
    elif not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        sql_argv = ["shell", *argv]
    else:
        sql_argv = ["query", *argv]
    if (
        "-h" not in argv
        and "--help" not in argv
        and not any(a == "--via" or a.startswith("--via=") for a in argv)
    ):
        sql_argv.append("--via=auto")
    try:
        sql_main(sql_argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0
    return 0


def _status(argv: list[str]) -> int:
    """``streamctl status [--json]``: ``streamhouse status`` of the stack the ``STREAMHOUSE_*``
    environment names (its data dir's supervisord, rings, object store and metadata)."""
    from streamhouse.cli import main as streamhouse_main

    return streamhouse_main(["status", *argv])


def _silence_stdout() -> None:
    """Points stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
