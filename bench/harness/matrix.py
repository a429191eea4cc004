"""``python -m bench matrix``: issue 10's whole table in one command.

Every row runs ``python -m bench SCENARIO ...`` (the harness's scenarios, in a child process per
run, each with its own results folder) and reads the figures from its ``results.json``; a row
that needs a figure measured first (half of the maximum rate) runs its commands in turn. The
rows and their aims, from the issue:

=============  ==================================================================================
row            what (aim)
=============  ==================================================================================
s3-100-1p      SeaweedFS, 100 B, 1 partition, StreamHouse / Tansu alternating: produce and
s3-1k-1p       catch-up consume at least 1.5x the peer's records/s; objects (PUT-class requests)
s3-100-12p     per GB produced at least 10x fewer than the peer's (these runs are well above
s3-1k-12p      10 MB/s). 100 B / 1 KiB on 1 / 12 partitions.
mem-100        a local folder against Tansu's in-memory log, 100 B: produce and consume >= 0.8x
mem-1k         the same at 1 KiB: >= 1.0x
grpc           gRPC, 100 B, 3 partitions, 3 consumers: >= 600,000 records/s in and 1,000,000 out
tail           ten consumers tailing one partition (SeaweedFS) against one: GET-class requests
               per GB produced no more than with one consumer
lat-local      p99 of the load's produce acknowledgements at half of StreamHouse's maximum rate
lat-s3         (measured first, same options): <= 100 ms on a local folder, 150 ms on SeaweedFS
low-local      produce latency at low load (1,000 records/s, linger.ms 0: the producer is not
low-s3         saturated): p99 below one flush interval (group commit when the uploader is idle)
objects-10mb   SeaweedFS at a fixed 10 MB/s (100,000 records/s of 100 B) beside Tansu: PUT-class
               requests per GB produced at least 10x fewer than the peer's
=============  ==================================================================================

Ratios are of the medians over ``--rounds`` runs per broker (StreamHouse, peer, StreamHouse,
peer, ...). ``--quick``: 2 s of producing per run and one round (a smoke test; the figures mean
little). Output in ``--out`` (default ``/tmp/streamhouse-bench/<time>-matrix``):

- ``summary.md``: one markdown table, a line per figure: row, figure, measured value (with the
  spread of each side), the aim, met / not met, and the exact command(s) of the row; then each
  row's wall time and any row that failed to run, with the reason;
- ``matrix.json``: ``{"started", "options", "wall_s", "rows": [{"key", "title", "wall_s",
  "error", "runs": [{"tag", "command", "exit", "results"}], "figures": [{"figure", "measured",
  "aim", "met", "value", "commands"}]}]}`` (``results``: the path of that run's JSON);
- ``<row>-<step>/results.json`` and ``charts.png``: every run's own output (bench/harness/
  __init__.py documents that JSON).

Exit status 0 when every row ran (aims met or not), 1 when a row failed to run or one of its
runs had failed produces or incomplete consumes.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness.report import GET_CLASS, PUT_CLASS, _fmt
from bench.harness.servers import ROOT

QUICK_DURATION_S = 2.0
DURATION_S = 10.0
LOW_RATE = 1000  # records/s of the low-load latency rows
FIXED_MB_S = 10.0  # the objects-per-GB row's produce rate
STDERR_TAIL = 15  # lines of a failed run's stderr kept for the summary


class RowFailed(RuntimeError):
    """A row could not be measured (the message says which command and why)."""


@dataclass
class Figure:
    figure: str
    measured: str
    aim: str
    met: bool | None  # None: no figure (the run gave none)
    value: float | None
    commands: list[str]


@dataclass
class RowResult:
    key: str
    title: str
    wall_s: float = 0.0
    error: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


class Runner:
    """Runs one row's ``python -m bench`` commands into the results folder."""

    def __init__(self, out: Path, duration: float, rounds: int, row: RowResult) -> None:
        self.out = out
        self.duration = duration
        self.rounds = rounds
        self.row = row

    def length(self) -> list[str]:
        return ["--duration", f"{self.duration:g}"]

    def bench(self, step: str, argv: list[str]) -> dict[str, Any]:
        """Runs ``python -m bench *argv`` (its progress goes to stderr as it comes) and returns
        its results.json. The command recorded is the one to type (without ``--out``)."""
        tag = f"{self.row.key}-{step}"
        folder = self.out / tag
        command = "python -m bench " + shlex.join(argv)
        print(f"matrix [{tag}]: {command}", file=sys.stderr, flush=True)
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        with subprocess.Popen(
            [sys.executable, "-m", "bench", *argv, "--out", str(folder)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stderr is not None
            try:
                for line in proc.stderr:
                    sys.stderr.write(line)
                    tail.append(line.rstrip())
            except BaseException:  # interrupted: the child stops its servers before we go
                proc.terminate()
                proc.wait(120)
                raise
            code = proc.wait()
        results_path = folder / "results.json"
        self.row.runs.append(
            {"tag": tag, "command": command, "exit": code, "results": str(results_path)}
        )
        if not results_path.exists():
            raise RowFailed(f"`{command}` exited {code} without results: " + " / ".join(tail))
        if code != 0:
            self.row.error = (
                f"`{command}` exited {code} (failed produces or incomplete consumes: see "
                f"{results_path})"
            )
        return dict(json.loads(results_path.read_text()))


def by_broker(results: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """{broker: {figure: [value of each run]}} from one results.json."""
    out: dict[str, dict[str, list[float]]] = {}
    for run in results["runs"]:
        for name, value in results["figures"][run["label"]].items():
            out.setdefault(run["broker"], {}).setdefault(name, []).append(value)
    return out


def phase_figure(
    results: dict[str, Any], broker: str, pick: Callable[[dict[str, Any]], float | None]
) -> list[float]:
    """[pick(phase) for every phase of every run of `broker` where it gives a value]."""
    values = []
    for run in results["runs"]:
        if run["broker"] == broker:
            values += [v for ph in run["phases"] if (v := pick(ph)) is not None]
    return values


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return _fmt(lo) if lo == hi else f"{_fmt(lo)}–{_fmt(hi)}"


def _ratio_figure(
    name: str,
    sh: list[float],
    peer: list[float],
    aim: float,
    unit: str,
    commands: list[str],
    *,
    fewer: bool = False,
) -> Figure:
    """StreamHouse / peer of the medians (``fewer``: peer / StreamHouse), met if >= aim."""
    aim_text = f">= {aim:g}x fewer" if fewer else f">= {aim:g}x the peer"
    if not sh or not peer:
        return Figure(name, "no figure", aim_text, None, None, commands)
    num, den = (statistics.median(peer), statistics.median(sh))
    if not fewer:
        num, den = den, num
    if den == 0:
        ratio = float("inf") if num else 0.0
    else:
        ratio = num / den
    what = "fewer " if fewer else ""
    measured = f"{ratio:.2f}x {what}(SH {_spread(sh)} vs {_spread(peer)} {unit})"
    return Figure(name, measured, aim_text, ratio >= aim, ratio, commands)


def _objects(results: dict[str, Any], commands: list[str], what: str) -> Figure:
    def puts(ph: dict[str, Any]) -> float | None:
        if not ph.get("produced_gb") or not ph.get("store_counted"):
            return None
        return float(sum(ph["requests_per_gb_produced"].get(k, 0) for k in PUT_CLASS))

    return _ratio_figure(
        f"objects per GB produced{what}",
        phase_figure(results, "streamhouse", puts),
        phase_figure(results, "tansu", puts),
        10.0,
        "PUT-class/GB",
        commands,
        fewer=True,
    )


def peer_row(store: str, size: int, partitions: int, aim: float) -> Callable[[Runner], None]:
    def row(r: Runner) -> None:
        argv = ["consume", "--store", store, "--peer", "tansu", "--rounds", str(r.rounds)]
        argv += ["--record-size", str(size), "--partitions", str(partitions), *r.length()]
        res = r.bench("consume", argv)
        cmd = [r.row.runs[-1]["command"]]
        figs = by_broker(res)
        sh, peer = figs.get("streamhouse", {}), figs.get("tansu", {})
        for what in ("produce", "consume"):
            key = f"{what} rec/s"
            r.row.figures.append(
                _ratio_figure(
                    f"{what} rec/s", sh.get(key, []), peer.get(key, []), aim, "rec/s", cmd
                )
            )
        if store == "seaweed":
            r.row.figures.append(_objects(res, cmd, ""))

    return row


def grpc_row(r: Runner) -> None:
    argv = ["consume", "--protocol", "grpc", "--record-size", "100", "--partitions", "3"]
    argv += ["--consumers", "3", *r.length()]
    res = r.bench("consume", argv)
    cmd = [r.row.runs[-1]["command"]]
    sh = by_broker(res).get("streamhouse", {})
    for what, aim in (("produce", 600_000), ("consume", 1_000_000)):
        values = sh.get(f"{what} rec/s", [])
        med = statistics.median(values) if values else None
        r.row.figures.append(
            Figure(
                f"{what} rec/s ({'in' if what == 'produce' else 'out, catch-up'})",
                f"{_fmt(med)} rec/s" if med is not None else "no figure",
                f">= {aim:,} rec/s",
                None if med is None else med >= aim,
                med,
                cmd,
            )
        )


def tail_row(r: Runner) -> None:
    def gets(ph: dict[str, Any]) -> float | None:
        if not ph.get("produced_gb") or not ph.get("store_counted"):
            return None
        return float(sum(ph["requests_per_gb_produced"].get(k, 0) for k in GET_CLASS))

    per = {}
    for n in (10, 1):
        argv = ["tail", "--store", "seaweed", "--consumers", str(n), "--partitions", "1"]
        res = r.bench(f"{n}c", argv + r.length())
        values = phase_figure(res, "streamhouse", gets)
        per[n] = statistics.median(values) if values else None
    cmds = [run["command"] for run in r.row.runs]
    ten, one = per[10], per[1]
    r.row.figures.append(
        Figure(
            "GET-class requests per GB produced, 10 tailing consumers vs 1",
            f"{_fmt(ten)} vs {_fmt(one)}",
            "10 consumers <= 1 consumer",
            None if ten is None or one is None else ten <= one,
            ten,
            cmds,
        )
    )


def latency_row(store: str, aim_ms: float) -> Callable[[Runner], None]:
    def row(r: Runner) -> None:
        base = ["produce", "--store", store, "--record-size", "100", "--partitions", "1"]
        peak = by_broker(r.bench("max", base + r.length())).get("streamhouse", {})
        if not peak.get("produce rec/s"):
            raise RowFailed("the maximum-rate run gave no produce rate")
        top = statistics.median(peak["produce rec/s"])
        half = max(1, int(top / 2))
        res = by_broker(r.bench("half", [*base, "--rate", str(half), *r.length()]))
        sh = res.get("streamhouse", {})
        cmds = [run["command"] for run in r.row.runs]
        p99 = statistics.median(sh["produce p99 ms"]) if sh.get("produce p99 ms") else None
        p50 = statistics.median(sh["produce p50 ms"]) if sh.get("produce p50 ms") else None
        got = statistics.median(sh["produce rec/s"]) if sh.get("produce rec/s") else 0.0
        r.row.figures.append(
            Figure(
                "produce p99 ms at half the maximum rate",
                f"p99 {_fmt(p99)} ms, p50 {_fmt(p50)} ms at {_fmt(got)} rec/s "
                f"(half of {_fmt(top)})",
                f"<= {aim_ms:g} ms",
                None if p99 is None else p99 <= aim_ms,
                p99,
                cmds,
            )
        )

    return row


def low_load_row(store: str) -> Callable[[Runner], None]:
    def row(r: Runner) -> None:
        from streamhouse.config import Settings

        flush = Settings().flush_interval_ms
        argv = ["produce", "--store", store, "--record-size", "100", "--partitions", "1"]
        argv += ["--rate", str(LOW_RATE), "--linger-ms", "0", "--probe-rate", "0", *r.length()]
        sh = by_broker(r.bench("low", argv)).get("streamhouse", {})
        p99 = statistics.median(sh["produce p99 ms"]) if sh.get("produce p99 ms") else None
        p50 = statistics.median(sh["produce p50 ms"]) if sh.get("produce p50 ms") else None
        r.row.figures.append(
            Figure(
                f"produce latency at {LOW_RATE:,} rec/s, linger 0",
                f"p99 {_fmt(p99)} ms, p50 {_fmt(p50)} ms",
                f"p99 < flush interval ({flush} ms)",
                None if p99 is None else p99 < flush,
                p99,
                [r.row.runs[-1]["command"]],
            )
        )

    return row


def objects_row(r: Runner) -> None:
    size = 100
    rate = int(FIXED_MB_S * 1e6 / size)
    argv = ["produce", "--store", "seaweed", "--peer", "tansu", "--rounds", str(r.rounds)]
    argv += ["--record-size", str(size), "--partitions", "1", "--rate", str(rate)]
    argv += ["--probe-rate", "0", *r.length()]
    res = r.bench("produce", argv)
    r.row.figures.append(_objects(res, [r.row.runs[-1]["command"]], f" at {FIXED_MB_S:g} MB/s"))


ROWS: dict[str, tuple[str, Callable[[Runner], None]]] = {
    "s3-100-1p": ("SeaweedFS, 100 B, 1 partition", peer_row("seaweed", 100, 1, 1.5)),
    "s3-1k-1p": ("SeaweedFS, 1 KiB, 1 partition", peer_row("seaweed", 1024, 1, 1.5)),
    "s3-100-12p": ("SeaweedFS, 100 B, 12 partitions", peer_row("seaweed", 100, 12, 1.5)),
    "s3-1k-12p": ("SeaweedFS, 1 KiB, 12 partitions", peer_row("seaweed", 1024, 12, 1.5)),
    "mem-100": ("local folder vs Tansu in memory, 100 B", peer_row("local", 100, 1, 0.8)),
    "mem-1k": ("local folder vs Tansu in memory, 1 KiB", peer_row("local", 1024, 1, 1.0)),
    "grpc": ("gRPC, 100 B, 3 partitions (StreamHouse alone)", grpc_row),
    "tail": ("tailing one partition on SeaweedFS, 10 consumers vs 1", tail_row),
    "lat-local": ("latency at half the maximum rate, local folder", latency_row("local", 100)),
    "lat-s3": ("latency at half the maximum rate, SeaweedFS", latency_row("seaweed", 150)),
    "low-local": ("latency at low load, local folder", low_load_row("local")),
    "low-s3": ("latency at low load, SeaweedFS", low_load_row("seaweed")),
    "objects-10mb": ("objects per GB at 10 MB/s beside Tansu (SeaweedFS)", objects_row),
}


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench matrix",
        description="issue 10's whole table: every row's runs, one markdown summary",
        epilog="rows: " + ", ".join(ROWS),
    )
    ap.add_argument("--only", default="", help="comma-separated rows to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="2 s per run, one round (smoke test)")
    ap.add_argument("--duration", type=float, default=0.0, help="seconds of producing per run")
    ap.add_argument("--rounds", type=int, default=0, help="runs per broker (default 2; quick 1)")
    ap.add_argument("--out", default="", help="results folder (default /tmp/streamhouse-bench/…)")
    ap.add_argument("--list", action="store_true", help="print the rows and exit")
    args = ap.parse_args(argv)
    if args.duration < 0 or args.rounds < 0:
        ap.error("--duration and --rounds must be >= 0")
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in only if k not in ROWS]
    if unknown:
        ap.error(f"--only: unknown row(s) {', '.join(unknown)}; rows are {', '.join(ROWS)}")
    args.rows = only or list(ROWS)
    return args


def summary(
    rows: list[RowResult], options: str, started: str, wall_s: float, load: tuple[str, str]
) -> str:
    lines = [
        f"# `python -m bench matrix` — {started}",
        "",
        f"Options: `{options}`. Wall time {wall_s / 60:.1f} min. Load average (1 min) at the "
        f"start {load[0]}, at the end {load[1]}, on {os.cpu_count()} cores. Ratios are "
        'StreamHouse / Tansu of the medians ("fewer": Tansu / StreamHouse); the spread is '
        "min–max of each side's runs.",
        "",
        "| row | figure | measured | aim | met | command |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row.figures:
            lines.append(f"| {row.key}: {row.title} | – | not run: see below | – | – | – |")
        for fig in row.figures:
            met = {True: "met", False: "not met", None: "–"}[fig.met]
            cmds = " then ".join(f"`{c}`" for c in fig.commands)
            lines.append(
                f"| {row.key}: {row.title} | {fig.figure} | {fig.measured} | {fig.aim} | {met} "
                f"| {cmds} |"
            )
    lines += ["", "| row | wall time | runs (results.json) | problem |", "|---|---|---|---|"]
    for row in rows:
        runs = ", ".join(f"`{Path(run['results']).parent.name}`" for run in row.runs) or "–"
        lines.append(f"| {row.key} | {row.wall_s:.0f} s | {runs} | {row.error or '–'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.list:
        width = max(len(k) for k in ROWS)
        print("\n".join(f"{key:<{width}}  {title}" for key, (title, _) in ROWS.items()))
        return 0
    duration = args.duration or (QUICK_DURATION_S if args.quick else DURATION_S)
    rounds = args.rounds or (1 if args.quick else 2)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or f"/tmp/streamhouse-bench/{stamp}-matrix")
    out.mkdir(parents=True, exist_ok=True)
    options = "python -m bench matrix " + shlex.join(argv)
    load0 = f"{os.getloadavg()[0]:.2f}"
    t0 = time.monotonic()
    rows: list[RowResult] = []
    for key in args.rows:
        title, fn = ROWS[key]
        row = RowResult(key, title)
        rows.append(row)
        began = time.monotonic()
        try:
            fn(Runner(out, duration, rounds, row))
        except (RowFailed, KeyError, ValueError) as exc:
            row.error = f"{type(exc).__name__}: {exc}"
            print(f"matrix [{key}]: failed: {row.error}", file=sys.stderr, flush=True)
        row.wall_s = time.monotonic() - began
        _write(out, rows, options, stamp, time.monotonic() - t0, load0)  # kept current
    wall = time.monotonic() - t0
    text = _write(out, rows, options, stamp, wall, load0)
    print(text)
    print(f"matrix: {out}/summary.md, {out}/matrix.json ({wall / 60:.1f} min)")
    return 1 if any(row.error for row in rows) else 0


def _write(
    out: Path, rows: list[RowResult], options: str, stamp: str, wall: float, load0: str
) -> str:
    text = summary(rows, options, stamp, wall, (load0, f"{os.getloadavg()[0]:.2f}"))
    (out / "summary.md").write_text(text)
    data = {
        "started": stamp,
        "options": options,
        "wall_s": wall,
        "rows": [asdict(row) for row in rows],
    }
    (out / "matrix.json").write_text(json.dumps(data, indent=1))
    return text
