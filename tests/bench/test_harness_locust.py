"""bench/locustfile.py loads for the gRPC users without a Kafka client (issue 10: after
``pip install -e '.[bench]'`` the gRPC locust command stopped at the confluent_kafka import)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

# confluent_kafka made unimportable (None in sys.modules), as on a machine without it.
PROBE = """
import sys
sys.modules["confluent_kafka"] = None
import locust  # monkey-patches like the locust command does before loading the file
import importlib.util
spec = importlib.util.spec_from_file_location("locustfile", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(module.StreamHouseGrpcUser.__name__, module.KafkaUser.__name__)
"""


def test_locustfile_loads_without_confluent_kafka() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "bench" / "locustfile.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["StreamHouseGrpcUser", "KafkaUser"]
