"""The contracts between the parts of a continuous query (sans-I/O; no reads, no writes).

A continuous query compiles (``sql.continuous.plan.plan_continuous``) into a
``ContinuousPlan``: a small graph of ``Stage`` objects fed Arrow record batches. The runner
(``sql.continuous.runner``) reads the sources, hands each decoded batch to
``ContinuousPlan.process`` and writes what it returns to the output; at a checkpoint it stores
``ContinuousPlan.snapshot()`` beside the input positions, in one metadata transaction with the
output (so results are exactly-once), and a restarted runner calls ``restore``.

Batches a source delivers
-------------------------
For a declared stream or table: its declared columns, then ``_partition`` (int32),
``_offset`` (int64), ``_timestamp`` (timestamp[ms]); a table also ``_key`` (binary). For a
raw topic: ``partition``, ``offset``, ``timestamp``, ``key``, ``value``, ``headers`` (the
ad-hoc engine's raw columns). Records that do not decode never reach the plan (the runner
counts them and, if configured, sends them to a dead-letter topic).

Time
----
Event time is milliseconds. A source's watermark is, over its partitions (the batches'
``_partition``) that are not idle, the lowest of (the largest event time seen in that
partition on the declared watermark column minus the declared delay); when all are idle,
the largest; it never goes back. The plan tracks it itself from the batches it is given, so
a runner reading one partition ahead of another does not make the other's rows late. Two
optional plan methods (a plan without them keeps to the partitions it has seen, none idle;
callers check with ``getattr``):

- ``set_partitions(source, partitions)``: the partitions the source has now; one without
  rows yet (and not idle) holds the watermark back;
- ``mark_idle(source, partitions) -> list[pa.RecordBatch]``: the partitions that are idle
  now (the runner's rule: caught up to the high watermark, nothing new for a while),
  replacing the previous set; they stop holding the watermark back. Returns the results
  this releases (windows the watermark now passes), like ``process``.

A stage's output watermark is what its consumers may rely on (no later row of the stage
has an event time below it).

Results
-------
``ContinuousPlan.process`` returns result batches with ``output_schema``. When
``key_columns`` is empty the results are append-only (every row is a new result). Otherwise
they are upserts: a row replaces any earlier row with the same values of ``key_columns``
(a materialized view keeps the latest row per key; an output topic gets the key columns as
the record key, so a compacted topic converges to the view).

Deletes: a batch of an upsert result may carry one more column after ``output_schema``'s,
``__delete`` (``DELETE_COLUMN``, boolean; null counts as false). A row with it true deletes
its key: a view drops the key's row, an output topic gets a tombstone (the key, a null
value). Only the key columns of such a row matter. ``output_schema`` never lists
``__delete`` (a declared output stream does not have it); an append-only result must not
carry it. (The runner and sink implement this; which plans emit deletes is said in
``sql.continuous.plan``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from sql.catalog import Relation

__all__ = [
    "DELETE_COLUMN",
    "ContinuousPlan",
    "PlanError",
    "PlanStats",
    "PlannedInput",
    "Source",
    "Stage",
]

#: The boolean column of an upsert result row that deletes its key (module docstring).
DELETE_COLUMN = "__delete"


class PlanError(ValueError):
    """A query that cannot run continuously; the message says what to change."""


@dataclass(frozen=True)
class Source:
    """What a query reads: the relation its SQL names (``name``), over ``topic``.

    ``relation`` is the declared stream or table (None: a raw topic, ``topics."name"``);
    ``is_table``: read as latest value per key (a declared TABLE), not as a stream.
    """

    name: str
    topic: str
    relation: Relation | None
    is_table: bool = False


@dataclass(frozen=True)
class PlannedInput:
    """One input of a stage as the planner sees it.

    ``input_name`` is what the stage's ``process`` is called with for this input: a source
    name, or the id of the upstream stage. ``alias`` is the name the SQL gives it (``FROM bid
    B`` -> ``B``). ``time_column`` is the event-time column with a watermark (None: none, as
    for a table). ``is_table``: latest value per key (rows are upserts keyed by
    ``key_columns``), not a stream.
    """

    input_name: str
    alias: str
    schema: pa.Schema
    time_column: str | None
    is_table: bool = False
    key_columns: tuple[str, ...] = ()


class Stage(Protocol):
    """One streaming operator. ``process`` and ``advance_watermark`` return what it emits
    (zero or more batches of ``output_schema``); neither reads or writes anything else."""

    inputs: tuple[str, ...]
    output_schema: pa.Schema
    output_time_column: str | None
    key_columns: tuple[str, ...]

    def process(self, input_name: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]: ...

    def advance_watermark(self, input_name: str, watermark_ms: int) -> list[pa.RecordBatch]: ...

    def output_watermark(self) -> int | None: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


@dataclass
class PlanStats:
    rows_in: int = 0
    rows_out: int = 0
    late_rows_dropped: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class ContinuousPlan(Protocol):
    """A compiled continuous query (see the module docstring)."""

    sql: str
    sources: dict[str, Source]
    output_schema: pa.Schema
    key_columns: tuple[str, ...]
    output_time_column: str | None  # a timestamp column of the output: the records' timestamp

    def process(self, source: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]: ...

    def watermark_ms(self) -> int | None: ...

    def stats(self) -> PlanStats: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...
