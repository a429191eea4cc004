"""streamhouse.cost: the monthly estimate on S3 and on replicated Kafka, computed by hand."""

from __future__ import annotations

from typing import Any

import pytest

from streamhouse.cost import (
    GIB,
    HOURS_PER_MONTH,
    Prices,
    Usage,
    estimate,
)


def usage(**overrides: float) -> Usage:
    values: dict[str, float] = {
        "bytes_stored": 100 * GIB,
        "dead_bytes": 0,
        "bytes_live": 80 * GIB,
        "objects_created_last_hour": 3600,
        "bytes_written_per_hour": GIB,
        "gets_per_second": 0.0,
    }
    values.update(overrides)
    return Usage(**values)  # type: ignore[arg-type]


def by_item(lines: list) -> dict[str, float]:  # type: ignore[type-arg]
    return {line.item: line.monthly_usd for line in lines}


def test_streamhouse_lines_at_list_prices() -> None:
    result = estimate(usage(dead_bytes=20 * GIB, gets_per_second=10.0))
    lines = by_item(result.streamhouse)
    # 120 GiB in the bucket (live objects + dead ones awaiting deletion) at $0.023.
    assert lines["S3 storage"] == pytest.approx(120 * 0.023)
    # One object a second: 3,600 an hour, 2,628,000 a month at $0.005 per 1,000.
    assert lines["S3 PUT"] == pytest.approx(3600 * HOURS_PER_MONTH / 1000 * 0.005)
    assert lines["S3 PUT"] == pytest.approx(13.14)
    # 10 GETs a second at $0.0004 per 1,000.
    assert lines["S3 GET"] == pytest.approx(10 * 3600 * HOURS_PER_MONTH / 1000 * 0.0004)
    assert result.streamhouse_monthly_usd == pytest.approx(sum(lines.values()))


def test_kafka_lines_replicate_live_bytes_and_writes() -> None:
    result = estimate(usage())
    lines = by_item(result.kafka)
    # 80 GiB live x 3 replicas on disks kept half full: 480 GiB of gp3 at $0.08.
    assert lines["block storage"] == pytest.approx(480 * 0.08)
    # 1 GiB written an hour, copied to 2 followers in other zones at $0.02 per GB.
    assert lines["cross-AZ replication"] == pytest.approx(HOURS_PER_MONTH * 2 * 0.02)
    assert result.kafka_monthly_usd == pytest.approx(38.4 + 29.2)
    expected = 100 * (1 - result.streamhouse_monthly_usd / result.kafka_monthly_usd)
    assert result.saving_percent == pytest.approx(expected)
    assert 0 < result.saving_percent < 100


def test_overridden_prices_and_assumptions() -> None:
    prices = Prices(
        s3_gb_month_usd=0.0125,
        s3_put_per_1000_usd=0.01,
        s3_get_per_1000_usd=0.001,
        block_gb_month_usd=0.1,
        cross_az_gb_usd=0.0,
        replication_factor=2,
        disk_fill=1.0,
    )
    result = estimate(usage(gets_per_second=1.0), prices)
    sh, kafka = by_item(result.streamhouse), by_item(result.kafka)
    assert sh["S3 storage"] == pytest.approx(100 * 0.0125)
    assert sh["S3 PUT"] == pytest.approx(3600 * HOURS_PER_MONTH / 1000 * 0.01)
    assert sh["S3 GET"] == pytest.approx(3600 * HOURS_PER_MONTH / 1000 * 0.001)
    assert kafka["block storage"] == pytest.approx(80 * 2 * 0.1)
    assert kafka["cross-AZ replication"] == 0


def test_nothing_stored_costs_nothing() -> None:
    result = estimate(
        Usage(
            bytes_stored=0,
            dead_bytes=0,
            bytes_live=0,
            objects_created_last_hour=0,
            bytes_written_per_hour=0,
        )
    )
    assert result.streamhouse_monthly_usd == result.kafka_monthly_usd == 0
    assert result.saving_percent is None


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("s3_gb_month_usd", -0.01, "must be >= 0"),
        ("cross_az_gb_usd", float("nan"), "must be >= 0"),
        ("replication_factor", 0, "at least 1"),
        ("disk_fill", 0.0, "(0, 1]"),
        ("disk_fill", 1.5, "(0, 1]"),
    ],
)
def test_bad_prices_are_refused(field: str, value: float, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("]", r"\]")):
        Prices(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"), [("bytes_live", -1), ("gets_per_second", -0.5), ("dead_bytes", -3)]
)
def test_bad_usage_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        usage(**{field: value})


# ------------------------------------------------------------ streamctl storage's rendering


def storage_response() -> Any:
    from streamhouse.proto import streamhouse_pb2 as pb

    return pb.DescribeStorageResponse(
        topics=[
            pb.TopicStorage(
                name="events",
                partitions=3,
                objects=12,
                bytes_stored=3 * 1024**2,
                bytes_live=2 * 1024**2,
                records=1000,
                oldest_offset=5,
                oldest_timestamp_ms=0,
                cleanup_policy="delete",
            ),
            pb.TopicStorage(
                name="users",
                partitions=1,
                objects=2,
                bytes_stored=5000,
                bytes_live=4000,
                records=10,
                oldest_timestamp_ms=-1,
                cleanup_policy="compact",
                dirty_bytes=2048,
            ),
        ],
        objects=13,
        bytes_stored=3 * 1024**2 + 5000,
        bytes_live=2 * 1024**2 + 4000,
        dead_objects=4,
        dead_bytes=10_000,
        small_objects=10,
        small_bytes=3000,
        segments_created_last_hour=3600,
        bytes_created_last_hour=GIB,
        small_object_bytes=8 * 1024**2,
        now_ms=86_400_000,
        answered_by="agent-1",
    )


def test_storage_table_rows_and_totals() -> None:
    from streamhouse.streamctl import human_bytes, storage_table, utc_time

    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 3 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "3.0 GiB",
    ]
    assert (utc_time(0), utc_time(-1)) == ("1970-01-01T00:00:00Z", "-")
    text = storage_table(storage_response())
    rows = {line.split()[0]: line.split() for line in text.splitlines()[:4]}
    assert rows["events"][1:5] == ["3", "12", "3.0", "MiB"]
    assert rows["events"][-2:] == ["delete", "-"]  # no backlog for a delete topic
    assert rows["users"][-3:] == ["compact", "2.0", "KiB"]
    assert rows["TOTAL"][1:3] == ["4", "13"]
    assert "dead objects awaiting deletion: 4 (9.8 KiB)" in text
    assert "small objects (< 8.0 MiB): 10" in text
    assert "answered by agent-1" in text


def test_storage_json_and_cost_json() -> None:
    import argparse

    from streamhouse.streamctl import cost_to_dict, storage_to_dict, storage_usage

    response = storage_response()
    shown = storage_to_dict(response)
    assert [t["name"] for t in shown["topics"]] == ["events", "users"]
    assert shown["total"]["dirty_bytes"] == 2048
    assert shown["total"]["dead_bytes"] == 10_000
    args = argparse.Namespace(written_bytes_per_hour=None, gets_per_second=1.0)
    used = storage_usage(response, args)
    assert used.bytes_written_per_hour == GIB and used.objects_created_last_hour == 3600
    cost = cost_to_dict(estimate(used))
    assert cost["streamhouse_monthly_usd"] == round(estimate(used).streamhouse_monthly_usd, 4)
    assert cost["prices"]["replication_factor"] == 3
    # An explicit write rate wins over the objects created in the last hour.
    args = argparse.Namespace(written_bytes_per_hour=5, gets_per_second=0.0)
    assert storage_usage(response, args).bytes_written_per_hour == 5


def test_cost_table_says_when_puts_dominate() -> None:
    from streamhouse.streamctl import cost_table

    # 72,000 objects an hour (a 50 ms flush) for 0.2 MB/s kept 7 days: PUTs are the bill.
    busy = estimate(
        usage(bytes_stored=120 * GIB, bytes_live=120 * GIB, objects_created_last_hour=72_000)
    )
    text = cost_table(busy)
    assert "PUTs are 99% of the bill" in text
    assert "a longer interval" in text
    quiet = estimate(usage(objects_created_last_hour=10))
    assert "of the bill" not in cost_table(quiet)
    assert "% lower" in cost_table(quiet)
