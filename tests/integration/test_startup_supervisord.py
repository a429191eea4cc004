"""supervisord started directly (as the README says) on a data dir that does not exist yet
(it starts, serves Kafka and keeps run/ and logs/ private), `streamhouse status --json` on
it, and `streamhouse clean` reclaiming the rings of a killed stack."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from streamhouse.status import existing_rings, ring_shm_path
from streamhouse.testing import (
    PROGRAMS,
    SUPERVISORD_CONF,
    Stack,
    _alive,
    _descendants,
    kafka_metadata,
)


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamhouse.cli", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_direct_supervisord_status_and_clean(tmp_path: pathlib.Path) -> None:
    # As the README says, on a data dir that does not exist yet (nor does its parent).
    data = tmp_path / "fresh" / "data"
    assert not data.parent.exists()
    stack = Stack(data)
    # A ring of another stack (another data dir) must survive this stack's clean.
    other = Stack(tmp_path / "other")
    other_ring = ring_shm_path(other.settings, "produce")
    pathlib.Path(other_ring).write_bytes(b"\0" * 512)
    # A ring a killed stack left on this data dir (here: junk) is reclaimed by the next start.
    pathlib.Path(ring_shm_path(stack.settings, "produce")).write_bytes(b"\1" * 512)
    try:
        stack.proc = subprocess.Popen(
            ["supervisord", "-c", str(SUPERVISORD_CONF)],
            env=stack.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=tmp_path,
        )
        stack.wait_ready(90)
        for private in (data, data / "run", data / "logs"):
            assert private.stat().st_mode & 0o777 == 0o700, private
        assert (data / "logs" / "ingest.log").stat().st_size > 0
        # supervisord's own pid file and log are in the data dir, not at their stand-ins.
        assert stack.proc is not None
        assert (data / "run" / "supervisord.pid").read_text().strip() == str(stack.proc.pid)
        assert "supervisord started with pid" in (data / "logs" / "supervisord.log").read_text()
        assert not (SUPERVISORD_CONF.parent / ".supervisord-unused.pid").exists()
        # The Kafka port takes a record.
        producer = Producer({"bootstrap.servers": stack.kafka_address})
        delivered: list[object] = []
        producer.produce("fresh", b"one", on_delivery=lambda err, _m: delivered.append(err))
        assert producer.flush(60) == 0 and delivered == [None], delivered
        assert kafka_metadata(stack.kafka_address, "fresh").leaders == {0: 0}
        # A group that committed offset 0 of that one record lags by 1 (status lists it).
        consumer = Consumer({"bootstrap.servers": stack.kafka_address, "group.id": "behind"})
        consumer.commit(offsets=[TopicPartition("fresh", 0, 0)], asynchronous=False)
        consumer.close()

        out = cli(stack, "status", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        status = json.loads(out.stdout)
        assert status["supervisord"] == "running"
        assert set(status["programs"]) == set(PROGRAMS)
        for name, program in status["programs"].items():
            assert program["state"] == "RUNNING", (name, program)
            assert program["pid"] > 0 and program["restarts"] == 0
        assert status["object_store"]["ok"] and status["metadata"]["ok"]
        assert status["serving"] == {"status": "SERVING", "reason": None}
        assert status["metadata"]["slowest_groups"] == [{"group": "behind", "lag": 1}]
        assert "group behind: lag 1" in cli(stack, "status").stdout
        produce = status["rings"]["produce"]
        assert produce["capacity"] == int(stack.env["STREAMHOUSE_PRODUCE_RING_BYTES"])
        assert 0 <= produce["used"] <= produce["capacity"]

        via_streamctl = subprocess.run(
            [sys.executable, "-m", "streamhouse.streamctl", "status", "--json"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert via_streamctl.returncode == 0, via_streamctl.stderr
        assert set(json.loads(via_streamctl.stdout)["programs"]) == set(PROGRAMS)

        killed_pid = stack.kill("segmenter")
        stack.wait_restarted("segmenter", killed_pid)
        stack.wait_ready(60)
        status = json.loads(cli(stack, "status", "--json").stdout)
        assert status["programs"]["segmenter"]["pid"] != killed_pid
        assert status["programs"]["segmenter"]["restarts"] == 1

        refused = cli(stack, "clean")
        assert refused.returncode == 1 and "running" in refused.stderr

        # Killed outside `streamhouse up` and Stack (which would unlink the rings itself).
        assert stack.proc is not None
        victims = [stack.proc.pid, *_descendants(stack.proc.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stack.proc.wait(30)
        stack.proc = None
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in victims):
            assert time.monotonic() < deadline, f"{victims} still alive after SIGKILL"
            time.sleep(0.05)
        left = existing_rings(stack.settings)
        assert left, "a killed stack leaves its rings"
        cleaned = cli(stack, "clean")
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"removed {len(left)} ring(s)" in cleaned.stderr
        assert existing_rings(stack.settings) == []
        assert os.path.exists(other_ring)

        down = cli(stack, "status", "--json")
        assert down.returncode == 1
        assert json.loads(down.stdout)["supervisord"] == "not running"
    finally:
        stack.stop()
        pathlib.Path(other_ring).unlink(missing_ok=True)


def test_bare_supervisord_on_a_data_dir_it_cannot_make(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    stack = Stack(blocker / "data")
    done = subprocess.run(
        ["supervisord", "-c", str(SUPERVISORD_CONF)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"cannot make the data dir {blocker / 'data'}" in output, output
    assert "set STREAMHOUSE_DATA_DIR" in output and "Traceback" not in output, output
    assert not (SUPERVISORD_CONF.parent / ".supervisord-unused.pid").exists()
