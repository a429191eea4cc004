"""Ingest's serving state: its gRPC health check says SERVING only while the object store is
usable, so a load balancer or an operator sees a stack that cannot store what it is sent.

Rules:
- NOT_SERVING from the start until a probe passes: PUT + GET + DELETE of a small object under
  `_probe/` (`streamhouse.process.probe_object_store`).
- The probe runs again every `FAILING_PROBE_S` (2 s) while NOT_SERVING and every
  `SERVING_PROBE_S` (30 s) while SERVING, so a store that becomes unusable without traffic is
  noticed too.
- Uploads: every `WATCH_S` (1 s) the monitor reads two counters of the uploader from the
  stack's metric files (`streamhouse_object_store_errors_total{kind="put",role="uploader"}`
  and `streamhouse_segments_uploaded_total`). When the failed PUTs since the last uploaded
  segment reach `UPLOAD_FAILURES` (3) with none uploaded meanwhile, the uploads "keep
  failing": NOT_SERVING. The next uploaded segment ends that, and so does a passing probe
  while no new PUT failed since the previous reading (a store that recovered while nobody
  produced). With `metrics_enabled=false` there are no counters: the probe alone decides.
- Each change of the state, or of its cause, is one log line: ERROR to NOT_SERVING (the cause
  and the setting to fix), INFO back to SERVING. A repeated failure is DEBUG.
- The state is also written to `<data_dir>/run/serving.json` (replaced atomically at each
  change; `streamhouse status` reads it) as one JSON object::

      {"serving": bool, "reason": str | null, "since_ms": int (wall clock, ms), "pid": int}

`ServingState` is the sans-I/O core (what the probe and the counters say -> SERVING or not,
and why); `ServingMonitor` is the shell (probe, counters, health servicer, log, file).
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import pathlib
import time
from dataclasses import dataclass

from grpc_health.v1 import health, health_pb2

from streamhouse import metrics
from streamhouse.config import Settings
from streamhouse.process import describe_failure, probe_object_store

log = logging.getLogger("ingest.serving")

FAILING_PROBE_S = 2.0
SERVING_PROBE_S = 30.0
WATCH_S = 1.0
UPLOAD_FAILURES = 3
STATE_FILE = "serving.json"
_NOT_PROBED = "the object store has not passed its probe yet (PUT + GET + DELETE of _probe/)"


@dataclass(frozen=True)
class Verdict:
    """SERVING or not, and why not ("" when serving)."""

    serving: bool
    reason: str


class ServingState:
    """What the probe and the uploader's counters say about serving (see the module rules)."""

    def __init__(self, upload_failures: int = UPLOAD_FAILURES) -> None:
        if upload_failures < 1:
            raise ValueError(f"upload_failures must be at least 1, not {upload_failures}")
        self.upload_failures = upload_failures
        self.probe_error: str | None = _NOT_PROBED
        self.upload_error: str | None = None
        self._errors: float | None = None  # failed PUTs at the last reading
        self._errors_at_success: float = 0.0  # failed PUTs when a segment was last uploaded
        self._uploaded: float | None = None
        self._errors_grew = False

    def probed(self, error: str | None) -> Verdict:
        """The outcome of a probe: None if it passed, else what went wrong."""
        self.probe_error = error
        if error is None and self.upload_error is not None and not self._errors_grew:
            # The store took the probe and no upload failed since the last reading.
            self.upload_error = None
            if self._errors is not None:
                self._errors_at_success = self._errors
        return self.verdict()

    def counted(self, put_errors: float, uploaded: float) -> Verdict:
        """A reading of the uploader's failed PUTs and uploaded segments (both totals)."""
        if self._errors is None or self._uploaded is None:
            self._errors_at_success = put_errors  # failures before this ingest started
        elif uploaded > self._uploaded:
            self._errors_at_success = put_errors
            self.upload_error = None
        self._errors_grew = self._errors is not None and put_errors > self._errors
        self._errors, self._uploaded = put_errors, uploaded
        failed = put_errors - self._errors_at_success
        if failed >= self.upload_failures:
            self.upload_error = (
                f"uploads to the object store keep failing ({failed:.0f} failed PUTs since the "
                "last segment was stored; see the uploader log)"
            )
        return self.verdict()

    def verdict(self) -> Verdict:
        reason = self.probe_error or self.upload_error
        return Verdict(reason is None, reason or "")


def uploader_counts(directory: pathlib.Path) -> tuple[float, float]:
    """The uploader's failed PUTs and uploaded segments, summed over its metric files (those
    of exited uploaders included)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    files = glob.glob(os.path.join(directory, "counter_*.db"))
    errors = uploaded = 0.0
    for family in MultiProcessCollector.merge(files, accumulate=True):
        for sample in family.samples:
            if (
                sample.name == "streamhouse_object_store_errors_total"
                and sample.labels.get("kind") == "put"
                and sample.labels.get("role") == "uploader"
            ):
                errors += sample.value
            elif sample.name == "streamhouse_segments_uploaded_total":
                uploaded += sample.value
    return errors, uploaded


def read_state_file(settings: Settings) -> dict[str, object] | None:
    """The state ingest last wrote (see the module docstring), or None if there is none."""
    try:
        value = json.loads((settings.run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class ServingMonitor:
    """Runs the probe and watches the counters; sets the health servicer's status."""

    def __init__(self, settings: Settings, state: ServingState | None = None) -> None:
        self.settings = settings
        self.state = state or ServingState()
        self.verdict = self.state.verdict()
        self._servicer: health.aio.HealthServicer | None = None
        self._services: tuple[str, ...] = ()
        self._failure_kind = ""
        self._upload_logged = False
        metrics.child(metrics.SERVING, "ingest").set(0)
        self._write_state()

    async def attach(self, servicer: health.aio.HealthServicer, *services: str) -> None:
        """Report the current state on `servicer` for the overall ("") and named services."""
        self._servicer = servicer
        self._services = ("", *services)
        await self._publish()

    async def _publish(self) -> None:
        if self._servicer is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.verdict.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in self._services:
            await self._servicer.set(service, status)

    async def _apply(self, verdict: Verdict) -> None:
        if verdict == self.verdict:
            return
        self.verdict = verdict
        if verdict.serving:
            log.info("object store %s is usable: SERVING", self.settings.object_store_url)
            self._upload_logged = False
        elif verdict.reason == self.state.upload_error and not self._upload_logged:
            # (probe failures have their own line, in probe_once)
            log.error("NOT_SERVING: %s", verdict.reason)
            self._upload_logged = True
        metrics.child(metrics.SERVING, "ingest").set(1 if verdict.serving else 0)
        self._write_state()
        await self._publish()

    def _write_state(self) -> None:
        state = {
            "serving": self.verdict.serving,
            "reason": self.verdict.reason or None,
            "since_ms": int(time.time() * 1000),
            "pid": os.getpid(),
        }
        path = self.settings.run_dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)
        except OSError as exc:  # a full or missing run dir must not stop ingest
            log.warning("could not write %s: %s", path, exc)

    async def probe_once(self) -> None:
        try:
            await probe_object_store(self.settings, "ingest")
        except Exception as exc:  # any failure of the store is reported, then retried
            # One readable line: obstore appends a multi-line debug dump of its error.
            cause = describe_failure(exc).split(" (at ")[0].split("  Debug source:")[0]
            kind = _failure_kinds(exc)
            reason = (
                f"object store {self.settings.object_store_url} is not usable: {cause}; set "
                "STREAMHOUSE_OBJECT_STORE to a reachable, writable store"
            )
            if kind != self._failure_kind:
                # The startup check's line (tests and operators look for it), once per cause.
                log.error("%s (NOT_SERVING; probing again every %.0f s)", reason, FAILING_PROBE_S)
                self._failure_kind = kind
            else:
                log.debug("object store still not usable: %s", cause)
            await self._apply(self.state.probed(reason))
            return
        self._failure_kind = ""
        await self._apply(self.state.probed(None))

    async def count_once(self) -> None:
        if not self.settings.metrics_enabled:
            return
        directory = metrics.metrics_dir(self.settings)
        put_errors, uploaded = await asyncio.to_thread(uploader_counts, directory)
        await self._apply(self.state.counted(put_errors, uploaded))

    async def run(self, stop: asyncio.Event) -> None:
        """Probe and watch until `stop` is set."""
        next_probe = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_probe:
                await self.probe_once()
                interval = SERVING_PROBE_S if self.verdict.serving else FAILING_PROBE_S
                next_probe = time.monotonic() + interval
            try:
                await self.count_once()
            except Exception as exc:  # a metric file being written is retried next time
                log.debug("could not read the uploader's counters: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), WATCH_S)
            except TimeoutError:
                pass


def _failure_kinds(exc: BaseException) -> str:
    """The exception types of `exc`'s cause chain: one failure repeated has one kind."""
    kinds = []
    current: BaseException | None = exc
    while current is not None and len(kinds) < 8:
        kinds.append(type(current).__name__)
        current = current.__cause__ or current.__context__
    return "<-".join(kinds)
