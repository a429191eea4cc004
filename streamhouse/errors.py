"""StreamHouse's one error vocabulary: every failure, on every ring and every protocol.

An error is an ``ErrorCode`` (a name, whether retrying can help, its Kafka error code and the
gRPC status it maps to) plus a message that says what went wrong and what to do. Processes
carry it across the rings as ``(code, message)`` — the integer is the Kafka code, so one
number means the same thing everywhere — and each protocol shell maps it in one place:
``ErrorCode.kafka_code`` for Kafka responses, ``ErrorCode.grpc_status`` for gRPC.

Rules:
- A process that refuses or fails something raises or returns ``StreamHouseError``; nothing
  else (strings, bare numbers) crosses a process or protocol boundary.
- ``retriable`` is true only when the same request can succeed later unchanged (the store
  was down, a peer restarted, a timeout); bad input is never retriable.
- Kafka codes are Kafka's own numbers (``ingest/kafka/errors.py`` re-exports them by name);
  every code StreamHouse answers with is in the table below, so an unknown number on a ring
  is a bug and maps to ``UNKNOWN_SERVER_ERROR``.
"""

from __future__ import annotations

import enum

import grpc
import msgspec

__all__ = ["ErrorCode", "RingError", "StreamHouseError", "from_ring", "to_ring"]

_S = grpc.StatusCode


class ErrorCode(enum.Enum):
    """(Kafka code, retriable, gRPC status) per error, named as in Kafka's protocol."""

    # name = (kafka_code, retriable, grpc_status)
    UNKNOWN_SERVER_ERROR = (-1, False, _S.INTERNAL)
    NONE = (0, False, _S.OK)
    OFFSET_OUT_OF_RANGE = (1, False, _S.OUT_OF_RANGE)
    CORRUPT_MESSAGE = (2, True, _S.INVALID_ARGUMENT)
    UNKNOWN_TOPIC_OR_PARTITION = (3, True, _S.NOT_FOUND)
    INVALID_FETCH_SIZE = (4, False, _S.INVALID_ARGUMENT)
    NOT_LEADER_OR_FOLLOWER = (6, True, _S.UNAVAILABLE)
    REQUEST_TIMED_OUT = (7, True, _S.UNAVAILABLE)
    MESSAGE_TOO_LARGE = (10, False, _S.INVALID_ARGUMENT)
    COORDINATOR_NOT_AVAILABLE = (15, True, _S.UNAVAILABLE)
    NOT_COORDINATOR = (16, True, _S.UNAVAILABLE)
    INVALID_TOPIC_EXCEPTION = (17, False, _S.INVALID_ARGUMENT)
    RECORD_LIST_TOO_LARGE = (18, False, _S.INVALID_ARGUMENT)
    NOT_ENOUGH_REPLICAS = (19, True, _S.UNAVAILABLE)
    INVALID_REQUIRED_ACKS = (21, False, _S.INVALID_ARGUMENT)
    ILLEGAL_GENERATION = (22, False, _S.FAILED_PRECONDITION)
    INCONSISTENT_GROUP_PROTOCOL = (23, False, _S.FAILED_PRECONDITION)
    INVALID_GROUP_ID = (24, False, _S.INVALID_ARGUMENT)
    UNKNOWN_MEMBER_ID = (25, False, _S.FAILED_PRECONDITION)
    INVALID_SESSION_TIMEOUT = (26, False, _S.INVALID_ARGUMENT)
    REBALANCE_IN_PROGRESS = (27, False, _S.FAILED_PRECONDITION)
    INVALID_COMMIT_OFFSET_SIZE = (28, False, _S.INVALID_ARGUMENT)
    TOPIC_AUTHORIZATION_FAILED = (29, False, _S.PERMISSION_DENIED)
    GROUP_AUTHORIZATION_FAILED = (30, False, _S.PERMISSION_DENIED)
    CLUSTER_AUTHORIZATION_FAILED = (31, False, _S.PERMISSION_DENIED)
    INVALID_TIMESTAMP = (32, False, _S.INVALID_ARGUMENT)
    UNSUPPORTED_VERSION = (35, False, _S.INVALID_ARGUMENT)
    TOPIC_ALREADY_EXISTS = (36, False, _S.ALREADY_EXISTS)
    INVALID_PARTITIONS = (37, False, _S.INVALID_ARGUMENT)
    INVALID_REPLICATION_FACTOR = (38, False, _S.INVALID_ARGUMENT)
    INVALID_CONFIG = (40, False, _S.INVALID_ARGUMENT)
    INVALID_REQUEST = (42, False, _S.INVALID_ARGUMENT)
    UNSUPPORTED_FOR_MESSAGE_FORMAT = (43, False, _S.INVALID_ARGUMENT)
    POLICY_VIOLATION = (44, False, _S.FAILED_PRECONDITION)
    OUT_OF_ORDER_SEQUENCE_NUMBER = (45, False, _S.FAILED_PRECONDITION)
    DUPLICATE_SEQUENCE_NUMBER = (46, False, _S.FAILED_PRECONDITION)
    INVALID_PRODUCER_EPOCH = (47, False, _S.FAILED_PRECONDITION)
    INVALID_TXN_STATE = (48, False, _S.FAILED_PRECONDITION)
    INVALID_PRODUCER_ID_MAPPING = (49, False, _S.FAILED_PRECONDITION)
    INVALID_TRANSACTION_TIMEOUT = (50, False, _S.INVALID_ARGUMENT)
    CONCURRENT_TRANSACTIONS = (51, True, _S.UNAVAILABLE)
    TRANSACTION_COORDINATOR_FENCED = (52, False, _S.FAILED_PRECONDITION)
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = (53, False, _S.PERMISSION_DENIED)
    SECURITY_DISABLED = (54, False, _S.FAILED_PRECONDITION)
    OPERATION_NOT_ATTEMPTED = (55, False, _S.ABORTED)
    KAFKA_STORAGE_ERROR = (56, True, _S.UNAVAILABLE)
    UNKNOWN_PRODUCER_ID = (59, False, _S.FAILED_PRECONDITION)
    NON_EMPTY_GROUP = (68, False, _S.FAILED_PRECONDITION)
    GROUP_ID_NOT_FOUND = (69, False, _S.NOT_FOUND)
    MEMBER_ID_REQUIRED = (79, False, _S.FAILED_PRECONDITION)
    FENCED_INSTANCE_ID = (82, False, _S.FAILED_PRECONDITION)
    GROUP_SUBSCRIBED_TO_TOPIC = (86, False, _S.FAILED_PRECONDITION)
    INVALID_RECORD = (87, False, _S.INVALID_ARGUMENT)
    UNSTABLE_OFFSET_COMMIT = (88, True, _S.UNAVAILABLE)
    THROTTLING_QUOTA_EXCEEDED = (89, True, _S.RESOURCE_EXHAUSTED)
    PRODUCER_FENCED = (90, False, _S.FAILED_PRECONDITION)
    RESOURCE_NOT_FOUND = (91, False, _S.NOT_FOUND)
    UNKNOWN_TOPIC_ID = (100, True, _S.NOT_FOUND)
    TRANSACTIONAL_ID_NOT_FOUND = (105, False, _S.NOT_FOUND)

    def __init__(self, kafka_code: int, retriable: bool, grpc_status: grpc.StatusCode) -> None:
        self.kafka_code = kafka_code
        self.retriable = retriable
        self.grpc_status = grpc_status

    @classmethod
    def from_kafka_code(cls, code: int) -> ErrorCode:
        """The error for a Kafka code; an unknown number is ``UNKNOWN_SERVER_ERROR``."""
        return _BY_KAFKA_CODE.get(code, cls.UNKNOWN_SERVER_ERROR)

    @classmethod
    def from_name(cls, name: str) -> ErrorCode:
        """The error for a Kafka error name; an unknown name is ``UNKNOWN_SERVER_ERROR``."""
        return cls.__members__.get(name, cls.UNKNOWN_SERVER_ERROR)


_BY_KAFKA_CODE: dict[int, ErrorCode] = {e.kafka_code: e for e in ErrorCode}


class StreamHouseError(Exception):
    """A failure with its ``ErrorCode`` and a message saying what went wrong and what to do."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def retriable(self) -> bool:
        return self.code.retriable

    def __repr__(self) -> str:
        return f"StreamHouseError({self.code.name}, {self.message!r})"

    def __reduce__(self) -> tuple[type[StreamHouseError], tuple[ErrorCode, str]]:
        return type(self), (self.code, self.message)


class RingError(msgspec.Struct, array_like=True, frozen=True):
    """An error as it crosses a ring: msgpack ``[kafka_code, message]``; code 0 is success."""

    code: int
    message: str = ""


RING_OK = RingError(0, "")


def to_ring(error: StreamHouseError | None) -> RingError:
    """The ring form of an error; ``None`` (success) is ``RING_OK``."""
    if error is None:
        return RING_OK
    return RingError(error.code.kafka_code, error.message)


def from_ring(error: RingError) -> StreamHouseError | None:
    """Back from the ring form; success gives ``None``."""
    if error.code == 0:
        return None
    return StreamHouseError(ErrorCode.from_kafka_code(error.code), error.message)
