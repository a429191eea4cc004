"""Round trips and refusals of confluent-kafka, kafka-python and aiokafka against a listener
that requires SASL (shared by the auth integration tests)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import kafka.errors as kafka_errors
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.structs import TopicPartition as AioTopicPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition

from streamhouse.testing import wait_until

DEADLINE_S = 20.0
CLIENTS = ("confluent", "kafka-python", "aiokafka")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class Auth:
    """How a client connects: protocol, mechanism, user, password, CA file (SASL_SSL)."""

    def __init__(
        self, protocol: str, mechanism: str, user: str, password: str, ca_file: str | None = None
    ) -> None:
        self.protocol = protocol
        self.mechanism = mechanism
        self.user = user
        self.password = password
        self.ca_file = ca_file

    def confluent(self, bootstrap: str) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "security.protocol": self.protocol,
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.user,
            "sasl.password": self.password,
        }
        if self.ca_file:
            conf["ssl.ca.location"] = self.ca_file
        return conf

    def _python_sasl(self, bootstrap: str) -> dict[str, Any]:
        """The options kafka-python and aiokafka name alike."""
        return {
            "bootstrap_servers": bootstrap,
            "security_protocol": self.protocol,
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": self.user,
            "sasl_plain_password": self.password,
        }

    def kafka_python(self, bootstrap: str) -> dict[str, Any]:
        conf = self._python_sasl(bootstrap)
        if self.ca_file:
            conf["ssl_cafile"] = self.ca_file
        return conf

    def aiokafka(self, bootstrap: str) -> dict[str, Any]:
        conf = self._python_sasl(bootstrap)
        if self.ca_file:
            conf["ssl_context"] = ssl.create_default_context(cafile=self.ca_file)
        return conf


def round_trip(client: str, bootstrap: str, auth: Auth, topic: str, value: bytes) -> bytes:
    """Produces ``value`` to partition 0 of ``topic`` and reads it back; returns what was read."""
    if client == "confluent":
        return _confluent(bootstrap, auth, topic, value)
    if client == "kafka-python":
        return _kafka_python(bootstrap, auth, topic, value)
    return asyncio.run(_aiokafka(bootstrap, auth, topic, value))


def _confluent(bootstrap: str, auth: Auth, topic: str, value: bytes) -> bytes:
    producer = Producer(auth.confluent(bootstrap))
    errors: list[Any] = []
    producer.produce(topic, value, partition=0, on_delivery=lambda e, m: errors.append(e))
    assert producer.flush(DEADLINE_S) == 0 and errors == [None], errors
    consumer = Consumer(auth.confluent(bootstrap) | {"group.id": f"g-{topic}"})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                return bytes(msg.value())
        raise AssertionError(f"nothing consumed from {topic}")
    finally:
        consumer.close()


def _kafka_python(bootstrap: str, auth: Auth, topic: str, value: bytes) -> bytes:
    producer = KafkaProducer(**auth.kafka_python(bootstrap))
    try:
        producer.send(topic, value, partition=0).get(timeout=DEADLINE_S)
    finally:
        producer.close()
    consumer = KafkaConsumer(**auth.kafka_python(bootstrap), consumer_timeout_ms=10_000)
    try:
        tp = KpTopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        for message in consumer:
            return bytes(message.value)
        raise AssertionError(f"nothing consumed from {topic}")
    finally:
        consumer.close()


async def _aiokafka(bootstrap: str, auth: Auth, topic: str, value: bytes) -> bytes:
    producer = AIOKafkaProducer(**auth.aiokafka(bootstrap))
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**auth.aiokafka(bootstrap))
    await consumer.start()
    try:
        tp = AioTopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        message = await asyncio.wait_for(consumer.getone(), DEADLINE_S)
        return bytes(message.value)
    finally:
        await consumer.stop()


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def refused(client: str, bootstrap: str, auth: Auth) -> str:
    """Connects with ``auth`` (a wrong secret) and returns the client's authentication error;
    fails if the client got anywhere."""
    if client == "confluent":
        seen: list[KafkaError] = []
        producer = Producer(auth.confluent(bootstrap) | {"error_cb": seen.append})
        try:
            wait_until(
                lambda: (
                    bool(producer.poll(0.2) or True)
                    and any(e.code() == KafkaError._AUTHENTICATION for e in seen)
                ),
                DEADLINE_S,
                "librdkafka reporting an authentication error",
            )
        finally:
            producer.flush(0)
        return next(e.str() for e in seen if e.code() == KafkaError._AUTHENTICATION)
    if client == "kafka-python":
        # kafka-python logs the authentication error and gives up bootstrapping.
        failures = _Failures()
        logging.getLogger("kafka").addHandler(failures)
        try:
            producer = KafkaProducer(**auth.kafka_python(bootstrap), bootstrap_timeout_ms=3000)
        except kafka_errors.KafkaTimeoutError:
            auth_errors = [m for m in failures.messages if "SaslAuthenticationFailed" in m]
            assert auth_errors, failures.messages
            return auth_errors[0]
        finally:
            logging.getLogger("kafka").removeHandler(failures)
        producer.close()
        raise AssertionError("kafka-python connected with a wrong password")
    return asyncio.run(_aiokafka_refused(bootstrap, auth))


async def _aiokafka_refused(bootstrap: str, auth: Auth) -> str:
    # One connection (what bootstrap makes), so the authentication error itself surfaces.
    host, _, port = bootstrap.rpartition(":")
    conf = auth.aiokafka(bootstrap)
    del conf["bootstrap_servers"]
    try:
        conn = await create_conn(host, int(port), **conf)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    conn.close()
    raise AssertionError("aiokafka connected with a wrong password")
