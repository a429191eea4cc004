"""Produce and fetch throughput over the last minute, per topic and in total, for
`streamhouse status`.

Every `STEP_S` (2 s) ingest reads its own per-topic counters in-process (the values of
`streamhouse_produce_records_total`, `streamhouse_produce_bytes_total`,
`streamhouse_fetch_records_total` and `streamhouse_fetch_bytes_total`, which
ingest/pipeline.py counts as it acknowledges produces and answers fetches). It keeps the readings
of the last `WINDOW_S` (60 s) and the one just before them, so the window reaches back a full
minute once ingest has run that long (less before: `window_s` says how much). A rate is the
growth of a counter from the oldest reading kept to the newest, divided by the seconds between
them. A restarted ingest starts a new window (its counters start again at 0).

The rates are written to `<data_dir>/run/throughput.json` (beside serving.json; replaced
atomically at every step, so a reader never sees half a file) as one JSON object::

    {"window_s": float,          # seconds between the oldest and newest reading (0: one so far)
     "written_ms": int,          # wall clock of the newest reading, ms
     "pid": int,                 # the ingest process that wrote it
     "total": RATES,             # summed over every topic
     "topics": {topic: RATES}}   # topics that moved in the window, at most MAX_TOPICS

    RATES = {"produce_records_per_s": float, "produce_bytes_per_s": float,
             "fetch_records_per_s": float, "fetch_bytes_per_s": float}

Bytes are RecordBatch bytes as the counters count them. When more than `MAX_TOPICS` (100) topics
moved, the file keeps those with the most bytes per second (produce + fetch); the total counts
them all. A file whose `written_ms` is older than `STALE_S` (10 s) is not current: ingest
stopped writing it.

`ThroughputWindow` is the sans-I/O core (readings in, rates out); `ThroughputRecorder` is the
shell (reads the counters, writes the file).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Mapping

from streamhouse import metrics
from streamhouse.config import Settings

log = logging.getLogger("ingest.throughput")

STEP_S = 2.0
WINDOW_S = 60.0
MAX_TOPICS = 100
STALE_S = 10.0
STATE_FILE = "throughput.json"

#: The four rates of a topic, in the order of `Counts`.
RATE_NAMES = (
    "produce_records_per_s",
    "produce_bytes_per_s",
    "fetch_records_per_s",
    "fetch_bytes_per_s",
)
#: A topic's counter totals: produced records, produced bytes, fetched records, fetched bytes.
Counts = tuple[float, float, float, float]
_ZERO: Counts = (0.0, 0.0, 0.0, 0.0)


class ThroughputWindow:
    """Counter readings of the last `window_s` seconds (and the one just before), and the
    rates between the oldest and the newest."""

    def __init__(self, window_s: float = WINDOW_S, max_topics: int = MAX_TOPICS) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, not {window_s}")
        self.window_s = window_s
        self.max_topics = max_topics
        self._readings: deque[tuple[float, dict[str, Counts]]] = deque()

    def add(self, now: float, totals: Mapping[str, Counts]) -> None:
        """A reading at monotonic time `now` of every topic's counter totals."""
        if self._readings and now < self._readings[-1][0]:
            raise ValueError(
                f"readings must not go back in time ({now} after {self._readings[-1][0]})"
            )
        self._readings.append((now, dict(totals)))
        # Keep the newest reading at or before the window's start: the window spans it all.
        while len(self._readings) > 1 and self._readings[1][0] <= now - self.window_s:
            self._readings.popleft()

    def rates(self) -> dict[str, object]:
        """`window_s`, `total` and `topics` as the module docstring lays them out."""
        if not self._readings:
            return {"window_s": 0.0, "total": _as_rates(_ZERO), "topics": {}}
        first_at, first = self._readings[0]
        last_at, last = self._readings[-1]
        elapsed = last_at - first_at
        per_topic: dict[str, Counts] = {}
        if elapsed > 0:
            for topic, counts in last.items():
                before = first.get(topic, _ZERO)
                moved = tuple(
                    max(c - b, 0.0) / elapsed for c, b in zip(counts, before, strict=True)
                )
                if any(moved):
                    per_topic[topic] = moved  # type: ignore[assignment]
        total = tuple(sum(r[i] for r in per_topic.values()) for i in range(4))
        busiest = sorted(per_topic.items(), key=lambda item: (-(item[1][1] + item[1][3]), item[0]))
        return {
            "window_s": round(elapsed, 3),
            "total": _as_rates(total),  # type: ignore[arg-type]
            "topics": {topic: _as_rates(r) for topic, r in busiest[: self.max_topics]},
        }


def _as_rates(values: Counts) -> dict[str, float]:
    return {name: round(value, 3) for name, value in zip(RATE_NAMES, values, strict=True)}


def counter_totals() -> dict[str, Counts]:
    """This process's per-topic produce and fetch counters (in-process values; in multiprocess
    mode these are this process's own metric file, not the sum over processes)."""
    totals: dict[str, list[float]] = {}
    for at, metric in enumerate(
        (metrics.PRODUCE_RECORDS, metrics.PRODUCE_BYTES, metrics.FETCH_RECORDS, metrics.FETCH_BYTES)
    ):
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    topic = sample.labels["topic"]
                    totals.setdefault(topic, [0.0, 0.0, 0.0, 0.0])[at] += sample.value
    return {topic: (v[0], v[1], v[2], v[3]) for topic, v in totals.items()}


def read_state_file(settings: Settings) -> dict[str, object] | None:
    """The rates ingest last wrote, or None when there is no file or it is not current
    (older than `STALE_S`)."""
    try:
        value = json.loads((settings.run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("written_ms"), int):
        return None
    if time.time() * 1000 - value["written_ms"] > STALE_S * 1000:
        return None
    return value


class ThroughputRecorder:
    """Reads the counters every `STEP_S` into a `ThroughputWindow` and writes its rates."""

    def __init__(self, settings: Settings, window: ThroughputWindow | None = None) -> None:
        self.settings = settings
        self.window = window or ThroughputWindow()
        self._write_failed = False

    def step(self) -> None:
        self.window.add(time.monotonic(), counter_totals())
        state = {**self.window.rates(), "written_ms": int(time.time() * 1000), "pid": os.getpid()}
        path = self.settings.run_dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)
        except OSError as exc:  # a full or missing run dir must not stop ingest
            if not self._write_failed:
                log.warning("could not write %s: %s; status shows no throughput", path, exc)
            self._write_failed = True
            return
        self._write_failed = False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.step()
            try:
                await asyncio.wait_for(stop.wait(), STEP_S)
            except TimeoutError:
                pass
