"""A Jepsen-style nemesis and checker for StreamHouse.

A run starts SeaweedFS behind a latency proxy and a whole stack on it, runs a workload
(idempotent Kafka producers with acks=all, idempotent gRPC producers, a Kafka consumer group
that commits) while a seeded nemesis injects faults at random moments (kill -9 and
SIGSTOP/SIGCONT of each process, SeaweedFS killed, paused and slowed, the whole stack
restarted or killed), heals everything, reads every partition in full, and checks the recorded
history for lost writes, duplicates, inconsistent offsets, non-monotonic or skipping consumers
and reads of failed or never-sent values.

    python3 -m tests.faults.nemesis --duration 600 --seed 7 --out /tmp/nemesis-run

runs it for ten minutes (from the repository root), prints every count and exits 1 on any
anomaly or if nothing was acknowledged; `--check OUT/history.jsonl` re-checks a history.
`tests/faults/test_nemesis.py` is the short run in the test suite.

Modules: `history` (the recorded operations, JSON lines), `checker` (pure: history -> counts),
`workload`, `nemesis` (the fault kinds), `servers` (restartable SeaweedFS, latency proxy),
`run` (one whole run).
"""
