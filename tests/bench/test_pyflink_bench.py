"""bench/nexmark/pyflink_bench.py without PyFlink (CI does not install it): the event files
it writes hold exactly the generator's JSON values, one per line; its arguments are checked
at the edge; its changelog check folds retractions and finds differences; the Flink DDL
declares the generator's fields; a worker without PyFlink fails saying what to install."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from nexmark import pyflink_bench  # noqa: E402
from nexmark.flink_sql import COLUMNS, FLINK_QUERIES, create_table_sql  # noqa: E402
from nexmark.generator import (  # noqa: E402
    AUCTION_SCHEMA,
    BID_SCHEMA,
    PERSON_SCHEMA,
    Generator,
)
from nexmark.model import ModelConfig  # noqa: E402
from nexmark.queries import QUERIES  # noqa: E402

EVENTS = 120_000  # spans three generator chunks, the last one partial
RATE = 1_000
SCHEMAS = {"person": PERSON_SCHEMA, "auction": AUCTION_SCHEMA, "bid": BID_SCHEMA}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("events")
    return folder, pyflink_bench.write_event_files(folder, EVENTS, RATE, seed=5, keep_tables=True)


def _expected_tables() -> dict[str, pa.Table]:
    chunks = list(Generator(5, ModelConfig(rate=RATE)).chunks(EVENTS))
    return {k: pa.concat_tables([getattr(c, k) for c in chunks]) for k in SCHEMAS}


def test_files_hold_the_events_as_json_lines(written: tuple[Path, dict]) -> None:
    folder, info = written
    expected = _expected_tables()
    assert sum(info["counts"].values()) == EVENTS
    for kind, schema in SCHEMAS.items():
        raw = (folder / kind / pyflink_bench.PART_FILE).read_bytes()
        assert raw.endswith(b"\n")
        lines = raw.split(b"\n")[:-1]
        table = expected[kind]
        assert len(lines) == table.num_rows == info["counts"][kind]
        assert info["bytes"][kind] == len(raw)
        # Each line parses as JSON into the event, field for field, in schema order.
        for index in (0, len(lines) // 2, len(lines) - 1):
            value = json.loads(lines[index])
            assert list(value) == schema.names
            row = table.slice(index, 1).to_pylist()[0]
            for name in schema.names:
                want = row[name]
                if pa.types.is_timestamp(schema.field(name).type):
                    want = want.strftime("%Y-%m-%d %H:%M:%S.") + f"{want.microsecond // 1000:03d}"
                assert value[name] == want, (kind, index, name)
        # Event time never decreases within a file (the watermark drops nothing).
        times = pc.cast(table.column("dateTime"), pa.int64())
        assert pc.all(pc.greater_equal(times[1:], times[:-1])).as_py()
        assert (folder / "empty" / kind).is_dir()
        assert not list((folder / "empty" / kind).iterdir())
    assert info["tables"]["bid"].equals(expected["bid"])


def test_arguments_default_to_the_end_to_end_run_and_are_checked() -> None:
    args = pyflink_bench.parse_args([])
    assert (args.events, args.rate, args.seed) == (1_000_000, 10_000, 0)
    assert args.queries == ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"]
    args = pyflink_bench.parse_args(["--events", "50_000", "--queries", "q2, q7"])
    assert (args.events, args.queries) == (50_000, ["q2", "q7"])
    for bad in (["--events", "0"], ["--queries", "q6"], ["--queries", ","], ["--rate", "x"]):
        with pytest.raises(SystemExit):
            pyflink_bench.parse_args(bad)


def test_changelog_check_folds_retractions(written: tuple[Path, dict]) -> None:
    tables = written[1]["tables"]
    bids = tables["bid"]
    # q2 computed here with numpy: the bids of auctions divisible by 123.
    auctions = bids.column("auction").to_numpy()
    keep = bids.filter(pa.array(auctions % 123 == 0))
    rows: list[list] = [
        ["+I", a, p]
        for a, p in zip(
            keep.column("auction").to_pylist(), keep.column("price").to_pylist(), strict=True
        )
    ]
    assert rows, "the input has bids of auctions divisible by 123"
    assert pyflink_bench.check_rows("q2", rows, tables) == f"ok ({len(rows)} rows)"
    # Rows added, updated and taken back fold away; the result is the same.
    churn = rows + [["+I", 123, -1], ["-U", 123, -1], ["+U", 123, -2], ["-D", 123, -2]]
    assert pyflink_bench.check_rows("q2", churn, tables).startswith("ok")
    assert pyflink_bench.check_rows("q2", rows[1:], tables).startswith("MISMATCH")
    assert pyflink_bench.check_rows("q2", rows + [["+I", 1, 1]], tables).startswith("MISMATCH")
    assert pyflink_bench.check_rows("q2", [["-D", 0, 0]], tables).startswith("MISMATCH")


def test_flink_tables_declare_the_generator_fields() -> None:
    for kind, schema in SCHEMAS.items():
        assert [name for name, _type in COLUMNS[kind]] == schema.names
        ddl = create_table_sql(kind, "/data/it's")
        assert "'path' = '/data/it''s'" in ddl
        assert "WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND" in ddl
        for name, _type in COLUMNS[kind]:
            assert f"`{name}` " in ddl
    with pytest.raises(ValueError, match="no Nexmark table"):
        create_table_sql("bids", "/x")
    assert set(FLINK_QUERIES) == set(QUERIES)


def test_worker_without_pyflink_says_what_to_install(tmp_path: Path) -> None:
    if importlib.util.find_spec("pyflink") is not None:
        pytest.fail("this test needs an interpreter without PyFlink (CI does not install it)")
    with pytest.raises(RuntimeError, match="pip install apache-flink"):
        pyflink_bench.run_pyflink(tmp_path, ["q0"], sys.executable, check=False)


def test_report_puts_the_figures_side_by_side() -> None:
    flink = {
        "queries": {
            "q0": {
                "startup": {"cpu_s": 1.0, "wall_s": 2.0, "job_ms": 500},
                "run": {"cpu_s": 3.0, "wall_s": 4.0, "job_ms": 2500},
            },
            "q4": {"error": "TableException: boom"},
        }
    }
    streamhouse = {"q0": {"events_per_core_s": 123_456}}
    report = pyflink_bench._report_rows(1_000_000, flink, streamhouse, {})
    assert report[0]["pyflink_events_per_core_s"] == 500_000  # 1M events / (3 - 1) CPU s
    assert report[0]["pyflink_events_per_wall_s"] == 400_000  # the job's 2.5 s
    assert report[0]["streamhouse_events_per_core_s"] == 123_456
    assert report[1]["error"] == "TableException: boom"
    text = pyflink_bench.format_report(report, "2.3.0")
    assert "500,000" in text and "123,456" in text and "PyFlink failed: TableException" in text
