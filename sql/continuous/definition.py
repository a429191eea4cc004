"""What a continuous query is (catalog entry) and what its checkpoint says (for describe).

Catalog entry (metadata ``catalog``, kind ``"query"``, name = the query's name): the msgspec
JSON of ``QueryDefinition``. Written by ``CREATE MATERIALIZED VIEW`` / ``CREATE STREAM ... AS``
(sql.engine), read by the sql service (which runs a runner per entry) and the runner.

Checkpoint payload (metadata ``query_checkpoints.payload``, written by the runner in the same
transaction as the output it covers): the msgpack of ``CheckpointState``. ``positions`` maps
source name -> partition -> next offset to read; ``state_key`` is the object holding the
plan's snapshot (None: no state yet); ``view_key`` the object holding a view's current rows as
one Arrow IPC stream (views only). Counters are totals since the query was created; the
``*_per_s`` rates are over the last checkpoint interval.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "QUERY_CATALOG_KIND",
    "CheckpointState",
    "QueryDefinition",
    "decode_checkpoint",
    "decode_definition",
    "encode_checkpoint",
    "encode_definition",
]

QUERY_CATALOG_KIND = "query"


class QueryDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """``kind``: ``"view"`` (CREATE MATERIALIZED VIEW: results kept as a queryable table) or
    ``"stream"`` (CREATE STREAM ... AS: results appended to ``output_topic``). ``sql`` is the
    SELECT. ``options`` are the WITH options other than topic/format (for example
    ``allowed_lateness_ms``, ``dead_letter_topic``)."""

    name: str
    kind: str
    sql: str
    output_topic: str | None = None
    output_format: str = "json"
    options: dict[str, str] = {}
    created_ms: int = 0


class CheckpointState(msgspec.Struct, kw_only=True):
    step: int = 0
    positions: dict[str, dict[int, int]] = {}
    watermark_ms: int | None = None
    state_key: str | None = None
    view_key: str | None = None
    rows_in: int = 0
    rows_out: int = 0
    decode_errors: int = 0
    late_rows_dropped: int = 0
    dead_lettered: int = 0
    rows_in_per_s: float = 0.0
    rows_out_per_s: float = 0.0
    updated_ms: int = 0
    last_error: str | None = None


_DEF_ENCODER = msgspec.json.Encoder()
_DEF_DECODER = msgspec.json.Decoder(QueryDefinition)
_CP_ENCODER = msgspec.msgpack.Encoder()
_CP_DECODER = msgspec.msgpack.Decoder(CheckpointState)


def encode_definition(definition: QueryDefinition) -> bytes:
    return _DEF_ENCODER.encode(definition)


def decode_definition(data: bytes) -> QueryDefinition:
    return _DEF_DECODER.decode(data)


def encode_checkpoint(state: CheckpointState) -> bytes:
    return _CP_ENCODER.encode(state)


def decode_checkpoint(data: bytes) -> CheckpointState:
    """An empty payload (a query claimed but never committed) is the initial state."""
    return _CP_DECODER.decode(data) if data else CheckpointState()
