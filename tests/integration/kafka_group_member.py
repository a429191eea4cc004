"""One consumer-group member in its own process, driven by tests/integration/test_kafka_groups.py.

    python kafka_group_member.py BOOTSTRAP GROUP TOPIC NAME SESSION_TIMEOUT_MS ASSIGNOR

It subscribes with confluent-kafka, commits after every batch it consumed, and reports on
stdout, one JSON object a line: {"event": "assigned"|"revoked", "partitions": [what it now
owns]},
{"event": "records", "items": [[partition, offset], ...]}, {"event": "closed"}. A line "close"
on stdin makes it commit and close (a clean LeaveGroup); SIGKILL is the unclean way out.
"""

from __future__ import annotations

import json
import sys
import threading

from confluent_kafka import Consumer, KafkaException


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main() -> None:
    bootstrap, group, topic, name, session_ms, assignor = sys.argv[1:7]
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": assignor,
            "enable.auto.commit": False,
            "session.timeout.ms": int(session_ms),
            "heartbeat.interval.ms": 300,
            "max.poll.interval.ms": 30_000,
            "topic.metadata.refresh.interval.ms": 2_000,
        }
    )
    stop = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "close":
                break
        stop.set()  # "close", or the test went away (stdin closed)

    threading.Thread(target=read_stdin, daemon=True).start()

    owned: set[int] = set()

    # Eager assignors hand over the whole assignment (and revoke all of it); cooperative ones
    # only the partitions that move. Either way the events carry what the member now owns.
    cooperative = assignor == "cooperative-sticky"

    def on_assign(_consumer: Consumer, partitions: list) -> None:
        if not cooperative:
            owned.clear()
        owned.update(p.partition for p in partitions)
        emit("assigned", partitions=sorted(owned))

    def on_revoke(_consumer: Consumer, partitions: list) -> None:
        if not cooperative:
            owned.clear()
        owned.difference_update(p.partition for p in partitions)
        emit("revoked", partitions=sorted(owned))

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
    while not stop.is_set():
        items = []
        for message in consumer.consume(num_messages=500, timeout=0.2):
            if message.error() is None:
                items.append([message.partition(), message.offset()])
        if items:
            emit("records", items=items)
            try:
                consumer.commit(asynchronous=False)
            except KafkaException:
                pass  # a rebalance under way: the next owner re-reads (at least once)
    try:
        consumer.commit(asynchronous=False)
    except KafkaException:
        pass  # nothing consumed since the last commit, or no assignment
    consumer.close()
    emit("closed")


if __name__ == "__main__":
    main()
