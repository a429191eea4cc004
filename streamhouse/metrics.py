"""Prometheus metrics of every StreamHouse process, served at one address per stack.

Every process of a stack calls `setup_process_metrics(settings, role)` at start, before it
touches a metric. That switches prometheus-client to its multiprocess mode: each process
writes its values into memory-mapped files in `<data_dir>/run/metrics/` (the on-disk format
is prometheus-client's own: `counter_<pid>.db`, `histogram_<pid>.db`,
`gauge_livesum_<pid>.db`, `gauge_livemax_<pid>.db`, `gauge_max_<pid>.db`; one mmapped
key/value table per file, key = JSON of metric name, sample name, labels and help, value =
float64 plus a timestamp). The ingest process calls `start_metrics_endpoint(settings)`,
which serves `/metrics` on `metrics_listen` (127.0.0.1:9464 by default) from a thread: at
each scrape it forgets the live gauges of processes that have exited
(`prometheus_client.multiprocess.mark_process_dead`) and sums every file with a
`MultiProcessCollector`. Counters and histograms of a process that exited stay in the sum,
so totals keep counting across restarts (a restarted process writes a new file under its
new pid).

Every metric here has at least one label, so no value is created before setup picks the
multiprocess value class (a labelled metric creates its values at `.labels(...)`).
`child()` caches the labelled children; hot paths call it once per batch or request,
never per record, and increment by the batch's counts.

With `metrics_enabled=false` both setup and the endpoint are no-ops and the metrics stay
in-process (nobody reads them).

Names follow Prometheus conventions: `streamhouse_` prefix, counters end in `_total`,
durations are `_seconds`, sizes `_bytes`. README.md ("Metrics") lists them.
"""

from __future__ import annotations

import glob
import os
import pathlib
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import prometheus_client
import xxhash
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from streamhouse.config import Settings

# Latency buckets: sub-millisecond ring hops to multi-second object-store retries.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Segment object sizes: 4 KiB .. 256 MiB by powers of four.
SIZE_BUCKETS = tuple(float(4096 * 4**i) for i in range(10))

ALL: list[MetricWrapperBase] = []


def _counter(name: str, doc: str, labels: Iterable[str]) -> Counter:
    metric = Counter(name, doc, list(labels), registry=None)
    ALL.append(metric)
    return metric


def _histogram(name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...]) -> Histogram:
    metric = Histogram(name, doc, list(labels), registry=None, buckets=buckets)
    ALL.append(metric)
    return metric


def _gauge(name: str, doc: str, labels: Iterable[str], mode: str) -> Gauge:
    metric = Gauge(name, doc, list(labels), registry=None, multiprocess_mode=mode)
    ALL.append(metric)
    return metric


# --- processes -----------------------------------------------------------------------------
PROCESS_STARTS = _counter(
    "streamhouse_process_starts_total", "Process starts (a restart counts again).", ["role"]
)
PROCESS_UP = _gauge(
    "streamhouse_process_up", "1 while a process of this role is running.", ["role"], "livemax"
)

SERVING = _gauge(
    "streamhouse_serving",
    "1 while the process's health check says SERVING (ingest: the object store is usable).",
    ["role"],
    "livemax",
)

# --- produce (ingest) ---------------------------------------------------------------------
PRODUCE_REQUESTS = _counter(
    "streamhouse_produce_requests_total",
    "Produce requests answered, by protocol and result (ok or the error code name).",
    ["protocol", "result"],
)
PRODUCE_RECORDS = _counter(
    "streamhouse_produce_records_total", "Records acknowledged to producers.", ["topic"]
)
PRODUCE_BYTES = _counter(
    "streamhouse_produce_bytes_total", "RecordBatch bytes acknowledged to producers.", ["topic"]
)
PRODUCE_LATENCY = _histogram(
    "streamhouse_produce_latency_seconds",
    "Produce latency from admission in ingest to its ack, per request.",
    ["protocol"],
    LATENCY_BUCKETS,
)

PRODUCE_STAGE = _histogram(
    "streamhouse_produce_stage_seconds",
    "Parts of produce latency: ring_wait (admission in ingest to the segmenter taking the "
    "frame, per frame), seal (frame taken to its segment sealed, per frame), put (a segment's "
    "upload with its retries, per segment), commit (its metadata commit, per segment).",
    ["stage"],
    LATENCY_BUCKETS,
)

# --- fetch (ingest) -----------------------------------------------------------------------
FETCH_REQUESTS = _counter(
    "streamhouse_fetch_requests_total",
    "Fetch / consume requests answered, by protocol and result.",
    ["protocol", "result"],
)
FETCH_RECORDS = _counter(
    "streamhouse_fetch_records_total", "Records returned to consumers.", ["topic"]
)
FETCH_BYTES = _counter(
    "streamhouse_fetch_bytes_total", "Record bytes returned to consumers.", ["topic"]
)

# --- Kafka listener -----------------------------------------------------------------------
CONNECTIONS = _gauge("streamhouse_connections", "Open client connections.", ["listener"], "livesum")
IN_FLIGHT = _gauge(
    "streamhouse_in_flight_requests", "Requests being served.", ["listener"], "livesum"
)
REQUESTS = _counter(
    "streamhouse_requests_total", "Requests received, by listener and API.", ["listener", "api"]
)
ERRORS = _counter(
    "streamhouse_errors_total",
    "Errors answered to clients, by listener and error code name.",
    ["listener", "code"],
)

# --- object store -------------------------------------------------------------------------
OBJECT_REQUESTS = _counter(
    "streamhouse_object_store_requests_total",
    "Object-store requests by kind (put, get, delete, list) and process role.",
    ["kind", "role"],
)
OBJECT_ERRORS = _counter(
    "streamhouse_object_store_errors_total",
    "Object-store requests that failed, by kind and process role.",
    ["kind", "role"],
)
OBJECT_LATENCY = _histogram(
    "streamhouse_object_store_request_seconds",
    "Object-store request latency by kind.",
    ["kind"],
    LATENCY_BUCKETS,
)
OBJECT_BYTES = _counter(
    "streamhouse_object_store_bytes_total",
    "Bytes written (put) and read (get) in the object store.",
    ["kind"],
)

# --- segments (segmenter / uploader) ------------------------------------------------------
SEGMENT_SIZE = _histogram(
    "streamhouse_segment_size_bytes",
    "Size of sealed segment objects.",
    ["role"],
    SIZE_BUCKETS,
)
SEGMENTS_UPLOADED = _counter(
    "streamhouse_segments_uploaded_total", "Segment objects uploaded and committed.", ["role"]
)
SEGMENT_BYTES_UPLOADED = _counter(
    "streamhouse_segment_uploaded_bytes_total",
    "Bytes of segment objects uploaded and committed.",
    ["role"],
)

# --- reader cache --------------------------------------------------------------------------
CACHE_HITS = _counter(
    "streamhouse_reader_cache_hits_total", "Block reads served from the reader cache.", ["cache"]
)
CACHE_MISSES = _counter(
    "streamhouse_reader_cache_misses_total",
    "Block reads the reader cache did not hold (read from the object store).",
    ["cache"],
)
CACHE_BYTES = _gauge(
    "streamhouse_reader_cache_bytes", "Bytes held by the reader cache.", ["cache"], "livesum"
)

# --- rings ---------------------------------------------------------------------------------
RING_USED = _gauge(
    "streamhouse_ring_used_bytes",
    "Bytes waiting in a ring (sampled by its writer).",
    ["ring"],
    "livemax",
)
RING_CAPACITY = _gauge(
    "streamhouse_ring_capacity_bytes", "Data capacity of a ring.", ["ring"], "livemax"
)

_NAME = re.compile(r"streamhouse_[a-z0-9_]+")
_children: dict[tuple[int, tuple[str, ...]], Any] = {}
_children_lock = threading.Lock()
_role = "unknown"
_server: WSGIServer | None = None
_server_thread: threading.Thread | None = None


def role() -> str:
    """The role given to `setup_process_metrics` ("unknown" before it)."""
    return _role


def child(metric: MetricWrapperBase, *labels: str) -> Any:
    """The labelled child of a metric, cached (one dict lookup on the hot path)."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        with _children_lock:
            found = _children.get(key)
            if found is None:
                found = metric.labels(*labels)
                _children[key] = found
    return found


def metrics_dir(settings: Settings) -> pathlib.Path:
    """Where every process of the stack writes its metric files: a folder in /dev/shm named
    by a hash of the stack's run dir (like its rings). Not on the data dir's filesystem:
    prometheus-client writes through mmap, and a page written on a full filesystem is a
    SIGBUS that would kill the process (a full data dir must only fail produces, retriably)."""
    run_dir = os.path.realpath(str(settings.run_dir))
    digest = xxhash.xxh64(f"{run_dir}\0metrics".encode()).hexdigest()
    return pathlib.Path("/dev/shm") / f"streamhouse-metrics-{digest}"


def setup_process_metrics(settings: Settings, role: str) -> None:
    """Switch this process to multiprocess metrics in `<data_dir>/run/metrics/`.

    Call once at process start, before any metric is touched. No-op when metrics are
    disabled. Children created earlier (in-memory values) are dropped so they are re-made on
    the mmapped files."""
    global _role
    _role = role
    if not settings.metrics_enabled:
        return
    directory = metrics_dir(settings)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # files opened on first use, in `directory`
    with _children_lock:
        _children.clear()
        for metric in ALL:
            with metric._lock:
                metric._metrics.clear()
    reap_dead_processes(directory)
    child(PROCESS_STARTS, role).inc()
    child(PROCESS_UP, role).set(1)


def reap_dead_processes(directory: pathlib.Path) -> list[int]:
    """Forget the live gauges of processes that are gone; returns their pids."""
    dead: set[int] = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid_text = path.rsplit("_", 1)[-1].removesuffix(".db")
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if not _alive(pid):
            dead.add(pid)
    for pid in dead:
        mark_process_dead(pid, str(directory))
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Reaper:
    """A collector that yields nothing; run first, it drops dead processes' live gauges."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        reap_dead_processes(self.directory)
        return iter(())


def registry_for(settings: Settings) -> CollectorRegistry:
    """A registry that reads every process's metric files of the stack."""
    directory = metrics_dir(settings)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reaper(directory))  # type: ignore[arg-type]
    MultiProcessCollector(registry, path=str(directory))
    return registry


def start_metrics_endpoint(settings: Settings, collectors: Sequence[Collector] = ()) -> None:
    """Serve `/metrics` for the whole stack on `metrics_listen`, from a daemon thread; with
    `collectors` (objects with a `collect()`, called from the scrape thread) served too.

    No-op when metrics are disabled or already served by this process. A port in use is a
    `RuntimeError` naming the setting to change."""
    global _server, _server_thread
    if not settings.metrics_enabled or _server is not None:
        return
    host, _, port = settings.metrics_listen.rpartition(":")
    registry = registry_for(settings)
    for collector in collectors:
        registry.register(collector)
    try:
        server, thread = prometheus_client.start_http_server(
            int(port), addr=host, registry=registry
        )
    except OSError as exc:
        raise RuntimeError(
            f"cannot serve metrics on STREAMHOUSE_METRICS_LISTEN={settings.metrics_listen}: "
            f"{exc.strerror or exc}; pick a free port or set STREAMHOUSE_METRICS_ENABLED=false"
        ) from exc
    _server, _server_thread = server, thread


def stop_metrics_endpoint() -> None:
    """Stop the endpoint started by `start_metrics_endpoint` (tests, clean shutdown)."""
    global _server, _server_thread
    if _server is not None:
        _server.shutdown()
        _server.server_close()
    _server, _server_thread = None, None


#: Gauges ingest samples from metadata and serves from memory at each scrape
#: (ingest/sampler.py `SampleCollector`), not through the multiprocess files.
SAMPLED_GAUGES = (
    "streamhouse_consumer_group_lag",
    "streamhouse_consumer_group_lag_sum",
    "streamhouse_stored_objects",
    "streamhouse_stored_bytes",
)


def metric_names() -> list[str]:
    """Every metric's exposed name (counters with their `_total`), the sampled gauges
    included, for tests and the README."""
    names = [m._name + "_total" if m._type == "counter" else m._name for m in ALL]
    return names + list(SAMPLED_GAUGES)


def valid_name(name: str, kind: str) -> bool:
    """Prometheus conventions as this project applies them."""
    if not _NAME.fullmatch(name):
        return False
    if kind == "counter":
        return name.endswith("_total")
    return not name.endswith("_total")


class Timer:
    """`with Timer() as t: ...; t.seconds` — monotonic, for histograms."""

    __slots__ = ("start", "seconds")

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
