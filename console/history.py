"""What the console remembers between page views: sampled numbers over the last hour.

Sans-I/O: the sampler (console/server.py) calls `History.add(t, values)` every few seconds with
the time (seconds since the epoch) and the current value of every series it watches; pages read
rates and lines back. Nothing is written anywhere: a restarted console starts empty.

Series are named `<kind>:<subject>`, e.g. `records:orders` (a topic's summed high watermarks: a
counter), `bytes:orders` (bytes produced to it, a counter from the metrics endpoint) or
`lag:billing` (a group's total lag: a gauge).

Memory: about 100 bytes a point, so with the default 5 s samples a series costs some 70 KiB
an hour; a stack keeps two series per topic and one per group (100 topics: about 14 MiB).

Rules:
1. Points older than `keep_s` before the newest sample are dropped; a series absent from every
   sample that long disappears.
2. A counter's rate between two points is its increase over the time between them; a decrease
   (a topic deleted and created again, a process's counters reset) counts as no increase, never
   as a negative rate.
3. `rate` over a window uses the points in that window (at least two, else None: not known yet).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

__all__ = ["History"]


class History:
    def __init__(self, keep_s: float = 3600.0) -> None:
        if keep_s <= 0:
            raise ValueError(f"keep_s must be positive, not {keep_s}")
        self.keep_s = keep_s
        self._series: dict[str, deque[tuple[float, float]]] = {}

    def add(self, t: float, values: Mapping[str, float]) -> None:
        """Records one sample moment: the value of each named series at time `t`."""
        for name, value in values.items():
            points = self._series.setdefault(name, deque())
            if points and t <= points[-1][0]:
                continue  # a sample out of order (clock stepped back) is ignored
            points.append((t, float(value)))
        horizon = t - self.keep_s
        for name in list(self._series):
            points = self._series[name]
            while points and points[0][0] < horizon:
                points.popleft()
            if not points:
                del self._series[name]

    def names(self, kind: str) -> list[str]:
        """Subjects of the series of one kind (`records` -> topic names), sorted."""
        prefix = kind + ":"
        return sorted(n[len(prefix) :] for n in self._series if n.startswith(prefix))

    def points(self, name: str) -> list[tuple[float, float]]:
        """The series' points, oldest first (a gauge's line)."""
        return list(self._series.get(name, ()))

    def latest(self, name: str) -> float | None:
        points = self._series.get(name)
        return points[-1][1] if points else None

    def rate_points(self, name: str) -> list[tuple[float, float]]:
        """A counter's per-second rate between consecutive points, at the later point's time."""
        return list(_rates(self._series.get(name, ())))

    def rate(self, name: str, window_s: float = 60.0) -> float | None:
        """A counter's mean per-second increase over the last `window_s` seconds."""
        points = self._series.get(name)
        if not points or len(points) < 2:
            return None
        newest = points[-1][0]
        recent = [p for p in points if p[0] >= newest - window_s]
        if len(recent) < 2:
            recent = list(points)[-2:]
        increase = sum(max(0.0, b[1] - a[1]) for a, b in zip(recent, recent[1:], strict=False))
        return increase / (recent[-1][0] - recent[0][0])


def _rates(points: Iterable[tuple[float, float]]) -> Iterable[tuple[float, float]]:
    previous: tuple[float, float] | None = None
    for point in points:
        if previous is not None:
            dt = point[0] - previous[0]
            yield point[0], max(0.0, point[1] - previous[1]) / dt
        previous = point
