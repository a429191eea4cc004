"""Streaming SQL over topics (issue 9), first increment: declared streams and ad-hoc queries.

What runs where
---------------
Today the SQL layer is a library and a command, ``python3 -m sql query "..."
[--format table|jsonl|csv] [--stats] [--max-read-mb N]`` and ``python3 -m sql shell``
(statements from stdin) in ``sql/__main__.py``; ``streamctl sql`` is to call them. It runs
in the caller's process, against the stack the ``STREAMHOUSE_*`` environment names, and
talks to nothing but the metadata store (through ``AsyncMetadata``, off the event loop)
and the object store (range GETs): it needs no agent process, and any number can run beside
a cluster. A query holds what it reads in memory until it ends, so one that would read more
than ``--max-read-mb`` of stored blocks is refused before reading; ``EXPLAIN`` reads nothing.

================  ===========================================================================
module            does
================  ===========================================================================
``statements``    parses what StreamHouse handles itself (CREATE/DROP STREAM and TABLE, SHOW,
                  DESCRIBE); anything else is a query for DataFusion
``catalog``       declared streams and tables (``Relation``, msgspec JSON) in the metadata
                  store's generic catalog (``put/get/list/delete_catalog_entry``)
``engine``        runs a statement; a query in two passes over one DataFusion context (plan
                  on empty placeholders, read within the bounds the plan implies, run)
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
                  time (not wired to the SQL planner yet)
================  ===========================================================================

How a query reads the log
-------------------------
Every topic is a relation with the raw columns (partition, offset, timestamp, key, value,
headers), by its name and always as ``topics."name"``; a declared stream has its declared
columns plus ``_partition``, ``_offset``, ``_timestamp``; a declared table has the latest
value per key (plus ``_key``). DataFusion plans the query over empty placeholders; the
optimiser pushes filters onto the scans, and from the conjuncts on partition, offset and
timestamp each scan gets ``ScanBounds``. The scan reads only the partitions named, only
offsets in range (from the log start to the high watermark at the time of the query: the
query is bounded), and for a lowest time only the blocks whose max timestamp reaches it
(``find_block_by_timestamp``, then block rows checked one by one since timestamps may go
back); inside a block, batches outside the bounds are not decoded. So "the last minute"
reads the last minute's blocks. The query then runs on the decoded batches; DataFusion
applies the full predicates again, so bounds only ever save work.

What comes next
---------------
- The ``sql`` process under supervisord (``streamhouse up``): a gRPC service for ad-hoc
  queries streaming Arrow IPC, and the home of continuous queries.
- Continuous queries (``CREATE MATERIALIZED VIEW``, ``CREATE STREAM ... AS SELECT``): the
  same scan, tailing instead of bounded (woken by commits like the reader), feeding
  DataFusion plans batch by batch, with the streaming operators DataFusion lacks built on
  Arrow: the window operators exist (``windows``: TUMBLE / HOP / SESSION closed by the
  watermark the declaration gives, allowed lateness) and need planning from SQL; interval
  and window joins and stream-table joins against a declared table's latest values do not.
- Checkpoints: operator state as Arrow IPC objects in the object store, committed in one
  metadata transaction with the input offsets and the output topic's producer state, so a
  restarted query resumes exactly once.
- Nexmark: the deterministic generator has landed (``bench/nexmark/``, ``python3
  bench/nexmark.py generate --events N``, ``create_stream_sql`` declares its three streams);
  queries q0-q8 in StreamHouse SQL checked against references and per-core rates beside
  Flink's come with continuous queries.
- Faster JSON: DataFusion's own NDJSON reader parses 2-3x faster than Arrow's
  (``bench/sql_decode.py``) but reads only files; reading blocks through it needs an
  in-memory source.
"""
