"""The console's sampler: every `console_sample_ms` it reads the numbers the charts and rates
need and adds them to the History (console/history.py). The I/O shell around History.

Each sample reads, through console/sources.py: topics (summed high watermarks per topic: the
`records:<topic>` counters), bytes produced per topic from the metrics endpoint (`bytes:<topic>`,
skipped when metrics are off or unreadable) and every group's total lag (`lag:<group>`). A
source that fails is left out of that sample; the first failure of each source, and each change
of its message, is one WARNING line, its recovery one INFO line, so a stack that is starting or
down does not fill the log.
"""

from __future__ import annotations

import asyncio
import logging
import time

from console.history import History
from console.sources import SourceError, StackSources

__all__ = ["Sampler"]

log = logging.getLogger("console.sampler")


class Sampler:
    def __init__(self, sources: StackSources, history: History, interval_s: float) -> None:
        self.sources = sources
        self.history = history
        self.interval_s = interval_s
        self._failing: dict[str, str] = {}

    def _failed(self, source: str, exc: Exception) -> None:
        message = str(exc)
        if self._failing.get(source) != message:
            log.warning("sampling %s failed: %s (charts miss these points)", source, message)
        self._failing[source] = message

    def _ok(self, source: str) -> None:
        if self._failing.pop(source, None) is not None:
            log.info("sampling %s works again", source)

    async def sample_once(self) -> None:
        """Reads every source once and adds what it got to the history."""
        now = time.time()
        values: dict[str, float] = {}
        high_watermarks: dict[tuple[str, int], int] = {}
        try:
            topics = await self.sources.topics()
        except SourceError as exc:
            self._failed("topics", exc)
            topics = None
        else:
            self._ok("topics")
            for t in topics:
                values[f"records:{t.name}"] = sum(p.high_watermark for p in t.partition_info)
                for p in t.partition_info:
                    high_watermarks[(t.name, p.partition)] = p.high_watermark
        try:
            produced = await self.sources.produced_bytes()
        except SourceError as exc:
            self._failed("metrics", exc)
        else:
            self._ok("metrics")
            for topic, value in produced.items():
                values[f"bytes:{topic}"] = value
        if topics is not None:
            try:
                groups, problems = await self.sources.groups(high_watermarks)
            except SourceError as exc:
                self._failed("groups", exc)
            else:
                if problems:
                    self._failed("groups", SourceError("; ".join(problems)))
                else:
                    self._ok("groups")
                for g in groups:
                    values[f"lag:{g.group_id}"] = g.total_lag
        self.history.add(now, values)

    async def run(self) -> None:
        """Samples until cancelled."""
        while True:
            await self.sample_once()
            await asyncio.sleep(self.interval_s)
