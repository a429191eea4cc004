"""A short Jepsen-style nemesis run (every fault kind at least once, fixed seed) against a whole
stack on SeaweedFS: idempotent Kafka and gRPC producers and a consumer group, every operation
recorded, then the checker. Every anomaly count must be zero and plenty must be acknowledged.

The long run is one command: `python3 -m tests.faults.nemesis --duration 600 --seed 7 --out DIR`
(see tests/faults/nemesis/__init__.py).
"""

from __future__ import annotations

import pathlib

import pytest

from tests.faults.nemesis.checker import ANOMALIES
from tests.faults.nemesis.nemesis import KINDS
from tests.faults.nemesis.run import RunConfig, run


@pytest.mark.timeout(600)
def test_short_nemesis_run_has_no_anomalies(tmp_path: pathlib.Path) -> None:
    config = RunConfig(duration=45, seed=11, interval=2.0, max_pause=3.0)
    result = run(tmp_path / "nemesis", config, log=False)
    report = result.report()
    assert set(result.faults) == set(KINDS), report
    assert not result.problems, report
    verdict = result.verdict
    assert {name: getattr(verdict, name) for name in ANOMALIES} == dict.fromkeys(ANOMALIES, 0), (
        report
    )
    assert verdict.acknowledged >= 2000, report
    # The consumer group read, and the refused (poisoned) batches were really refused.
    assert result.polled > 0, report
    assert result.poisoned > 0 and verdict.sends_failed > 0, report
    assert sum(result.watermarks.values()) >= verdict.acknowledged, report
    assert verdict.valid, report
