"""Helpers the auth and ACL integration tests share (test_acl_enforcement.py,
test_acl_sasl_users.py, test_auth_sasl_plaintext.py): `streamctl` run against a stack, and the
delivery outcome of one record produced with confluent-kafka."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from confluent_kafka import KafkaError, Producer

from streamhouse.testing import Stack


def streamctl(stack: Stack, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m streamhouse.streamctl ARGS`` in the stack's environment, ``stdin`` as its
    input; the finished process (its exit status is the caller's to check)."""
    return subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", *args],
        input=stdin,
        text=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", **stack.env},
        timeout=60,
        check=False,
    )


def produce_error(conf: dict[str, Any], topic: str) -> KafkaError | None:
    """The delivery error of one record produced to ``topic`` by a producer with ``conf``
    (None: it was stored). Neither idempotent nor creating the topic; 10 s to deliver."""
    outcome: list[KafkaError | None] = []
    producer = Producer(
        {
            **conf,
            "message.timeout.ms": 10_000,
            "enable.idempotence": False,
            "allow.auto.create.topics": False,
        }
    )
    producer.produce(topic, b"v", on_delivery=lambda err, msg: outcome.append(err))
    producer.flush(15)
    assert len(outcome) == 1
    return outcome[0]
