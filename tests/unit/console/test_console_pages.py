"""console/pages.py: each page built from plain data, with untrusted text escaped."""

from __future__ import annotations

import html.parser

import pyarrow as pa
import pytest

from console import pages
from console.groups import GroupMember, GroupView, PartitionLag
from streamhouse import cost
from streamhouse.client import Record
from streamhouse.proto import sql_pb2
from streamhouse.proto import streamhouse_pb2 as pb

EVIL = "<script>alert(1)</script>"


class TextOf(html.parser.HTMLParser):
    """The page's visible text and whether any <script> element appears."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.scripts = 0
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())


def topic(name: str, offsets: list[tuple[int, int]]) -> pb.Topic:
    return pb.Topic(
        name=name,
        partitions=len(offsets),
        topic_id="ab" * 16,
        config={"cleanup.policy": "delete"},
        partition_info=[
            pb.PartitionInfo(partition=i, log_start_offset=s, high_watermark=h)
            for i, (s, h) in enumerate(offsets)
        ],
    )


def test_topics_page() -> None:
    page = pages.topics_page(
        [topic("orders", [(0, 15), (2, 15)]), topic(EVIL, [(0, 0)])],
        {"orders": 5 * 1024},
        {"orders": (12.5, 2048.0)},
        ["<svg></svg>"],
    )
    parsed = TextOf(page)
    assert parsed.scripts == 0
    assert "orders 2 p0: 0–15 p1: 2–15 28 5.0 KiB 12.5 2.0 KiB/s" in parsed.text
    assert EVIL in parsed.text  # shown as text
    assert 'href="/topics/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in page
    assert '<meta http-equiv="refresh"' in page


def test_topics_page_empty_and_failing() -> None:
    assert "No topics yet." in pages.topics_page([], {}, {}, [])
    page = pages.topics_page([], None, {}, [], error=f"ingest down {EVIL}")
    assert TextOf(page).scripts == 0 and 'id="error"' in page


def test_topic_page() -> None:
    storage = pb.TopicStorage(name="orders", bytes_stored=2048, bytes_live=1024, objects=3)
    text = TextOf(pages.topic_page(topic("orders", [(0, 7)]), storage, (None, None), [])).text
    assert "0 0 7 7 browse records" in text
    assert "stored 2.0 KiB" in text and "objects 3" in text and "cleanup.policy delete" in text


def test_records_page_formats() -> None:
    records = [
        Record(key=b"k1", value=b'{"n": 1}', headers=[("h", b"v"), (EVIL, None)], offset=3,
               timestamp_ms=1_700_000_000_000),
        Record(key=None, value=EVIL.encode(), offset=4, timestamp_ms=1_700_000_000_001),
    ]  # fmt: skip
    page = pages.records_page("orders", 0, 3, 2, "json", records, 5, 9, 0)
    parsed = TextOf(page)
    assert parsed.scripts == 0
    assert "3 2023-11-14T22:13:20.000Z" in parsed.text
    assert '{ "n": 1 }' in parsed.text and "null" in parsed.text
    assert 'id="next"' in page and "offset=5&amp;limit=2&amp;format=json" in page
    hexed = TextOf(pages.records_page("orders", 0, 3, 2, "hex", records[:1], 4, 4, 0)).text
    assert "00000000 6b 31" in hexed and 'id="next"' not in hexed


def test_records_page_nothing_there() -> None:
    page = pages.records_page("orders", 0, 9, 20, "text", [], 9, 9, 0)
    assert "No records from this offset" in page


def test_groups_page() -> None:
    group = GroupView(
        group_id="billing",
        state="Stable",
        protocol_type="consumer",
        protocol="range",
        coordinator="127.0.0.1:9092",
        members=[GroupMember("m-1", EVIL, "/127.0.0.1", {"orders": [0, 1]})],
        partitions=[
            PartitionLag("orders", 0, 10, 15, 5),
            PartitionLag("orders", 1, -1, 4, None),
        ],
    )
    page = pages.groups_page([group], ["<svg></svg>"], None)
    parsed = TextOf(page)
    assert parsed.scripts == 0
    assert "billing Stable 1 5 127.0.0.1:9092" in parsed.text
    assert "orders: 0, 1" in parsed.text
    assert "orders 0 10 15 5 orders 1 - 4 -" in parsed.text
    assert "No consumer groups yet." in pages.groups_page([], [], None)


def test_storage_page_shows_the_cost() -> None:
    storage = pb.DescribeStorageResponse(
        objects=4,
        bytes_stored=3 * 1024**3,
        bytes_live=2 * 1024**3,
        dead_objects=1,
        dead_bytes=1024**3,
        segments_created_last_hour=100,
        bytes_created_last_hour=1024**3,
        topics=[pb.TopicStorage(name="orders", objects=4, bytes_stored=3 * 1024**3)],
    )
    usage = cost.Usage(
        bytes_stored=storage.bytes_stored,
        dead_bytes=storage.dead_bytes,
        bytes_live=storage.bytes_live,
        objects_created_last_hour=100,
        bytes_written_per_hour=1024**3,
    )
    estimate = cost.estimate(usage)
    text = TextOf(pages.storage_page(storage, estimate)).text
    # 4 GiB at $0.023 + 73,000 PUTs at $0.005 per 1,000
    assert estimate.streamhouse_monthly_usd == pytest.approx(4 * 0.023 + 73 * 0.005)
    assert f"StreamHouse on S3: ${estimate.streamhouse_monthly_usd:,.2f} a month" in text
    assert "live objects 4" in text and "dead bytes 1.0 GiB" in text
    assert "% less" in text


def test_queries_page() -> None:
    q = sql_pb2.QueryStatus(name="top", kind="view", sql=f"SELECT '{EVIL}'", lag=7,
                            rows_in=100, rows_out=3)  # fmt: skip
    q.runner.state = "running"
    table = pa.table({"auction": [1, 2], "name": [EVIL, None]})
    page = pages.queries_page([q], "SELECT 1", table, None, None)
    parsed = TextOf(page)
    assert parsed.scripts == 0
    assert "top view running 7 100 3" in parsed.text
    assert "2 rows" in parsed.text and f"1 {EVIL} 2 NULL" in parsed.text
    refused = pages.queries_page(None, "DROP x", None, None, "the console only reads")
    assert 'id="error"' in refused and "DROP x</textarea>" in refused
