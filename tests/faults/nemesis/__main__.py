"""The long nemesis run as one command (from the repository root):

    python3 -m tests.faults.nemesis --duration 600 --seed 7 --out /tmp/nemesis-run

prints the faults done and every checker count, writes them to OUT/verdict.txt, and exits 1
on any anomaly, on zero acknowledged writes, or if the run itself went wrong. `--check FILE`
re-checks a recorded history without running anything.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from .checker import check
from .history import read_history
from .run import RunConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.faults.nemesis",
        description="Jepsen-style nemesis run against a whole StreamHouse stack on SeaweedFS.",
    )
    parser.add_argument("--duration", type=float, default=600, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault schedule")
    parser.add_argument("--interval", type=float, default=10, help="mean seconds between faults")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("/tmp/nemesis-run"),
        help="directory for the history, verdict, stack and SeaweedFS data (must be new)",
    )
    parser.add_argument("--check", type=pathlib.Path, help="only check this history file")
    parser.add_argument(
        "--kafka-rate", type=float, default=100, help="values/s of each of 3 Kafka producers"
    )
    parser.add_argument(
        "--grpc-rate", type=float, default=5, help="20-value batches/s of each of 2 gRPC producers"
    )
    args = parser.parse_args(argv)
    if args.check is not None:
        verdict = check(read_history(args.check))
        print(verdict.report())
        return 0 if verdict.valid else 1
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty; give a new directory")
    config = RunConfig(
        duration=args.duration,
        seed=args.seed,
        interval=args.interval,
        kafka_rate=args.kafka_rate,
        grpc_batches_per_s=args.grpc_rate,
    )
    result = run(args.out, config)
    print(result.report())
    print(f"history: {args.out / 'history.jsonl'}; logs: {args.out / 'data' / 'logs'}")
    return 0 if result.valid else 1


if __name__ == "__main__":
    sys.exit(main())
