"""Catch-up reads of many partitions from a real S3 server (SeaweedFS), GETs counted on the
wire by the counting proxy (`streamhouse/s3proxy.py`).

Six partitions are written together, so every segment object holds a block of each. A
reader with an empty cache (restarted) then reads the whole topic back with one consumer of
all partitions: the window reads (`reader/readplan.py`) cost one GET per object, not six.
Then one block is corrupted in the bucket: a cold read of its partition is refused with the
checksum error, and the object's other partitions are still served.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import Any

import obstore
import pytest
from confluent_kafka import Producer
from obstore.store import S3Store

from metadata import MetadataStore
from streamhouse.client import Client, StreamHouseError
from streamhouse.s3proxy import S3CountingProxy
from streamhouse.testing import Stack, read_kafka_log, wait_until

PARTITIONS = 6
ROUNDS = 8
PER_ROUND = 200  # records per partition and round


def segment_keys(stack: Stack, topic: str) -> dict[int, list[tuple[str, int, int]]]:
    """Each partition's blocks as (segment key, byte offset, byte length), in offset order."""
    with MetadataStore(stack.settings.metadata_path) as meta:
        topic_id = meta.get_topic(topic).topic_id
        return {
            p: [
                (b.segment_key, b.byte_offset, b.byte_length)
                for b in meta.find_blocks(topic_id, p, 0, 100_000)
            ]
            for p in range(PARTITIONS)
        }


def cold_reader(stack: Stack) -> None:
    """Restarts the reader: its cache is empty, every block is read from the store."""
    stack.wait_restarted("reader", stack.kill("reader"))


def serves(client: Client, topic: str, partition: int) -> bool:
    """Whether a consume of the partition is answered (not failed by a reader restart)."""
    try:
        return bool(client.consume(topic, partition, 0)[0])
    except StreamHouseError:
        return False


def direct_store(seaweed: Any, prefix: str) -> S3Store:
    """The stack's bucket prefix, reached straight (not through the counting proxy)."""
    return S3Store(
        seaweed.bucket,
        prefix=prefix,
        config={
            "endpoint": seaweed.endpoint,
            "access_key_id": "streamhouse",
            "secret_access_key": "streamhouse-secret",
            "region": "us-east-1",
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )


def test_s3reads_catch_up_of_many_partitions_costs_one_get_per_object(
    tmp_path: pathlib.Path, seaweed: Any
) -> None:
    prefix = f"s3reads-{uuid.uuid4().hex[:10]}"
    with S3CountingProxy(seaweed.port) as proxy:
        env = {
            **seaweed.env(),
            "AWS_ENDPOINT_URL": proxy.endpoint,
            "STREAMHOUSE_OBJECT_STORE": f"s3://{seaweed.bucket}/{prefix}",
        }
        with Stack(tmp_path / "data", env=env) as stack, Client(stack.grpc_address) as client:
            client.create_topic("wide", PARTITIONS)
            produced: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
            producer = Producer(
                {"bootstrap.servers": stack.kafka_address, "linger.ms": 50, "acks": "all"}
            )
            for r in range(ROUNDS):
                for p in range(PARTITIONS):
                    for i in range(PER_ROUND):
                        value = b"r%d-p%d-%d-" % (r, p, i) + os.urandom(150)
                        producer.produce("wide", value, partition=p)
                        produced[p].append(value)
                assert producer.flush(30) == 0
            blocks = segment_keys(stack, "wide")
            objects = {key for found in blocks.values() for key, _, _ in found}
            total_blocks = sum(len(found) for found in blocks.values())
            # The partitions were written together: objects hold several partitions' blocks.
            assert total_blocks >= 2 * len(objects), (total_blocks, len(objects))

            cold_reader(stack)
            proxy.reset()
            log = read_kafka_log(stack.kafka_address, "wide", PARTITIONS)
            assert {p: [v for _, v in records] for p, records in log.items()} == produced
            gets = proxy.counts().get("GET", 0)
            # One window GET per object (each smaller than the window), where single-block
            # reads made one per block.
            assert gets == len(objects), (gets, len(objects), total_blocks)

            # A flipped byte inside partition 2's block of its first object.
            key, offset, length = blocks[2][0]
            store = direct_store(seaweed, prefix)
            data = bytearray(obstore.get(store, key).bytes())
            data[offset + length - 7] ^= 0xFF
            obstore.put(store, key, bytes(data))
            cold_reader(stack)
            wait_until(lambda: serves(client, "wide", 0), 30, "the restarted reader serves")
            with pytest.raises(StreamHouseError) as err:
                client.consume("wide", 2, 0)
            assert "KAFKA_STORAGE_ERROR" in str(err.value)
            assert "checksum mismatch" in str(err.value)
            for p in (0, 5):  # the same object's other blocks are served
                records, _next, _hwm, _ = client.consume("wide", p, 0)
                assert [r.value for r in records] == produced[p][: len(records)]
                assert records
            reader_log = (stack.data_dir / "logs" / "reader.log").read_text(errors="replace")
            assert "checksum mismatch" in reader_log
