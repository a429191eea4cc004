"""``python -m bench matrix``: a quick run of two tiny rows end to end (StreamHouse on a local
folder at low load, and StreamHouse beside Tansu's in-memory log) writes a summary with each
row's figures, aims and exact commands and every run's JSON; the load-latency bookkeeping and
the figures' arithmetic on their own."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

from bench.harness.kafka_load import AckLatency
from bench.harness.matrix import ROWS, _ratio_figure, by_broker

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_quick_matrix_writes_summary_with_aims_and_commands(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "matrix"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "matrix", "--quick", "--only", "low-local,mem-100",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert done.stdout.startswith(summary)
    rows = [line for line in summary.splitlines() if line.startswith("| low-local:")]
    assert len(rows) == 1
    (low,) = rows
    assert "p99 < flush interval (50 ms)" in low
    assert re.search(r"\| p99 [\d.,]+ ms, p50 [\d.,]+ ms \|", low), low
    assert re.search(r"\| (met|not met) \|", low)
    assert (
        "`python -m bench produce --store local --record-size 100 --partitions 1 --rate 1000 "
        "--linger-ms 0 --probe-rate 0 --duration 2`" in low
    )
    mem = [line for line in summary.splitlines() if line.startswith("| mem-100:")]
    assert [line.split(" | ")[1] for line in mem] == ["produce rec/s", "consume rec/s"]
    for line in mem:
        assert ">= 0.8x the peer" in line
        assert re.search(r"\| [\d.]+x \(SH [\d,]+ vs [\d,]+ rec/s\) \|", line), line
        assert "`python -m bench consume --store local --peer tansu --rounds 1 " in line

    data = json.loads((out / "matrix.json").read_text())
    assert [row["key"] for row in data["rows"]] == ["low-local", "mem-100"]
    for row in data["rows"]:
        assert row["error"] == ""
        for run in row["runs"]:
            assert run["exit"] == 0
            result = json.loads(pathlib.Path(run["results"]).read_text())
            assert result["runs"], run
    low_run = json.loads(pathlib.Path(data["rows"][0]["runs"][0]["results"]).read_text())
    (phase,) = low_run["runs"][0]["phases"]
    # the load's own acknowledgements were timed (one record per chunk at 1,000 records/s)
    assert phase["load_latency_ms"]["count"] > 100
    assert phase["produce"]["records"] > 1000
    assert data["rows"][0]["figures"][0]["value"] == phase["load_latency_ms"]["p99"]
    mem_run = json.loads(pathlib.Path(data["rows"][1]["runs"][0]["results"]).read_text())
    assert [r["broker"] for r in mem_run["runs"]] == ["streamhouse", "tansu"]


def test_matrix_refuses_unknown_rows() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "matrix", "--only", "mem-100,nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown row(s) nope" in done.stderr
    assert all(key in done.stderr for key in ROWS)


def test_ack_latency_samples_chunks_once_acknowledged() -> None:
    clock = AckLatency(sample_from=1.0)
    clock.queued(0.5, 100)  # before sample_from: acknowledged but not sampled
    clock.queued(1.0, 200)
    clock.queued(2.0, 300)
    clock.acknowledged(1.2, 150)
    assert clock.samples == []
    clock.acknowledged(2.5, 250)
    assert clock.samples == [(1.0, 1.5)]
    clock.acknowledged(3.0, 300)
    assert clock.samples == [(1.0, 1.5), (2.0, 1.0)]
    assert not clock.pending


def test_ratio_figures_use_the_medians() -> None:
    results = {
        "runs": [
            {"broker": "streamhouse", "label": "a"},
            {"broker": "tansu", "label": "b"},
            {"broker": "streamhouse", "label": "c"},
            {"broker": "tansu", "label": "d"},
        ],
        "figures": {
            "a": {"produce rec/s": 300_000.0},
            "b": {"produce rec/s": 100_000.0},
            "c": {"produce rec/s": 500_000.0},
            "d": {"produce rec/s": 300_000.0},
        },
    }
    per = by_broker(results)
    assert per == {
        "streamhouse": {"produce rec/s": [300_000.0, 500_000.0]},
        "tansu": {"produce rec/s": [100_000.0, 300_000.0]},
    }
    fig = _ratio_figure(
        "produce", per["streamhouse"]["produce rec/s"], per["tansu"]["produce rec/s"], 1.5,
        "rec/s", ["cmd"],
    )  # fmt: skip
    assert fig.value == pytest.approx(2.0) and fig.met
    assert fig.measured == "2.00x (SH 300,000–500,000 vs 100,000–300,000 rec/s)"
    fewer = _ratio_figure("objects", [600.0], [5000.0], 10.0, "PUT-class/GB", [], fewer=True)
    assert fewer.value == pytest.approx(5000 / 600) and fewer.met is False
    assert fewer.aim == ">= 10x fewer"
    assert fewer.measured == "8.33x fewer (SH 600.0 vs 5,000 PUT-class/GB)"
