"""The fuzz targets of tests/fuzz/ stay runnable: their seeds pass, and a short fixed-seed run of
random mutations (the harness's fallback mutator, not coverage-guided) finds no crash.

The long, coverage-guided runs are a documented command (tests/fuzz/README.md); this keeps the
targets from rotting between them and puts a few thousand hostile inputs through CI.
"""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

FUZZ_DIR = Path(__file__).resolve().parents[1] / "fuzz"
TARGETS = ["fuzz_batch", "fuzz_frames", "fuzz_kafka"]
RUNS = 3000


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    sys.path.insert(0, str(FUZZ_DIR))
    try:
        module = importlib.import_module(request.param)
        yield module
        ring = getattr(module, "_ring", None)
        if ring is not None:
            ring.close()
            module._ring = None
    finally:
        sys.path.remove(str(FUZZ_DIR))


def test_target_survives_random_mutations(target: ModuleType) -> None:
    import harness

    seeds = target.seeds()
    assert seeds
    for seed in seeds:
        target.check(seed)
    rng = random.Random(f"{target.__name__}-ci")
    for _ in range(RUNS):
        data = harness.mutate(rng.choice(seeds), rng, seeds)
        try:
            target.check(data)
        except Exception as exc:
            raise AssertionError(f"{target.__name__} crashed on {data!r}") from exc
