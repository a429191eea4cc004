"""An unreachable object store: produces fail retriably (UNAVAILABLE) within their deadline,
nothing is acknowledged, and the stack stays up for everything else."""

from __future__ import annotations

import pathlib

import pytest

from streamhouse.client import Client, StreamHouseError
from streamhouse.testing import Stack, free_port


def test_produce_is_unavailable_while_the_store_is_unreachable(tmp_path: pathlib.Path) -> None:
    dead = free_port()  # nothing listens here
    env = {
        "STREAMHOUSE_OBJECT_STORE": "s3://unreachable-bucket",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_REGION": "us-east-1",
        "STREAMHOUSE_UPLOAD_ATTEMPTS": "2",
        "STREAMHOUSE_STORE_TIMEOUT_MS": "1000",
        "STREAMHOUSE_PRODUCE_TIMEOUT_MS": "8000",
    }
    stack = Stack(tmp_path / "data", env=env)
    stack.launch()
    try:
        # Ingest answers, NOT_SERVING: its store probe cannot reach the object store.
        stack.wait_ready(serving=False)
        with Client(stack.grpc_address) as client:
            client.create_topic("outage", 1)
            with pytest.raises(StreamHouseError) as err:
                client.produce("outage", b"never acknowledged", partition=0)
            assert err.value.code.name == "UNAVAILABLE"
            assert "retry" in str(err.value)
            # Nothing was committed, and the metadata side keeps answering.
            topic = client.get_topic("outage")
            assert topic.partition_info[0].high_watermark == 0
            records, _, hwm, _ = client.consume("outage", 0, 0)
            assert (records, hwm) == ([], 0)
    finally:
        stack.stop()
