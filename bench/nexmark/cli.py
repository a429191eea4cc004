"""``python3 bench/nexmark.py generate``: Nexmark events into a running StreamHouse.

    python3 bench/nexmark.py generate --events N [--bootstrap HOST:PORT] [--seed S]
        [--rate EV_PER_S] [--base-time-ms MS] [--partitions P] [--topic-prefix P]
        [--compression none|lz4|zstd|snappy|gzip] [--processes N] [--dry-run] [--json]

Generates ``N`` events (see ``bench/nexmark/generator.py``) and produces them with
confluent-kafka, as fast as the broker acknowledges them, into the topics ``person``,
``auction`` and ``bid`` (with ``--topic-prefix``, ``<prefix>person`` and so on), creating
the missing ones with ``--partitions`` partitions (existing ones are used as they are).
``--rate`` is the event-time rate (events per second of ``dateTime``, Flink's
``firstEventRate``; default 10 M/s as in Flink's benchmark), not a throttle. Declare the
streams with ``bench.nexmark.generator.create_stream_sql``.

Reports the events produced (every one acknowledged by the broker) per second of wall time,
from the first event generated to the last acknowledgement, the events per CPU second of
the generating processes, and where the time went (see ``generate``): ``broker_full``,
the time spent blocked on a full librdkafka queue, tells whether the broker or this client
was the limit.

Records are made a chunk ahead on a thread (numpy and Arrow release the GIL), then handed
to librdkafka one ``produce`` call each (``produce_batch`` takes no timestamps), with
delivery reports for failures only. ``--processes N`` runs N producer processes, producer
``k`` making and producing chunks ``k, k + N, ...``: more throughput where cores are free,
but a partition then holds chunks of different producers interleaved, so its ``dateTime``
can go back by up to ``N * CHUNK_EVENTS / rate`` seconds (5 ms per producer at 10 M/s,
50 s per producer at 1000/s: keep one producer for event-time queries at low rates).

``--dry-run`` generates the same events (up to their keys and JSON values, on one thread)
and produces nothing: the generator's own events/s. Exit status 1 with a message when the
broker cannot be reached or refuses a record; 2 for bad arguments.

Measured on the shared 2-core VM while other work ran (load average 6-7, so wall-clock
rates vary by 2x; per CPU second is steadier):

- ``python3 bench/nexmark.py generate --events 5000000 --dry-run``: 700 k events/s wall,
  1.76 M events per CPU second (1.07 M/s wall on a quieter machine).
- ``generate --events 2000000`` into a local ``Stack`` (SQLite, folder store) on the same
  machine: 145-160 k events/s (270-370 k/s when the load was ~2), 340 k events per CPU
  second of the producer; waiting for the generator 0.06 s of 13.8 s and ``broker_full``
  0 s: the producer's per-record ``produce`` calls and the broker share the two cores.
  ``--processes 2`` did not help on 2 cores (165 k/s).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .generator import CHUNK_EVENTS, Generator, Records
from .model import ModelConfig

TOPICS = ("person", "auction", "bid")


class ProduceError(RuntimeError):
    pass


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"seed must be 0 .. 2**63 - 1: {value}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bench/nexmark.py", description="Nexmark on StreamHouse")
    commands = top.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="produce Nexmark events into person/auction/bid")
    gen.add_argument("--events", type=_positive, required=True, help="how many events")
    gen.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka HOST:PORT")
    gen.add_argument("--seed", type=_seed, default=0)
    gen.add_argument(
        "--rate", type=_positive, default=10_000_000, help="events per second of event time"
    )
    gen.add_argument(
        "--base-time-ms",
        type=int,
        default=ModelConfig.base_time_ms,
        help="dateTime of the first event, ms since the epoch (default 2026-01-01T00:00:00Z)",
    )
    gen.add_argument("--partitions", type=_positive, default=4, help="for topics it creates")
    gen.add_argument("--topic-prefix", default="", help="topics are <prefix>person etc.")
    gen.add_argument(
        "--compression", choices=("none", "lz4", "zstd", "snappy", "gzip"), default="none"
    )
    gen.add_argument(
        "--processes",
        type=_positive,
        default=1,
        help="producer processes, each making and producing every N-th chunk",
    )
    gen.add_argument("--dry-run", action="store_true", help="generate only: the generator's rate")
    gen.add_argument("--json", action="store_true", help="print the report as one JSON object")
    plan = commands.add_parser(
        "plan", help="the queries' operators alone: events per CPU second (plan_bench.py)"
    )
    plan.add_argument("--events", type=_positive, default=1_000_000)
    plan.add_argument(
        "--rate", type=_positive, default=10_000, help="events per second of event time"
    )
    plan.add_argument("--batch-rows", type=_positive, default=8192, help="rows per batch fed")
    plan.add_argument("--queries", default="q0,q1,q2,q3,q4,q5,q7,q8")
    plan.add_argument("--seed", type=_seed, default=0)
    plan.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser(
        "pyflink", help="the queries on PyFlink beside StreamHouse (pyflink_bench.py --help)"
    )
    run = commands.add_parser(
        "run", help="the queries end to end on a stack of their own (run_bench.py)"
    )
    run.add_argument("--events", type=_positive, default=1_000_000)
    run.add_argument(
        "--rate", type=_positive, default=10_000, help="events per second of event time"
    )
    run.add_argument("--queries", default="q0,q1,q2,q3,q4,q5,q7,q8")
    run.add_argument("--partitions", type=_positive, default=1)
    run.add_argument("--seed", type=_seed, default=0)
    run.add_argument("--check", action="store_true", help="compare outputs with references")
    run.add_argument("--keep", default=None, help="the stack's folder (default: a temp dir)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    return top


def _plan_command(args: argparse.Namespace) -> int:
    from .plan_bench import format_report, run_plan_bench
    from .queries import QUERIES

    names = [q.strip() for q in args.queries.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUERIES]
    if unknown:
        print(
            f"nexmark: no query {', '.join(unknown)}: one of {', '.join(QUERIES)}", file=sys.stderr
        )
        return 2
    report = run_plan_bench(args.events, args.rate, args.batch_rows, names, args.seed)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except KafkaException as e:
        raise ProduceError(f"cannot reach the broker at {bootstrap}: {e}; is it running?") from e
    missing = [NewTopic(t, num_partitions=partitions) for t in topics if t not in existing]
    for topic, future in (admin.create_topics(missing) if missing else {}).items():
        try:
            future.result(timeout=30)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise ProduceError(f"cannot create topic {topic!r}: {e}") from e


def _parts(events: int, share: int, shares: int) -> list[tuple[int, int]]:
    """(chunk index, events of it) of the chunks that producer ``share`` of ``shares``
    makes: every ``shares``-th chunk of the run."""
    chunks = -(-events // CHUNK_EVENTS)
    return [(i, min(CHUNK_EVENTS, events - i * CHUNK_EVENTS)) for i in range(share, chunks, shares)]


def _records_ahead(
    generator: Generator, parts: list[tuple[int, int]]
) -> Iterator[dict[str, Records]]:
    """The records of each chunk, made by a thread a couple of chunks ahead of the caller
    (numpy and Arrow release the GIL, so making them overlaps with producing)."""
    ahead: queue.Queue[dict[str, Records] | BaseException | None] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def make() -> None:
        try:
            for index, count in parts:
                chunk = generator.chunk(index, count)
                batches = {kind: chunk.records(kind) for kind in TOPICS}
                while not stop.is_set():
                    try:
                        ahead.put(batches, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(None)
        except BaseException as e:  # handed to the consumer, which raises it
            ahead.put(e)

    thread = threading.Thread(target=make, name="nexmark-generate", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def generate_into(
    bootstrap: str, events: int, rate: int, partitions: int, seed: int, prefix: str = ""
) -> dict[str, Any]:
    """Produces ``events`` Nexmark events into person/auction/bid at ``bootstrap`` (one
    producer, so each partition's event time only grows); returns the generate report plus
    ``tables``: the generated tables, made again from the same seed (for references)."""
    import pyarrow as pa

    args = parser().parse_args(
        [
            "generate",
            "--events", str(events),
            "--bootstrap", bootstrap,
            "--rate", str(rate),
            "--partitions", str(partitions),
            "--seed", str(seed),
            "--topic-prefix", prefix,
        ]
    )  # fmt: skip
    report = generate(args)
    chunks = list(Generator(seed, ModelConfig(rate=rate)).chunks(events))
    report["tables"] = {
        kind: pa.concat_tables([getattr(c, kind) for c in chunks]) for kind in TOPICS
    }
    return report


def generate(args: argparse.Namespace) -> dict[str, Any]:
    topics = {kind: args.topic_prefix + kind for kind in TOPICS}
    counts = dict.fromkeys(TOPICS, 0)
    spent = {"generate": 0.0, "queue": 0.0, "broker_full": 0.0, "flush": 0.0}
    start, cpu_start = time.perf_counter(), time.process_time()
    worker_cpu = 0.0
    if args.dry_run:
        # The generator alone, on this thread: its own events/s.
        generator = Generator(
            args.seed, ModelConfig(rate=args.rate, base_time_ms=args.base_time_ms)
        )
        for chunk in generator.chunks(args.events):
            for kind in TOPICS:
                counts[kind] += len(chunk.records(kind).values)
        spent["generate"] = time.perf_counter() - start
    else:
        ensure_topics(args.bootstrap, list(topics.values()), args.partitions)
        if args.processes == 1:
            results = [_produce_share(vars(args), 0)]
        else:
            spawn = multiprocessing.get_context("spawn")
            with spawn.Pool(args.processes) as pool:
                try:
                    results = pool.starmap(
                        _produce_share, [(vars(args), k) for k in range(args.processes)]
                    )
                except Exception as e:  # raised in a worker: say which kind, then stop
                    raise ProduceError(f"a producer process failed: {e!r}") from e
        for result in results:
            if result["error"]:
                raise ProduceError(result["error"])
            for kind in TOPICS:
                counts[kind] += result["counts"][kind]
            for step in spent:  # summed over the producers
                spent[step] += result["spent"][step]
            if args.processes > 1:
                worker_cpu += result["cpu"]
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start + worker_cpu
    return {
        "events": args.events,
        **counts,
        "seed": args.seed,
        "rate": args.rate,
        "dry_run": args.dry_run,
        "seconds": round(seconds, 3),
        "events_per_s": round(args.events / seconds),
        # CPU seconds of this process and its producer processes (all their threads,
        # librdkafka's included): on a shared machine, events per CPU second is the steadier
        # figure.
        "cpu_s": round(cpu, 3),
        "events_per_cpu_s": round(args.events / max(cpu, 1e-9)),
        # Where the time went, summed over the producer processes: waiting for the
        # generator (all of it in a dry run), handing records to librdkafka (of which
        # broker_full: blocked while its queue was full, i.e. while the broker lagged),
        # waiting for the last acknowledgements.
        **{f"{step}_s": round(value, 3) for step, value in spent.items()},
    }


def _produce_share(options: dict[str, Any], share: int) -> dict[str, Any]:
    """Producer ``share`` of ``options["processes"]``: makes and produces its chunks, waits
    for every acknowledgement. Runs in the caller's process or in a pool worker; returns
    its counts and times, or the error that stopped it."""
    from confluent_kafka import Producer

    args = argparse.Namespace(**options)
    generator = Generator(args.seed, ModelConfig(rate=args.rate, base_time_ms=args.base_time_ms))
    counts = dict.fromkeys(TOPICS, 0)
    spent = {"generate": 0.0, "queue": 0.0, "broker_full": 0.0, "flush": 0.0}
    failures: list[str] = []
    failed = [0]

    def delivered(err: Any, _msg: Any) -> None:
        # Called for failed records only (delivery.report.only.error): no Python call per
        # acknowledged record.
        failed[0] += 1
        if len(failures) < 5:
            failures.append(str(err))

    cpu_start = time.process_time()

    def result(error: str = "") -> dict[str, Any]:
        cpu = time.process_time() - cpu_start
        return {"counts": counts, "spent": spent, "error": error, "cpu": cpu}

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "log_level": 0,
            "linger.ms": 20,
            "compression.type": args.compression,
            "batch.size": 1 << 20,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1 << 20,
            "delivery.report.only.error": True,
            "on_delivery": delivered,
        }
    )
    topics = {kind: args.topic_prefix + kind for kind in TOPICS}
    waited = time.perf_counter()
    for batches in _records_ahead(generator, _parts(args.events, share, args.processes)):
        queued = time.perf_counter()
        spent["generate"] += queued - waited
        for kind, records in batches.items():
            counts[kind] += len(records.values)
            spent["broker_full"] += _produce(
                producer,
                topics[kind],
                records.keys.to_pylist(),
                records.values.to_pylist(),
                records.timestamps.tolist(),
            )
            if failures:
                return result(f"the broker refused records of {topics[kind]}: {failures}")
        waited = time.perf_counter()
        spent["queue"] += waited - queued
    flushing = time.perf_counter()
    left = producer.flush(120)
    spent["flush"] = time.perf_counter() - flushing
    if left:
        return result(f"{left} records still unacknowledged after 120 s; is the broker up?")
    if failed[0]:
        return result(f"the broker refused {failed[0]} records: {failures}")
    return result()


def _produce(
    producer: Any,
    topic: str,
    keys: list[bytes],
    values: list[bytes],
    timestamps: list[int],
) -> float:
    """Queue every record (one ``produce`` call each: confluent-kafka's ``produce_batch``
    takes no timestamps), waiting for the broker while librdkafka's queue is full; returns
    the seconds spent so waiting."""
    produce = producer.produce
    blocked = 0.0
    for key, value, ts in zip(keys, values, timestamps, strict=True):
        while True:
            try:
                produce(topic, value, key, timestamp=ts)
                break
            except BufferError:
                began = time.perf_counter()
                producer.poll(0.05)
                blocked += time.perf_counter() - began
    producer.poll(0)
    return blocked


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pyflink"]:
        from .pyflink_bench import main as pyflink_main

        return pyflink_main(argv[1:])
    top = parser()
    args = top.parse_args(argv)
    if args.command == "plan":
        return _plan_command(args)
    if args.command == "run":
        from .run_bench import main_run

        return main_run(args)
    try:
        ModelConfig(rate=args.rate, base_time_ms=args.base_time_ms)
    except ValueError as e:
        top.error(str(e))
    try:
        report = generate(args)
    except ProduceError as e:
        print(f"nexmark: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        mode = "generated (dry run)" if args.dry_run else "produced"
        print(
            f"{mode} {report['events']} events ({report['person']} person, "
            f"{report['auction']} auction, {report['bid']} bid) in {report['seconds']} s: "
            f"{report['events_per_s']} events/s, {report['events_per_cpu_s']} per CPU second "
            f"(waiting for the generator "
            f"{report['generate_s']} s, "
            f"queue {report['queue_s']} s of which broker full {report['broker_full_s']} s, "
            f"flush {report['flush_s']} s)"
        )
    return 0
