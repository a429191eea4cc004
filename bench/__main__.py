"""``python -m bench SCENARIO [options]``: StreamHouse (and optionally a peer) under a scenario,
with live progress, a final table, results JSON and PNG charts (bench/harness/).
``python -m bench matrix [options]`` runs the issue's whole table (bench/harness/matrix.py)."""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import report
from bench.harness.run import SCENARIOS, Config, log, run_grpc, run_kafka, write_json
from bench.harness.servers import HarnessError, ObjectStore, StreamHouseServer, TansuServer


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n")[0],
        epilog="python -m bench matrix --help: the issue's whole table in one command",
    )
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("--protocol", choices=("kafka", "grpc"), default="kafka")
    ap.add_argument("--record-size", type=int, default=100, help="value bytes per record")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--producers", type=int, default=1, help="producer processes")
    ap.add_argument(
        "--consumers", type=int, default=0, help="consumer processes (default 10 for tail, else 1)"
    )
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of producing")
    ap.add_argument("--records", type=int, default=0, help="records to produce (over --duration)")
    ap.add_argument("--rate", type=float, default=0.0, help="records/s over all producers (0: max)")
    ap.add_argument(
        "--linger-ms", type=float, default=5.0, help="the load producers' linger.ms (Kafka)"
    )
    ap.add_argument("--acks", choices=("all", "1", "0"), default="all")
    ap.add_argument(
        "--compression", choices=("none", "gzip", "snappy", "lz4", "zstd"), default="none"
    )
    ap.add_argument("--flush-interval-ms", type=int, default=0, help="StreamHouse's (0: default)")
    ap.add_argument("--store", choices=("local", "seaweed"), default="local")
    ap.add_argument("--peer", choices=("tansu",), default=None)
    ap.add_argument("--rounds", type=int, default=0, help="runs per broker (default 2 with --peer)")
    ap.add_argument("--probe-rate", type=float, default=100.0, help="latency probe records/s")
    ap.add_argument("--sample-every", type=int, default=1000, help="e2e: one sample per N offsets")
    ap.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines")
    ap.add_argument("--bill-mb-s", type=float, default=10.0, help="sustained MB/s for the bill")
    ap.add_argument("--retention-days", type=float, default=7.0, help="storage in the bill")
    ap.add_argument("--env", action="append", default=[], help="STREAMHOUSE_X=Y (repeatable)")
    ap.add_argument("--out", default="", help="results folder (default /tmp/streamhouse-bench/…)")
    ap.add_argument(
        "--profile", type=float, default=0, help="py-spy each StreamHouse process N s per phase"
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="consumer give-up seconds")
    args = ap.parse_args(argv)
    for name in ("record_size", "partitions", "producers", "duration", "sample_every"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    if args.records < 0 or args.rate < 0 or args.consumers < 0 or args.linger_ms < 0:
        ap.error("--records, --rate, --consumers and --linger-ms must be >= 0")
    if args.peer and args.protocol == "grpc":
        ap.error("the peer speaks Kafka only: --peer needs --protocol kafka")
    for item in args.env:
        if "=" not in item or not item.startswith("STREAMHOUSE_"):
            ap.error(f"--env {item!r}: expected STREAMHOUSE_NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["matrix"]:
        from bench.harness import matrix

        return matrix.main(argv[1:])
    args = parse(argv)
    consumers = args.consumers or (10 if args.scenario == "tail" else 1)
    cfg = Config(
        scenario=args.scenario,
        protocol=args.protocol,
        record_size=args.record_size,
        partitions=args.partitions,
        producers=args.producers,
        consumers=consumers,
        duration=args.duration,
        records=args.records,
        rate=args.rate,
        linger_ms=args.linger_ms,
        acks=args.acks,
        compression=args.compression,
        probe_rate=args.probe_rate,
        sample_every=args.sample_every,
        progress=args.progress,
        timeout=args.timeout,
        profile=args.profile,
    )
    env = dict(item.split("=", 1) for item in args.env)
    if args.flush_interval_ms:
        env["STREAMHOUSE_FLUSH_INTERVAL_MS"] = str(args.flush_interval_ms)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or f"/tmp/streamhouse-bench/{stamp}-{args.scenario}")
    out.mkdir(parents=True, exist_ok=True)
    cfg.profile_dir = str(out / "profiles")
    rounds = args.rounds or (2 if args.peer else 1)
    order = ["streamhouse", args.peer] * rounds if args.peer else ["streamhouse"] * rounds
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="harness-") as tmp:
        store = ObjectStore(args.store, Path(tmp)).start()
        try:
            for i, broker in enumerate(order):
                label = f"{broker}#{i // (2 if args.peer else 1) + 1}"
                server: StreamHouseServer | TansuServer
                if broker == "streamhouse":
                    server = StreamHouseServer(store, Path(tmp), env)
                else:
                    server = TansuServer(store, Path(tmp))
                log(f"{label}: starting ({args.store} store)")
                try:
                    server.start()
                    runner = run_grpc if args.protocol == "grpc" else run_kafka
                    runs.append(runner(server, store, cfg, label))
                finally:
                    server.stop()
                log(f"{label}: " + ", ".join(
                    f"{k} {report._fmt(v)}" for k, v in report.figures(runs[-1]).items()
                ))  # fmt: skip
        finally:
            store.stop()
    text = report.table(runs)
    bills = {
        b: report.monthly_bill(
            [r for r in runs if r["broker"] == b], args.bill_mb_s, args.retention_days
        )
        for b in dict.fromkeys(r["broker"] for r in runs)
    }
    print(text)
    for broker, bill in bills.items():
        if bill:
            print(
                f"object-store bill at {args.bill_mb_s:g} MB/s ({broker}): "
                f"${bill['total_usd']:,.2f}/month = "
                + ", ".join(f"{k} ${v:,.2f}" for k, v in bill["usd"].items())
                + f" ({bill['put_class_per_gb']:.1f} PUT-class and "
                f"{bill['get_class_per_gb']:.1f} GET-class requests per GB)"
            )
    result = {
        "config": vars(args),
        "store": args.store,
        "started": stamp,
        "runs": runs,
        "figures": {r["label"]: report.figures(r) for r in runs},
        "table": text,
        "bill": bills,
    }
    write_json(out / "results.json", result)
    try:
        report.charts(runs, out / "charts.png")
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no charts.png")
    print(f"results: {out}/results.json, {out}/charts.png")
    failed = [
        r["label"]
        for r in runs
        for ph in r["phases"]
        if (ph.get("produce") or {}).get("failure_count")
        or ("consume" in ph and ph["consume"].get("complete") is False)
    ]
    if failed:
        log(f"runs with failed produces or incomplete consumes: {failed}")
        return 1
    return 0


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally`s that stop the servers


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        sys.exit(main())
    except HarnessError as exc:
        sys.exit(f"bench: {exc}")
