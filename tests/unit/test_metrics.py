"""streamhouse.metrics: names, multiprocess files summed at one scrape address, dead
processes' live gauges forgotten, counters kept across a restart, the disabled no-op.

Each "process" is a real subprocess that calls setup_process_metrics and writes metrics
through the instrumented code (an object-store PUT/GET on a file:// store); the test process
serves /metrics and scrapes it over HTTP.
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamhouse import metrics
from streamhouse.config import load_settings
from streamhouse.testing import free_port


def _settings(data_dir: pathlib.Path, port: int, enabled: bool = True):  # type: ignore[no-untyped-def]
    return load_settings(
        {
            "STREAMHOUSE_DATA_DIR": str(data_dir),
            "STREAMHOUSE_METRICS_LISTEN": f"127.0.0.1:{port}",
            "STREAMHOUSE_METRICS_ENABLED": "true" if enabled else "false",
        }
    )


def _child(data_dir: pathlib.Path, role: str, body: str) -> None:
    """Runs `body` in a new process after setup_process_metrics(role)."""
    code = textwrap.dedent(
        f"""
        import asyncio
        from streamhouse import metrics, objectstore
        from streamhouse.config import load_settings
        settings = load_settings({{"STREAMHOUSE_DATA_DIR": {str(data_dir)!r}}})
        metrics.setup_process_metrics(settings, {role!r})
        """
    ) + textwrap.dedent(body)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_names_follow_prometheus_conventions() -> None:
    names = metrics.metric_names()
    assert len(names) == len(set(names))
    for metric in metrics.ALL:
        exposed = metric._name + ("_total" if metric._type == "counter" else "")
        assert metrics.valid_name(exposed, metric._type), exposed
        # Every metric is labelled, so no value exists before setup picks the file backend.
        assert metric._labelnames, exposed
        if metric._type == "histogram":
            assert exposed.endswith(("_seconds", "_bytes")), exposed
    assert not metrics.valid_name("streamhouse_produce_records", "counter")
    assert not metrics.valid_name("produce_records_total", "counter")


def test_processes_are_summed_and_dead_gauges_forgotten(tmp_path: pathlib.Path) -> None:
    port = free_port()
    settings = _settings(tmp_path, port)
    store_dir = tmp_path / "objects"
    store_dir.mkdir()
    payload = b"x" * 1000
    put_body = f"""
        async def main():
            store = objectstore.open_object_store({store_dir.as_uri()!r})
            for i in range(3):
                await objectstore.put(store, f"k{{i}}", {payload!r})
            assert await objectstore.get(store, "k0") == {payload!r}
            try:
                await objectstore.get(store, "missing")
            except Exception:
                pass
        asyncio.run(main())
        metrics.child(metrics.CONNECTIONS, "kafka").inc(2)
    """
    _child(tmp_path, "uploader", put_body)
    _child(tmp_path, "uploader", put_body)  # the same role restarted: a new pid, new files
    metrics.start_metrics_endpoint(settings)
    try:
        samples = _scrape(port)
    finally:
        metrics.stop_metrics_endpoint()
    put = (("kind", "put"), ("role", "uploader"))
    get = (("kind", "get"), ("role", "uploader"))
    assert samples[("streamhouse_object_store_requests_total", put)] == 6
    assert samples[("streamhouse_object_store_requests_total", get)] == 4
    assert samples[("streamhouse_object_store_errors_total", get)] == 2
    assert samples[("streamhouse_object_store_bytes_total", (("kind", "put"),))] == 6 * 1000
    assert samples[("streamhouse_object_store_bytes_total", (("kind", "get"),))] == 2 * 1000
    assert samples[("streamhouse_object_store_request_seconds_count", (("kind", "put"),))] == 6
    assert samples[("streamhouse_process_starts_total", (("role", "uploader"),))] == 2
    # Both children exited: their live gauges are gone from the scrape.
    assert ("streamhouse_connections", (("listener", "kafka"),)) not in samples
    assert ("streamhouse_process_up", (("role", "uploader"),)) not in samples
    assert not list(metrics.metrics_dir(settings).glob("gauge_live*"))


def test_live_gauges_of_a_running_process_are_served(tmp_path: pathlib.Path) -> None:
    port = free_port()
    settings = _settings(tmp_path, port)
    ready = tmp_path / "ready"
    code = textwrap.dedent(
        f"""
        import pathlib, sys
        from streamhouse import metrics
        from streamhouse.config import load_settings
        settings = load_settings({{"STREAMHOUSE_DATA_DIR": {str(tmp_path)!r}}})
        metrics.setup_process_metrics(settings, "ingest")
        metrics.child(metrics.CONNECTIONS, "kafka").inc(3)
        pathlib.Path({str(ready)!r}).write_text("ok")
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the child never became ready"
            assert proc.poll() is None, "the child exited"
            time.sleep(0.02)
        metrics.start_metrics_endpoint(settings)
        try:
            samples = _scrape(port)
            assert samples[("streamhouse_connections", (("listener", "kafka"),))] == 3
            assert samples[("streamhouse_process_up", (("role", "ingest"),))] == 1
        finally:
            metrics.stop_metrics_endpoint()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def test_disabled_is_a_no_op(tmp_path: pathlib.Path) -> None:
    port = free_port()
    settings = _settings(tmp_path, port, enabled=False)
    metrics.start_metrics_endpoint(settings)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert not metrics.metrics_dir(settings).exists()


def test_busy_port_names_the_setting(tmp_path: pathlib.Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match="STREAMHOUSE_METRICS_LISTEN"):
            metrics.start_metrics_endpoint(_settings(tmp_path, port))


def test_dashboard_and_readme_name_only_defined_metrics() -> None:
    import json
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    defined = set(metrics.metric_names())
    series = defined | {
        f"{m._name}{suffix}"
        for m in metrics.ALL
        if m._type == "histogram"
        for suffix in ("_bucket", "_sum", "_count")
    }
    dashboard = json.loads((root / "grafana" / "streamhouse-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"streamhouse_[a-z0-9_]+", target["expr"])
    }
    assert used and used <= series, used - series
    readme = (root / "README.md").read_text()
    section = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(streamhouse_[a-z0-9_]+)`", section))
    assert listed <= series, listed - series
    # Every metric is listed, the gauges ingest samples from metadata included.
    assert defined <= listed, defined - listed
    # The dashboard has panels for the produce stages, group lag and ingest's health.
    for needed in (
        "streamhouse_produce_stage_seconds_bucket",
        "streamhouse_consumer_group_lag",
        "streamhouse_consumer_group_lag_sum",
        "streamhouse_stored_objects",
        "streamhouse_serving",
    ):
        assert needed in used, needed
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids
