"""Metrics ingest samples from metadata for the stack's scrape address: consumer group lag per
partition and what the object store holds.

Every `metrics_sample_interval_ms` (5 s) ingest reads, off its loop (AsyncMetadata): the
groups with committed offsets (`list_offset_groups`), each group's commits
(`list_group_offsets`), and the topics with their partitions' high watermarks (`list_topics`,
then one `topic_states` call). Every 12th pass (and the first) it also reads
`storage_report` (a few aggregate statements). The last sample is kept in memory and served
at each scrape by `SampleCollector` (registered on the endpoint's registry; the values are
this process's own, not in the multiprocess files, so a group that is gone disappears at the
next sample instead of keeping its last value).

Series (README "Metrics"):
- `streamhouse_consumer_group_lag{group,topic,partition}`: high watermark - committed
  offset (never below 0), for each partition a group committed an offset for.
- `streamhouse_consumer_group_lag_sum{group}`: the sum over the group's partitions.
- `streamhouse_stored_objects{state}` and `streamhouse_stored_bytes{state}`: live and dead
  segment objects (live: referenced by metadata; dead: awaiting deletion). Objects per GB
  stored: `streamhouse_stored_objects{state="live"} / (streamhouse_stored_bytes{state="live"}
  / 1e9)`.

Bounds: at most `MAX_GROUPS` (200) groups are read per pass (in name order); at most
`MAX_SERIES` (2000) lag series are served, those with the largest lag (the per-group sums
count every partition of the groups read). A pass that fails is one WARNING line; the
previous sample stays until the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from metadata.async_store import AsyncMetadata, TopicLookup
from metadata.store import GroupOffset, TopicInfo
from streamhouse.config import Settings
from streamhouse.process import describe_failure

log = logging.getLogger("ingest.sampler")

MAX_GROUPS = 200
MAX_SERIES = 2000
STORAGE_EVERY = 12
# Live segments below this size count as small in the storage report (not served here).
_SMALL_OBJECT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    lag: int


@dataclass
class Sample:
    """One pass's figures (what a scrape serves)."""

    lags: list[LagRow] = field(default_factory=list)
    lag_sums: dict[str, int] = field(default_factory=dict)
    storage: dict[str, tuple[int, int]] = field(default_factory=dict)  # state: (objects, bytes)


def group_lags(
    commits: Mapping[str, Sequence[GroupOffset]],
    topics: Mapping[int, TopicInfo],
    high_watermarks: Mapping[tuple[int, int], int],
    max_series: int = MAX_SERIES,
) -> tuple[list[LagRow], dict[str, int]]:
    """Lag rows (the `max_series` largest, largest first) and per-group sums, from each
    group's commits, the live topics by id and the partitions' high watermarks. Commits of
    topics or partitions that no longer exist are left out."""
    rows: list[LagRow] = []
    sums: dict[str, int] = {}
    for group, offsets in commits.items():
        total = 0
        for commit in offsets:
            topic = topics.get(commit.topic_id)
            hw = high_watermarks.get((commit.topic_id, commit.partition))
            if topic is None or hw is None or commit.offset < 0:
                continue
            lag = max(hw - commit.offset, 0)
            total += lag
            rows.append(LagRow(group, topic.name, commit.partition, lag))
        sums[group] = total
    rows.sort(key=lambda r: (-r.lag, r.group, r.topic, r.partition))
    return rows[:max_series], sums


class SampleCollector:
    """A prometheus-client collector serving the last `Sample` (read from the scrape thread;
    the sampler replaces the sample whole, never changes one in place)."""

    def __init__(self) -> None:
        self.sample: Sample | None = None

    def collect(self) -> Iterator[Metric]:
        sample = self.sample
        if sample is None:
            return
        lag = GaugeMetricFamily(
            "streamhouse_consumer_group_lag",
            "Consumer group lag: high watermark - committed offset, per partition.",
            labels=["group", "topic", "partition"],
        )
        for row in sample.lags:
            lag.add_metric([row.group, row.topic, str(row.partition)], row.lag)
        yield lag
        lag_sum = GaugeMetricFamily(
            "streamhouse_consumer_group_lag_sum",
            "Consumer group lag summed over the group's partitions.",
            labels=["group"],
        )
        for group, total in sorted(sample.lag_sums.items()):
            lag_sum.add_metric([group], total)
        yield lag_sum
        objects = GaugeMetricFamily(
            "streamhouse_stored_objects",
            "Segment objects in the object store (live, or dead awaiting deletion).",
            labels=["state"],
        )
        stored = GaugeMetricFamily(
            "streamhouse_stored_bytes",
            "Bytes of segment objects in the object store (live, or dead awaiting deletion).",
            labels=["state"],
        )
        for state, (count, size) in sorted(sample.storage.items()):
            objects.add_metric([state], count)
            stored.add_metric([state], size)
        yield objects
        yield stored


class Sampler:
    """Samples metadata every `metrics_sample_interval_ms` into a `SampleCollector`."""

    def __init__(self, settings: Settings, meta: AsyncMetadata, collector: SampleCollector) -> None:
        self.settings = settings
        self.meta = meta
        self.collector = collector
        self.passes = 0

    async def sample_once(self) -> Sample:
        groups = sorted(await self.meta.list_offset_groups())[:MAX_GROUPS]
        commits = {group: await self.meta.list_group_offsets(group) for group in groups}
        topics = {t.topic_id: t for t in await self.meta.list_topics()}
        wanted = {c.topic_id for offsets in commits.values() for c in offsets} & set(topics)
        lookups = [
            TopicLookup(topics[t].name, None, range(topics[t].partitions)) for t in sorted(wanted)
        ]
        high_watermarks: dict[tuple[int, int], int] = {}
        for state in await self.meta.topic_states(lookups):
            if state is None:
                continue
            for partition, p in state.partitions.items():
                high_watermarks[(state.topic.topic_id, partition)] = p.high_watermark
        lags, sums = group_lags(commits, topics, high_watermarks)
        previous = self.collector.sample
        storage = previous.storage if previous is not None else {}
        if self.passes % STORAGE_EVERY == 0:
            report = await self.meta.storage_report(int(time.time() * 1000), _SMALL_OBJECT_BYTES)
            storage = {
                "live": (report.objects, report.bytes_stored),
                "dead": (report.dead_objects, report.dead_bytes),
            }
        self.passes += 1
        return Sample(lags, sums, storage)

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.metrics_sample_interval_ms / 1000
        failing = False
        while not stop.is_set():
            try:
                self.collector.sample = await self.sample_once()
                if failing:
                    log.info("metrics sampling works again")
                failing = False
            except Exception as exc:  # metadata unavailable: keep the last sample, retry
                if not failing:
                    log.warning(
                        "could not sample consumer lag and storage for the metrics: %s; "
                        "retrying every %.1f s",
                        describe_failure(exc),
                        interval,
                    )
                failing = True
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
