"""The nemesis checker on handcrafted histories: each anomaly is built once and must be counted,
and a clean history must be valid."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from tests.faults.nemesis.checker import ANOMALIES, check
from tests.faults.nemesis.history import History, read_history


def send(process: str, type_: str, values: list[str], partition: int = 0, **kw: Any) -> dict:
    return {
        "process": process,
        "type": type_,
        "f": "send",
        "values": values,
        "partition": partition,
        **kw,
    }


def poll(process: str, records: list[list[Any]], f: str = "poll") -> dict:
    return {"process": process, "type": "ok", "f": f, "records": records}


def assign(process: str) -> dict:
    return {"process": process, "type": "ok", "f": "assign"}


def clean() -> list[dict]:
    """Two producers, one consumer, a final read: nothing wrong."""
    return [
        send("p0", "invoke", ["a", "b"]),
        send("p1", "invoke", ["c"], partition=1),
        send("p0", "ok", ["a", "b"], offsets=[0, 1]),
        send("p1", "ok", ["c"], partition=1, offsets=[0]),
        send("p1", "invoke", ["d"], partition=1),
        send("p1", "info", ["d"], partition=1, error="timed out"),  # unknown: may appear or not
        send("p0", "invoke", ["x"]),
        send("p0", "fail", ["x"], error="INVALID_ARGUMENT"),
        assign("c0"),
        poll("c0", [[0, 0, "a"], [1, 0, "c"]]),
        poll("c0", [[0, 1, "b"], [1, 1, "d"]]),
        assign("c0"),  # a rebalance: reading again from the committed offset is fine
        poll("c0", [[0, 1, "b"]]),
        assign("final"),
        poll("final", [[0, 0, "a"], [0, 1, "b"]], f="read"),
        assign("final"),
        poll("final", [[1, 0, "c"], [1, 1, "d"]], f="read"),
    ]


def counts(history: list[dict]) -> dict[str, int]:
    verdict = check(history)
    return {name: getattr(verdict, name) for name in ANOMALIES}


def test_a_clean_history_is_valid() -> None:
    verdict = check(clean())
    assert verdict.valid, verdict.report()
    assert verdict.acknowledged == 3 and verdict.acknowledged_ops == 2
    assert verdict.sends_failed == 1 and verdict.sends_unknown == 1
    assert all(v == 0 for v in counts(clean()).values())
    assert "VALID" in verdict.report().splitlines()[-1]


def test_nothing_acknowledged_is_invalid() -> None:
    verdict = check([send("p0", "invoke", ["a"]), send("p0", "info", ["a"], error="timeout")])
    assert verdict.acknowledged == 0
    assert not verdict.valid
    assert "nothing was acknowledged" in verdict.report()


ANOMALOUS: dict[str, list[dict]] = {
    # acknowledged at 0/1, reads reached 0/2, "b" never read (a new assignment between the
    # reads, so the jump over offset 1 is not also a skip)
    "lost": [
        send("p", "invoke", ["a", "b", "c"]),
        send("p", "ok", ["a", "b", "c"], offsets=[0, 1, 2]),
        poll("final", [[0, 0, "a"]], f="read"),
        assign("final"),
        poll("final", [[0, 2, "c"]], f="read"),
    ],
    # acknowledged at 0/1, no read got that far
    "unseen": [
        send("p", "invoke", ["a", "b"]),
        send("p", "ok", ["a", "b"], offsets=[0, 1]),
        poll("final", [[0, 0, "a"]], f="read"),
    ],
    "duplicates": [
        send("p", "invoke", ["a"]),
        send("p", "ok", ["a"], offsets=[0]),
        poll("final", [[0, 0, "a"], [0, 1, "a"]], f="read"),
    ],
    "inconsistent_offsets": [
        send("p", "invoke", ["a"]),
        send("q", "invoke", ["b"]),
        send("p", "ok", ["a"], offsets=[0]),
        send("q", "info", ["b"], error="timeout"),
        poll("c0", [[0, 0, "a"]]),
        poll("c1", [[0, 0, "b"]]),
    ],
    "nonmonotonic": [
        send("p", "invoke", ["a", "b"]),
        send("p", "ok", ["a", "b"], offsets=[0, 1]),
        assign("c0"),
        poll("c0", [[0, 0, "a"], [0, 1, "b"]]),
        poll("c0", [[0, 1, "b"]]),  # no assignment in between: offsets went backwards
    ],
    "skipped": [
        send("p", "invoke", ["a", "b", "c"]),
        send("p", "ok", ["a", "b", "c"], offsets=[0, 1, 2]),
        assign("c0"),
        poll("c0", [[0, 0, "a"]]),
        poll("c0", [[0, 2, "c"]]),
        poll("c1", [[0, 1, "b"]]),  # the group as a whole saw offset 1
        poll("final", [[0, 0, "a"], [0, 1, "b"], [0, 2, "c"]], f="read"),
    ],
    # c0 read 0/1 and lost the partition; c1 was assigned it and started past 0/2
    "group_skipped": [
        send("p", "invoke", ["a", "b", "c", "d"]),
        send("p", "ok", ["a", "b", "c", "d"], offsets=[0, 1, 2, 3]),
        assign("c0"),
        poll("c0", [[0, 0, "a"], [0, 1, "b"]]),
        assign("c1"),
        poll("c1", [[0, 3, "d"]]),
        poll("final", [[0, 0, "a"], [0, 1, "b"], [0, 2, "c"], [0, 3, "d"]], f="read"),
    ],
    "failed_reads": [
        send("p", "invoke", ["a"]),
        send("p", "ok", ["a"], offsets=[0]),
        send("p", "invoke", ["bad"]),
        send("p", "fail", ["bad"], error="INVALID_ARGUMENT: record too large"),
        poll("final", [[0, 0, "a"], [0, 1, "bad"]], f="read"),
    ],
    "unknown_reads": [
        send("p", "invoke", ["a"]),
        send("p", "ok", ["a"], offsets=[0]),
        poll("final", [[0, 0, "a"], [0, 1, "ghost"]], f="read"),
    ],
}


@pytest.mark.parametrize("anomaly", ANOMALIES)
def test_each_anomaly_is_counted(anomaly: str) -> None:
    """Each handcrafted history has exactly its own anomaly (and an acknowledged write)."""
    verdict = check(ANOMALOUS[anomaly])
    found = {name: n for name, n in counts(ANOMALOUS[anomaly]).items() if n}
    assert found == {anomaly: 1}, verdict.report()
    assert not verdict.valid
    assert verdict.acknowledged > 0
    assert f"{anomaly}: 1" in verdict.report()
    assert verdict.examples[anomaly], "an example names the values involved"


def test_an_acknowledgement_without_offset_must_still_be_read() -> None:
    history = [
        send("p", "invoke", ["a", "b"]),
        send("p", "ok", ["b"], offsets=[None]),  # implicitly acknowledged by a later batch
        send("p", "ok", ["a"], offsets=[0]),
        poll("final", [[0, 0, "a"], [0, 1, "b"]], f="read"),
    ]
    verdict = check(history)
    assert verdict.valid, verdict.report()
    assert verdict.acknowledged_without_offset == 1
    assert counts(history[:3] + [poll("final", [[0, 0, "a"]], f="read")])["lost"] == 1
    assert counts(history[:3])["unseen"] == 2
    moved = history[:3] + [poll("final", [[0, 0, "a"], [1, 0, "b"]], f="read")]
    assert counts(moved)["inconsistent_offsets"] == 1


def test_an_anomaly_added_to_a_clean_history_is_counted() -> None:
    history = clean() + [poll("c1", [[0, 5, "x"]])]  # reads the value whose send failed
    assert counts(history)["failed_reads"] == 1


def test_history_file_round_trip(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "history.jsonl"
    history = History(path)
    history.record("p0", "invoke", "send", values=["a"], partition=0)
    history.record("p0", "ok", "send", values=["a"], partition=0, offsets=[0])
    history.record("final", "ok", "read", records=[[0, 0, "a"]])
    history.close()
    with open(path, "a") as fh:
        fh.write('{"t": 1.0, "process": "p0", "ty')  # a run killed mid-line
    ops = list(read_history(path))
    assert [op["type"] for op in ops] == ["invoke", "ok", "ok"]
    assert ops[0]["t"] <= ops[1]["t"]
    assert check(ops).valid
    assert history.counts == {"send:invoke": 1, "send:ok": 1, "read:ok": 1}
    json.loads(path.read_text().splitlines()[0])
