"""Streaming SQL over topics (issue 9): declared streams, ad-hoc queries, continuous queries.

What runs where
---------------
Ad-hoc statements run wherever an engine (``SqlEngine``) runs: in the ``sql`` program of every
agent (``python3 -m sql serve``, under supervisord; ``service``), which answers statements over
gRPC on ``sql_listen`` with Arrow IPC and is what ``streamctl sql`` uses when it answers; or in
the caller's process (``python3 -m sql query "..." [--format table|jsonl|csv] [--stats]
[--max-read-mb N] [--via local|service|auto]``, ``python3 -m sql shell``, in
``sql/__main__.py``), against the stack the ``STREAMHOUSE_*`` environment names. An engine
talks to nothing but the metadata store (through ``AsyncMetadata``, off the event loop) and
the object store (range GETs). A query holds what it reads in memory until it ends, so one
that would read more than ``--max-read-mb`` of stored blocks is refused before reading;
``EXPLAIN`` reads nothing.

Continuous queries (``CREATE MATERIALIZED VIEW``, ``CREATE STREAM ... AS SELECT``) are
planned once when created (``continuous.plan``), stored in the catalog (kind ``query``), and
run by one runner process each (``python3 -m sql.continuous run NAME``) that the ``sql``
program of one agent starts, restarts with backoff and stops when the query is dropped
(``service.RunnerSupervisor``). ``streamctl query list|describe|drop`` show their runner,
checkpoint, watermark, rates and input lag per source partition.

================  ===========================================================================
module            does
================  ===========================================================================
``statements``    parses what StreamHouse handles itself (CREATE/DROP STREAM and TABLE, SHOW,
                  DESCRIBE, CREATE MATERIALIZED VIEW, CREATE STREAM ... AS, DROP QUERY, SHOW
                  QUERIES); anything else is a query for DataFusion
``catalog``       declared streams and tables (``Relation``, msgspec JSON) and continuous
                  queries (``QueryDefinition``) in the metadata store's generic catalog
                  (``put/get/list/delete_catalog_entry``)
``engine``        runs a statement; a query in two passes over one DataFusion context (plan
                  on empty placeholders, read within the bounds the plan implies, run); a
                  materialized view is read from its last checkpoint's rows; creates, drops
                  and describes continuous queries
``service``       the ``sql`` program: gRPC service (``streamhouse/proto/sql.proto``: Execute
                  as Arrow IPC, ListQueries, DescribeQuery, DropQuery, health) and the
                  supervisor of the query runners; ``service_client``: its client (no
                  DataFusion; ``streamctl`` uses it)
``pushdown``      partition / offset / time bounds of each scanned relation, read off
                  DataFusion's optimised logical plan
``scan``          which blocks those bounds need (metadata block rows: max timestamps and
                  offsets), one range GET each, a few at a time
``decode``        a block's batches -> one Arrow RecordBatch of the raw columns: batch
                  headers in Python by the gap rule, records in C (``_arrowdecode.c``)
                  straight into Arrow buffers; no Python object per record
``formats``       record values -> a declared schema's columns (JSON via Arrow's reader, a
                  block at a time; bad records counted, never fatal)
``output``        rows as an aligned table, JSON lines or CSV
``windows``       event-time TUMBLE / HOP / SESSION aggregation on Arrow (COUNT, SUM, AVG,
                  MIN, MAX, COUNT DISTINCT per key and window), watermark, allowed lateness,
                  final or update emission, Arrow IPC snapshots; no I/O, driven a batch at a
                  time
``continuous``    continuous queries: contracts (``pipeline``), catalog entry and checkpoint
                  (``definition``), planner (``plan``, ``stages``, ``joins``), the runner
                  (``runner``, ``source``, ``sink``, ``checkpoint``; ``python3 -m
                  sql.continuous run NAME``)
================  ===========================================================================

How a query reads the log
-------------------------
Every topic is a relation with the raw columns (partition, offset, timestamp, key, value,
headers), by its name and always as ``topics."name"``; a declared stream has its declared
columns plus ``_partition``, ``_offset``, ``_timestamp``; a declared table has the latest
value per key (plus ``_key``). DataFusion plans the query over empty placeholders; the
optimiser pushes filters onto the scans, and from the conjuncts on partition, offset and
timestamp each scan gets ``ScanBounds``. The scan reads only the partitions named, only
offsets in range (from the log start to the last stable offset at the time of the query:
the query is bounded and reads committed, skipping aborted transactions' records), and for
a lowest time only the blocks whose max timestamp reaches it (``find_block_by_timestamp``,
then block rows checked one by one since timestamps may go back); inside a block, batches
outside the bounds are not decoded. So "the last minute" reads the last minute's blocks.
The query then runs on the decoded batches; DataFusion applies the full predicates again, so
bounds only ever save work.

Nexmark
-------
q0-q8 are written in StreamHouse SQL in ``bench/nexmark/queries.py`` with references computed
independently; ``tests/bench/test_nexmark_queries.py`` and
``tests/sql/continuous/test_plan_nexmark.py`` check the plans against them, and ``python3
bench/nexmark.py run --check`` checks them end to end (topics -> runner -> output topic).
``python3 bench/nexmark.py run`` reports events per runner CPU second beside Flink's per-core
figures (results in ``bench/NEXMARK_RESULTS.md``); ``python3 bench/nexmark.py plan`` the
plans alone.

What comes next
---------------
- Faster JSON: DataFusion's own NDJSON reader parses 2-3x faster than Arrow's
  (``bench/sql_decode.py``) but reads only files; reading blocks through it needs an
  in-memory source.
- Views as inputs of other continuous queries (today only ad-hoc queries read a view).
- Upserts cannot yet delete a row (a HAVING that stops matching keeps its last row); more than
  one JOIN per SELECT needs nested sub-queries; regular (unbounded) joins keep all state.
"""
