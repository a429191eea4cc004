"""``python3 bench/nexmark.py generate``: Nexmark events into a running StreamHouse.

    python3 bench/nexmark.py generate --events N [--bootstrap HOST:PORT] [--seed S]
        [--rate EV_PER_S] [--partitions P] [--topic-prefix P] [--dry-run] [--json]

Generates ``N`` events (see ``bench/nexmark/generator.py``) and produces them with
confluent-kafka, as fast as the broker acknowledges them, into the topics ``person``,
``auction`` and ``bid`` (with ``--topic-prefix``, ``<prefix>person`` and so on), creating
the missing ones with ``--partitions`` partitions. ``--rate`` is the event-time rate (events
per second of ``dateTime``, Flink's ``firstEventRate``; default 10 M/s as in Flink's
benchmark), not a throttle. Reports the events produced (acknowledged by the broker) per
second of wall time, from the first event generated to the last acknowledgement.

``--dry-run`` generates the same events (up to their keys and JSON values) and produces
nothing: the generator's own events/s. Exit status 1 with a message when the broker cannot
be reached or refuses a record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from .generator import Generator
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
    gen.add_argument("--partitions", type=_positive, default=4, help="for topics it creates")
    gen.add_argument("--topic-prefix", default="", help="topics are <prefix>person etc.")
    gen.add_argument("--dry-run", action="store_true", help="generate only: the generator's rate")
    gen.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return top


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


def generate(args: argparse.Namespace) -> dict[str, Any]:
    generator = Generator(args.seed, ModelConfig(rate=args.rate))
    topics = {kind: args.topic_prefix + kind for kind in TOPICS}
    counts = dict.fromkeys(TOPICS, 0)
    producer = None
    failures: list[str] = []
    acked = [0]
    if not args.dry_run:
        from confluent_kafka import Producer

        ensure_topics(args.bootstrap, list(topics.values()), args.partitions)
        producer = Producer(
            {
                "bootstrap.servers": args.bootstrap,
                "log_level": 0,
                "linger.ms": 20,
                "batch.size": 1 << 20,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1 << 20,
            }
        )

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            if len(failures) < 10:
                failures.append(str(err))
        else:
            acked[0] += 1

    start = time.perf_counter()
    for chunk in generator.chunks(args.events):
        for kind in TOPICS:
            records = chunk.records(kind)
            counts[kind] += len(records.values)
            if producer is None:
                continue
            _produce(
                producer,
                topics[kind],
                records.keys.to_pylist(),
                records.values.to_pylist(),
                records.timestamps.tolist(),
                delivered,
            )
            if failures:
                raise ProduceError(f"the broker refused records of {topics[kind]}: {failures}")
    if producer is not None:
        left = producer.flush(120)
        if left:
            raise ProduceError(f"{left} records still unacknowledged after 120 s; broker slow?")
        if failures:
            raise ProduceError(f"the broker refused records: {failures}")
        if acked[0] != args.events:
            raise ProduceError(f"{acked[0]} of {args.events} events acknowledged")
    seconds = time.perf_counter() - start
    return {
        "events": args.events,
        **counts,
        "seed": args.seed,
        "rate": args.rate,
        "dry_run": args.dry_run,
        "seconds": round(seconds, 3),
        "events_per_s": round(args.events / seconds),
    }


def _produce(
    producer: Any,
    topic: str,
    keys: list[bytes],
    values: list[bytes],
    timestamps: list[int],
    delivered: Any,
) -> None:
    """Queue every record (one ``produce`` call each: confluent-kafka's ``produce_batch``
    takes no timestamps), waiting for the broker while librdkafka's queue is full."""
    produce = producer.produce
    for key, value, ts in zip(keys, values, timestamps, strict=True):
        while True:
            try:
                produce(topic, value, key, timestamp=ts, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    producer.poll(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
            f"{report['events_per_s']} events/s"
        )
    return 0
