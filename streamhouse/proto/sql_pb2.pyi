from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecuteRequest(_message.Message):
    __slots__ = ("statement", "max_read_bytes")
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    statement: str
    max_read_bytes: int
    def __init__(self, statement: _Optional[str] = ..., max_read_bytes: _Optional[int] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("ipc", "message", "stats")
    IPC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ipc: bytes
    message: str
    stats: str
    def __init__(self, ipc: _Optional[bytes] = ..., message: _Optional[str] = ..., stats: _Optional[str] = ...) -> None: ...

class ListQueriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQueriesResponse(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[QueryStatus]
    def __init__(self, queries: _Optional[_Iterable[_Union[QueryStatus, _Mapping]]] = ...) -> None: ...

class DescribeQueryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropQueryRequest(_message.Message):
    __slots__ = ("name", "if_exists")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IF_EXISTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    if_exists: bool
    def __init__(self, name: _Optional[str] = ..., if_exists: _Optional[bool] = ...) -> None: ...

class DropQueryResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class SourceLag(_message.Message):
    __slots__ = ("source", "topic", "partition", "high_watermark", "position", "lag")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    source: str
    topic: str
    partition: int
    high_watermark: int
    position: int
    lag: int
    def __init__(self, source: _Optional[str] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., high_watermark: _Optional[int] = ..., position: _Optional[int] = ..., lag: _Optional[int] = ...) -> None: ...

class RunnerStatus(_message.Message):
    __slots__ = ("state", "pid", "restarts", "last_exit_code", "last_error", "started_ms", "backoff_ms")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    state: str
    pid: int
    restarts: int
    last_exit_code: int
    last_error: str
    started_ms: int
    backoff_ms: int
    def __init__(self, state: _Optional[str] = ..., pid: _Optional[int] = ..., restarts: _Optional[int] = ..., last_exit_code: _Optional[int] = ..., last_error: _Optional[str] = ..., started_ms: _Optional[int] = ..., backoff_ms: _Optional[int] = ...) -> None: ...

class QueryStatus(_message.Message):
    __slots__ = ("name", "kind", "sql", "output_topic", "options", "created_ms", "generation", "step", "checkpoint_ms", "watermark_ms", "rows_in", "rows_out", "rows_in_per_s", "rows_out_per_s", "decode_errors", "late_rows_dropped", "dead_lettered", "last_error", "lag", "sources", "runner")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOPIC_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_MS_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_MS_FIELD_NUMBER: _ClassVar[int]
    ROWS_IN_FIELD_NUMBER: _ClassVar[int]
    ROWS_OUT_FIELD_NUMBER: _ClassVar[int]
    ROWS_IN_PER_S_FIELD_NUMBER: _ClassVar[int]
    ROWS_OUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATE_ROWS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    sql: str
    output_topic: str
    options: _containers.ScalarMap[str, str]
    created_ms: int
    generation: int
    step: int
    checkpoint_ms: int
    watermark_ms: int
    rows_in: int
    rows_out: int
    rows_in_per_s: float
    rows_out_per_s: float
    decode_errors: int
    late_rows_dropped: int
    dead_lettered: int
    last_error: str
    lag: int
    sources: _containers.RepeatedCompositeFieldContainer[SourceLag]
    runner: RunnerStatus
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., sql: _Optional[str] = ..., output_topic: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., created_ms: _Optional[int] = ..., generation: _Optional[int] = ..., step: _Optional[int] = ..., checkpoint_ms: _Optional[int] = ..., watermark_ms: _Optional[int] = ..., rows_in: _Optional[int] = ..., rows_out: _Optional[int] = ..., rows_in_per_s: _Optional[float] = ..., rows_out_per_s: _Optional[float] = ..., decode_errors: _Optional[int] = ..., late_rows_dropped: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., last_error: _Optional[str] = ..., lag: _Optional[int] = ..., sources: _Optional[_Iterable[_Union[SourceLag, _Mapping]]] = ..., runner: _Optional[_Union[RunnerStatus, _Mapping]] = ...) -> None: ...
