"""A small synchronous client for the StreamHouse gRPC API.

Example::

    from streamhouse.client import Client, Record

    with Client("127.0.0.1:50051") as client:
        client.create_topic("events", partitions=3)
        partition, offset = client.produce("events", b"hello", key=b"user-1")
        records, next_offset, high_watermark, log_start = client.consume("events", partition, 0)

Every RPC failure is raised as :class:`StreamHouseError`, which carries the gRPC status code and
the server's message. Unary calls get a deadline of ``timeout`` seconds; the streaming calls
(:meth:`Client.subscribe`, :meth:`Client.produce_stream`) have none and run until the caller stops.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
import msgspec

from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.proto import streamhouse_pb2_grpc

__all__ = [
    "DEFAULT_ADDRESS",
    "EARLIEST",
    "LATEST",
    "READ_COMMITTED",
    "READ_UNCOMMITTED",
    "Client",
    "IdempotentProducer",
    "Record",
    "StreamHouseError",
    "record_from_pb",
    "record_to_pb",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
"""Address used when neither an explicit address nor ``STREAMHOUSE_ADDR`` is given."""

ADDRESS_ENV = "STREAMHOUSE_ADDR"
"""Environment variable holding the default server address."""

EARLIEST = -2
"""Special consume/subscribe offset: the first offset still in the log."""

LATEST = -1
"""Special consume/subscribe offset: the high watermark (only records produced from now on);
read committed, the last stable offset."""

READ_UNCOMMITTED = "read_uncommitted"
"""Consume isolation (the default, as Kafka's): every record up to the high watermark, records
of open and aborted transactions included."""

READ_COMMITTED = "read_committed"
"""Consume isolation: only committed records, up to the last stable offset (the first offset of
the oldest open transaction); records of aborted transactions are skipped."""

_ISOLATION = {READ_UNCOMMITTED: pb.READ_UNCOMMITTED, READ_COMMITTED: pb.READ_COMMITTED}


def _isolation(level: str) -> pb.IsolationLevel:
    try:
        return _ISOLATION[level]
    except KeyError:
        raise ValueError(
            f"isolation level {level!r} is invalid: use {READ_UNCOMMITTED!r} or {READ_COMMITTED!r}"
        ) from None


_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

# Status codes after which an idempotent batch is re-sent with the same sequence number.
# CANCELLED is what a client sees when ingest stops (or restarts) with the request in flight;
# the batch may or may not have been stored, and the sequence number makes the retry safe.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)


class StreamHouseError(Exception):
    """An RPC failed; ``code`` is the gRPC status code and ``message`` the server's details.

    ``str(error)`` is always a single line such as ``NOT_FOUND: topic 'x' does not exist``.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        text = " ".join(str(self.message).split())
        return f"{self.code.name}: {text}" if text else self.code.name

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> StreamHouseError:
        """Builds the error from a failed call (``grpc.RpcError`` that is also a ``grpc.Call``)."""
        code_fn = getattr(error, "code", None)
        details_fn = getattr(error, "details", None)
        code = code_fn() if callable(code_fn) else None
        details = details_fn() if callable(details_fn) else None
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        return cls(code, details if details is not None else str(error))


class Record(msgspec.Struct):
    """One log record as produced or consumed.

    ``key``/``value`` of ``None`` mean absent (a null key, or a tombstone value), which is
    different from ``b""``. ``timestamp_ms`` of 0 on produce means server time; ``offset`` is set
    on consumed records and ignored on produce.
    """

    key: bytes | None = None
    value: bytes | None = None
    headers: list[tuple[str, bytes | None]] = []
    timestamp_ms: int = 0
    offset: int = -1


def _as_bytes(data: bytes | bytearray | memoryview | str | None) -> bytes | None:
    """Returns ``data`` as bytes (str is UTF-8 encoded); ``None`` stays ``None``."""
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


def _headers_to_pb(headers: Iterable[tuple[str, Any]]) -> list[pb.Header]:
    """Converts ``(key, value)`` pairs to ``pb.Header``; a ``None`` value is left unset."""
    out = []
    for hkey, hvalue in headers:
        header = pb.Header(key=hkey)
        value = _as_bytes(hvalue)
        if value is not None:
            header.value = value
        out.append(header)
    return out


def record_to_pb(record: Record | pb.Record) -> pb.Record:
    """Converts a :class:`Record` to ``pb.Record``, leaving absent key/value fields unset."""
    if isinstance(record, pb.Record):
        return record
    message = pb.Record(
        headers=_headers_to_pb(record.headers), timestamp_ms=int(record.timestamp_ms or 0)
    )
    key = _as_bytes(record.key)
    if key is not None:
        message.key = key
    value = _as_bytes(record.value)
    if value is not None:
        message.value = value
    return message


def record_from_pb(message: pb.Record) -> Record:
    """Converts a consumed ``pb.Record`` to a :class:`Record`, keeping absent vs empty apart."""
    return Record(
        key=message.key if message.HasField("key") else None,
        value=message.value if message.HasField("value") else None,
        headers=[(h.key, h.value if h.HasField("value") else None) for h in message.headers],
        timestamp_ms=message.timestamp_ms,
        offset=message.offset,
    )


def _batch_request(
    topic: str, records: Iterable[Record | pb.Record], partition: int | None
) -> pb.ProduceBatchRequest:
    request = pb.ProduceBatchRequest(topic=topic, records=[record_to_pb(r) for r in records])
    if partition is not None:
        request.partition = partition
    return request


TOKEN_ENV = "STREAMHOUSE_TOKEN"
"""Environment variable holding the default gRPC token (``grpc_auth=token`` servers)."""


class _TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call (plaintext or TLS channels)."""

    def __init__(self, token: str) -> None:
        self._pair = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._pair]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise StreamHouseError(
            grpc.StatusCode.INVALID_ARGUMENT, f"cannot read the {what} {path!r}: {exc}"
        ) from None


def channel_credentials(
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials: the CA bundle the server is verified against (None: the
    system's roots) and, for mTLS, the client's certificate chain and key (PEM files)."""
    if bool(tls_cert_file) != bool(tls_key_file):
        raise StreamHouseError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "a client certificate needs both the certificate and the key file",
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file(tls_ca_file, "CA file") if tls_ca_file else None,
        private_key=_read_file(tls_key_file, "key file") if tls_key_file else None,
        certificate_chain=_read_file(tls_cert_file, "certificate file") if tls_cert_file else None,
    )


def open_channel(
    address: str,
    message_limit: int,
    *,
    tls: bool = False,
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    tls_server_name: str | None = None,
) -> grpc.Channel:
    """A gRPC channel to ``address`` sending and receiving messages of up to ``message_limit``
    bytes: TLS (:func:`channel_credentials`) when ``tls`` or any ``tls_*`` file is given, with
    ``tls_server_name`` as the name the server's certificate must carry; else plaintext."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", message_limit),
        ("grpc.max_send_message_length", message_limit),
    ]
    if not (tls or tls_ca_file or tls_cert_file or tls_key_file):
        return grpc.insecure_channel(address, options=options)
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    credentials = channel_credentials(tls_ca_file, tls_cert_file, tls_key_file)
    return grpc.secure_channel(address, credentials, options=options)


class Client:
    """A synchronous StreamHouse client over one gRPC channel.

    Args:
        address: ``host:port`` of the server. ``None`` (the default) reads ``STREAMHOUSE_ADDR``
            and falls back to ``127.0.0.1:50051``.
        timeout: deadline in seconds for each unary call (long-poll waits are added on top).
        tls: use TLS (implied by any ``tls_*`` argument).
        tls_ca_file: PEM bundle the server's certificate is verified against (default: the
            system's roots).
        tls_cert_file, tls_key_file: the client certificate and key (servers with
            ``grpc_auth=mtls``).
        token: sent as ``authorization: Bearer <token>`` on every call (servers with
            ``grpc_auth=token``); ``None`` reads ``STREAMHOUSE_TOKEN``.
        tls_server_name: the name the server certificate must carry when it differs from the
            address's host.
    """

    def __init__(
        self,
        address: str | None = None,
        timeout: float = 30.0,
        *,
        tls: bool = False,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        token: str | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        if address is None:
            address = os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        self.address = address
        self.timeout = timeout
        self._channel = open_channel(
            address,
            _MAX_MESSAGE_BYTES,
            tls=tls,
            tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_server_name=tls_server_name,
        )
        token = os.environ.get(TOKEN_ENV) if token is None else token
        if token:
            self._channel = grpc.intercept_channel(self._channel, _TokenInterceptor(token))
        self._stub = streamhouse_pb2_grpc.StreamHouseStub(self._channel)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; in-flight calls and streams are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(address={self.address!r}, timeout={self.timeout!r})"

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        """Runs one unary call with a deadline, mapping failures to :class:`StreamHouseError`."""
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise StreamHouseError.from_rpc_error(error) from None

    # -- topics ----------------------------------------------------------------------------

    def create_topic(
        self, name: str, partitions: int = 1, config: dict[str, str] | None = None
    ) -> pb.Topic:
        """Creates a topic and returns it as the server describes it."""
        request = pb.CreateTopicRequest(name=name, partitions=partitions, config=config or {})
        return self._call(self._stub.CreateTopic, request).topic

    def get_topic(self, name: str) -> pb.Topic:
        """Returns one topic, including per-partition offsets."""
        return self._call(self._stub.GetTopic, pb.GetTopicRequest(name=name)).topic

    def list_topics(self) -> list[pb.Topic]:
        """Returns all topics."""
        return list(self._call(self._stub.ListTopics, pb.ListTopicsRequest()).topics)

    def delete_topic(self, name: str) -> None:
        """Deletes a topic."""
        self._call(self._stub.DeleteTopic, pb.DeleteTopicRequest(name=name))

    def alter_topic_config(
        self,
        name: str,
        set_entries: dict[str, str] | None = None,
        delete_entries: Iterable[str] = (),
        validate_only: bool = False,
    ) -> pb.Topic:
        """Sets ``set_entries`` and removes ``delete_entries`` (back to their defaults) in a
        topic's config, as Kafka's IncrementalAlterConfigs; returns the topic as it is now (with
        ``validate_only``, as it would be; nothing is changed)."""
        request = pb.AlterTopicConfigRequest(
            name=name,
            set_entries=set_entries or {},
            delete_entries=list(delete_entries),
            validate_only=validate_only,
        )
        return self._call(self._stub.AlterTopicConfig, request).topic

    # -- produce ---------------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        value: bytes | str | None,
        key: bytes | str | None = None,
        headers: Iterable[tuple[str, bytes | str | None]] = (),
        partition: int | None = None,
        timestamp_ms: int = 0,
    ) -> tuple[int, int]:
        """Appends one record and returns ``(partition, offset)``.

        ``str`` keys, values and header values are UTF-8 encoded; ``None`` leaves them absent.
        Without ``partition`` the server picks one (by key when there is one).
        """
        record = Record(
            key=_as_bytes(key),
            value=_as_bytes(value),
            headers=list(headers),
            timestamp_ms=timestamp_ms,
        )
        request = pb.ProduceRequest(topic=topic, record=record_to_pb(record))
        if partition is not None:
            request.partition = partition
        response = self._call(self._stub.Produce, request)
        return response.partition, response.base_offset

    def produce_batch(
        self,
        topic: str,
        records: Sequence[Record | pb.Record],
        partition: int | None = None,
        idempotent_as: IdempotentProducer | None = None,
    ) -> pb.ProduceBatchResponse:
        """Appends records in one call and returns the server's acknowledgement.

        Without ``idempotent_as`` the call is made once (a retry could duplicate records).
        With it, ``partition`` is required and the batch carries the producer's id, epoch and
        sequence, and is retried as described in :meth:`IdempotentProducer.produce_batch`.
        """
        if idempotent_as is not None:
            if partition is None:
                raise ValueError("an idempotent produce_batch needs an explicit partition")
            return idempotent_as._produce_via(self, topic, partition, records)
        return self._call(self._stub.ProduceBatch, _batch_request(topic, records, partition))

    def _produce_batch_request(self, request: pb.ProduceBatchRequest) -> pb.ProduceBatchResponse:
        return self._call(self._stub.ProduceBatch, request)

    def produce_stream(
        self,
        topic: str,
        batches: Iterable[Sequence[Record | pb.Record]],
        partition: int | None = None,
    ) -> Iterator[pb.ProduceBatchResponse]:
        """Sends batches over one ProduceStream call, yielding acknowledgements in order.

        ``batches`` is consumed lazily from a gRPC thread, so acknowledgements can arrive while
        later batches are still being produced. If iterating ``batches`` raises, the batches
        sent so far are still acknowledged and the exception is re-raised afterwards.
        Closing the returned iterator early cancels the stream.
        """
        failure: list[BaseException] = []

        def requests() -> Iterator[pb.ProduceBatchRequest]:
            try:
                for batch in batches:
                    yield _batch_request(topic, batch, partition)
            except Exception as error:  # surfaced to the caller after the acks
                failure.append(error)

        call = self._stub.ProduceStream(requests())
        try:
            yield from call
        except grpc.RpcError as error:
            raise StreamHouseError.from_rpc_error(error) from None
        finally:
            call.cancel()
        if failure:
            raise failure[0]

    # -- consume ---------------------------------------------------------------------------

    def consume(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_records: int = 0,
        max_bytes: int = 0,
        max_wait_ms: int = 0,
        isolation: str = READ_UNCOMMITTED,
    ) -> tuple[list[Record], int, int, int]:
        """Reads records from ``offset`` (or :data:`EARLIEST`/:data:`LATEST`).

        Returns ``(records, next_offset, high_watermark, log_start_offset)``; pass
        ``next_offset`` to the next call. ``max_wait_ms`` long-polls at the tail.
        ``isolation``: :data:`READ_UNCOMMITTED` or :data:`READ_COMMITTED` (``ValueError``
        otherwise); read committed, ``next_offset`` may move past skipped records with
        none returned.
        """
        level = _isolation(isolation)
        request = pb.ConsumeRequest(
            topic=topic,
            partition=partition,
            offset=offset,
            max_records=max_records,
            max_bytes=max_bytes,
            max_wait_ms=max_wait_ms,
            isolation_level=level,
        )
        response = self._call(
            self._stub.Consume, request, timeout=self.timeout + max(max_wait_ms, 0) / 1000.0
        )
        records = [record_from_pb(r) for r in response.records]
        return records, response.next_offset, response.high_watermark, response.log_start_offset

    def subscribe(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_records: int = 0,
        max_bytes: int = 0,
        isolation: str = READ_UNCOMMITTED,
    ) -> Iterator[Record]:
        """Yields records from ``offset`` onwards, following the tail indefinitely
        (``isolation`` as in :meth:`consume`).

        The stream stays open until the caller stops iterating; closing the generator
        (``close()``, ``break`` followed by garbage collection, or an exception such as
        ``KeyboardInterrupt`` inside the loop) cancels the server stream.
        """
        request = pb.SubscribeRequest(
            topic=topic,
            partition=partition,
            offset=offset,
            max_records=max_records,
            max_bytes=max_bytes,
            isolation_level=_isolation(isolation),
        )
        call = self._stub.Subscribe(request)
        try:
            for response in call:
                for message in response.records:
                    yield record_from_pb(message)
        except grpc.RpcError as error:
            raise StreamHouseError.from_rpc_error(error) from None
        finally:
            call.cancel()

    # -- consumer group offsets -------------------------------------------------------------

    def commit_offset(
        self, group: str, topic: str, partition: int, offset: int, metadata: str = ""
    ) -> None:
        """Stores ``offset`` (the next offset to read) for a consumer group."""
        request = pb.CommitOffsetRequest(
            group=group, topic=topic, partition=partition, offset=offset, metadata=metadata
        )
        self._call(self._stub.CommitOffset, request)

    def get_offset(self, group: str, topic: str, partition: int) -> tuple[int, str]:
        """Returns ``(offset, metadata)``; offset is -1 when nothing is committed."""
        request = pb.GetOffsetRequest(group=group, topic=topic, partition=partition)
        response = self._call(self._stub.GetOffset, request)
        return response.offset, response.metadata

    # -- idempotence -----------------------------------------------------------------------

    def init_producer(self) -> tuple[int, int]:
        """Allocates a producer id; returns ``(producer_id, producer_epoch)``."""
        response = self._call(self._stub.InitProducer, pb.InitProducerRequest())
        return response.producer_id, response.producer_epoch

    # -- cluster ---------------------------------------------------------------------------

    def describe_cluster(self) -> pb.DescribeClusterResponse:
        """Every registered agent of the cluster (``agents``, by node id, each with its
        addresses, zone, ``state`` alive/expired/stopped and lease times), which agent answered
        and its clock (``now_ms``)."""
        return self._call(self._stub.DescribeCluster, pb.DescribeClusterRequest())

    # -- storage ---------------------------------------------------------------------------

    def describe_storage(self, small_object_bytes: int = 0) -> pb.DescribeStorageResponse:
        """Storage per topic (``topics``, by name) and in total, as metadata knows it: live
        objects and their bytes, live bytes, dead objects awaiting deletion, small objects (below
        ``small_object_bytes``; 0: the server's lifecycle_small_object_bytes), objects and bytes
        created in the last hour."""
        request = pb.DescribeStorageRequest(small_object_bytes=small_object_bytes)
        return self._call(self._stub.DescribeStorage, request)


class IdempotentProducer:
    """Produces batches that the server deduplicates, so they are safe to retry.

    Holds a producer id and epoch from InitProducer (allocated on construction unless given)
    and a sequence number per ``(topic, partition)``. :meth:`produce_batch` retries
    UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED with exponential backoff and jitter, re-sending
    the SAME sequence each time, and advances the sequence by ``len(records)`` only once the
    server has acknowledged the batch.

    If :meth:`produce_batch` finally raises, the sequence is not advanced and the outcome may be
    unknown (the server may have written the batch). Calling it again with the same records is
    safe (a duplicate is dropped by the server); to send different records instead, first call
    :meth:`reset` to get a new producer id. Calls are serialized by an internal lock.

    Args:
        client: the client used for InitProducer and by :meth:`produce_batch`.
        max_attempts: total attempts per batch (1 means no retries).
        initial_backoff: seconds to wait before the first retry; doubles per retry.
        max_backoff: upper bound for the wait between attempts.
        producer_id / producer_epoch: reuse an existing producer identity instead of
            calling InitProducer.
        sleep: the function used to wait (replaceable in tests).
    """

    SEQUENCE_MODULUS = 2**31

    def __init__(
        self,
        client: Client,
        *,
        max_attempts: int = 5,
        initial_backoff: float = 0.05,
        max_backoff: float = 2.0,
        producer_id: int | None = None,
        producer_epoch: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.client = client
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._sequences: dict[tuple[str, int], int] = {}
        if producer_id is None:
            producer_id, producer_epoch = self._with_retries(client.init_producer)
        self.producer_id: int = producer_id
        self.producer_epoch: int = producer_epoch

    def sequence(self, topic: str, partition: int) -> int:
        """The base sequence the next batch to ``topic``/``partition`` will carry."""
        return self._sequences.get((topic, partition), 0)

    def reset(self) -> None:
        """Gets a new producer id from the server and starts every sequence again at 0."""
        with self._lock:
            self.producer_id, self.producer_epoch = self._with_retries(self.client.init_producer)
            self._sequences.clear()

    def produce_batch(
        self, topic: str, partition: int, records: Sequence[Record | pb.Record]
    ) -> pb.ProduceBatchResponse:
        """Appends ``records`` to one partition exactly once, retrying transient failures."""
        return self._produce_via(self.client, topic, partition, records)

    def _produce_via(
        self, client: Client, topic: str, partition: int, records: Sequence[Record | pb.Record]
    ) -> pb.ProduceBatchResponse:
        if not records:
            raise ValueError("an idempotent batch needs at least one record")
        with self._lock:
            key = (topic, partition)
            sequence = self._sequences.get(key, 0)
            request = _batch_request(topic, records, partition)
            request.producer_id = self.producer_id
            request.producer_epoch = self.producer_epoch
            request.base_sequence = sequence
            response = self._with_retries(lambda: client._produce_batch_request(request))
            self._sequences[key] = (sequence + len(records)) % self.SEQUENCE_MODULUS
            return response

    def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        """Runs ``attempt`` up to ``max_attempts`` times while it fails with a retryable code."""
        backoff = self.initial_backoff
        for number in range(1, self.max_attempts + 1):
            try:
                return attempt()
            except StreamHouseError as error:
                if error.code not in RETRYABLE_CODES or number == self.max_attempts:
                    raise
            self._sleep(min(backoff, self.max_backoff) * random.uniform(0.5, 1.0))
            backoff *= 2
        raise AssertionError("unreachable")
