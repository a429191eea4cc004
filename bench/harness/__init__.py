"""The bench harness: ``python -m bench SCENARIO [options]`` (bench/__main__.py).

Scenarios (over Kafka with confluent-kafka, or over gRPC with bench/grpc_bench.py):

- ``produce``: producers for a duration (or a record count), a latency probe beside them;
- ``consume``: ``produce``, then catch-up consumers read everything back from the beginning;
- ``tail``: consumers (default 10) tail every partition while the producers run (several
  consumers of one partition), end-to-end latency sampled;
- ``e2e``: ``tail`` with one consumer (produce+consume with end-to-end latency).

Each run starts its broker (StreamHouse, or the peer with ``--peer tansu``, alternating
StreamHouse, peer, StreamHouse, peer for ``--rounds``) on a fresh object-store prefix, and stops
it after. Results go to the results folder (``--out``):

``results.json``::

    {"config": {...the options...}, "store": "local" | "seaweed", "started": ISO time,
     "runs": [{"broker": "streamhouse" | "tansu", "label": "streamhouse#1", "topic": ...,
               "phases": [PHASE, ...]}, ...],
     "figures": {label: {figure name: value}}, "table": the printed table,
     "bill": {broker: monthly bill at --bill-mb-s}}

    PHASE = {"name": "produce" | "consume" | "produce+tail" | "grpc ...",
             "timeline": [[seconds since start, records acknowledged, records consumed], ...]
                         (sampled every 0.5 s),
             "produce": {"records", "seconds", "records_per_s", "mb_per_s", ...},
             "load_latency_ms": {"count", "p50", "p90", "p99", "max"}: acknowledgement
                 latency of the load's own records (Kafka: one sample per chunk queued, see
                 kafka_load.py; gRPC: grpc_bench's ProduceBatch round trips),
             "load_latency_series": [[seconds, ms], ...] (Kafka),
             "produce_latency_ms": {"count", "p50", "p90", "p99", "max"} (the probe),
             "produce_latency_series": [[seconds, ms], ...] (the probe),
             "consume": {"records", "seconds", "records_per_s", "mb_per_s", "consumers", ...},
             "e2e_latency_ms": {...}, "e2e_latency_series": [[seconds, ms], ...] (tailing),
             "produced_gb", "consumed_gb": 10^9 bytes of record values,
             "server_cpu_s": {process: CPU seconds in the phase},
             "server_cpu_s_per_gb": {process: CPU seconds per GB of the phase},
             "requests": {"PUT" | "GET" | "LIST" | "DELETE" | "HEAD" | "POST": count on the wire},
             "requests_per_gb_produced", "requests_per_gb_consumed": the same per GB,
             "bytes_sent_to_store", "bytes_read_from_store": bytes on the wire}

``charts.png``: throughput over time, latency over time, latency percentiles, every run.
"""
