"""console/server.py's routes on a real aiohttp server (127.0.0.1, free port) over fake sources:
status codes and messages for bad parameters, failing sources and unexpected failures, and the
query form never passing a writing statement on to the sql service."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from console.history import History
from console.server import allowed_hosts, build_app
from console.sources import SourceError
from streamhouse.client import Record
from streamhouse.proto import streamhouse_pb2 as pb


class FakeSources:
    """What StackSources answers, from memory; `down` makes every call fail as ingest down."""

    def __init__(self) -> None:
        self.down = False
        self.explode = False
        self.executed: list[str] = []
        self.topic_obj = pb.Topic(
            name="orders",
            partitions=1,
            partition_info=[pb.PartitionInfo(partition=0, log_start_offset=2, high_watermark=9)],
        )

    def _check(self) -> None:
        if self.down:
            raise SourceError("ListTopics from the gRPC API at 127.0.0.1:1 failed: ingest down")

    async def topics(self) -> list[pb.Topic]:
        self._check()
        return [self.topic_obj]

    async def topic(self, name: str) -> pb.Topic:
        self._check()
        if name != "orders":
            raise SourceError(f"topic {name!r} does not exist")
        return self.topic_obj

    async def storage(self) -> pb.DescribeStorageResponse:
        if self.explode:
            raise RuntimeError("storage exploded")
        raise SourceError("DescribeStorage failed: metadata unavailable")

    async def records(self, topic: str, partition: int, offset: int, limit: int) -> Any:
        self._check()
        found = [Record(value=f"v{o}".encode(), offset=o) for o in range(offset, 9)][:limit]
        return found, offset + len(found), 9, 2

    async def groups(self, high_watermarks: dict[tuple[str, int], int]) -> Any:
        self._check()
        return [], ["the groups coordinated by 127.0.0.1:2 are missing: refused"]

    async def queries(self) -> list[Any]:
        return []

    async def execute(self, statement: str) -> Any:
        self.executed.append(statement)
        raise SourceError("no such table")


def run(check: Any, history: History | None = None) -> None:
    async def main() -> None:
        sources = FakeSources()
        app = build_app(sources, history or History())  # type: ignore[arg-type]
        client = TestClient(TestServer(app, host="127.0.0.1"))  # type: ignore[arg-type]
        await client.start_server()
        try:
            await check(client, sources)
        finally:
            await client.close()

    asyncio.run(main())


def test_record_browser_parameters() -> None:
    async def check(client: TestClient, sources: FakeSources) -> None:
        ok = await client.get("/topics/orders/partitions/0/records")
        assert ok.status == 200
        text = await ok.text()
        assert "v2" in text and "v1" not in text  # from the log start by default
        limited = await (
            await client.get("/topics/orders/partitions/0/records?offset=4&limit=2")
        ).text()
        assert "v4" in limited and "v5" in limited and "v6" not in limited
        for query, status, message in [
            ("offset=abc", 400, "offset=&#x27;abc&#x27; is not a whole number"),
            ("limit=0", 400, "limit=0 is out of range; give 1 to 500"),
            ("limit=501", 400, "limit=501 is out of range"),
            ("format=yaml", 400, "give one of text, json, hex"),
        ]:
            response = await client.get(f"/topics/orders/partitions/0/records?{query}")
            assert response.status == status, query
            assert message in await response.text(), query
        missing = await client.get("/topics/nope/partitions/0/records")
        assert missing.status == 404 and "does not exist" in await missing.text()
        bad = await client.get("/topics/orders/partitions/x/records")
        assert bad.status == 400 and "the partition must be a number" in await bad.text()

    run(check)


def test_failing_sources_and_failing_pages() -> None:
    async def check(client: TestClient, sources: FakeSources) -> None:
        home = await client.get("/", allow_redirects=False)
        assert home.status == 302 and home.headers["Location"] == "/topics"
        assert await (await client.get("/healthz")).text() == "ok"
        storage = await client.get("/storage")
        assert storage.status == 503 and "metadata unavailable" in await storage.text()
        # storage failing in an unexpected way: a 500 page naming it, the console keeps serving
        sources.explode = True
        broken = await client.get("/storage")
        assert broken.status == 500
        assert "RuntimeError: storage exploded" in await broken.text()
        partial = await client.get("/groups")
        assert partial.status == 200
        assert "the groups coordinated by 127.0.0.1:2 are missing" in await partial.text()
        sources.down = True
        for path in ("/topics", "/groups"):
            response = await client.get(path)
            assert response.status == 503, path
            assert "ingest down" in await response.text()

    run(check)


def test_query_form_passes_on_reads_only() -> None:
    async def check(client: TestClient, sources: FakeSources) -> None:
        refused = await client.post("/queries", data={"sql": "DROP QUERY top"})
        assert refused.status == 400
        assert "the console only reads" in await refused.text()
        assert sources.executed == []
        failed = await client.post("/queries", data={"sql": "SELECT * FROM nope;"})
        assert failed.status == 400 and "no such table" in await failed.text()
        assert sources.executed == ["SELECT * FROM nope"]

    run(check)


def test_charts_show_the_busiest_topics() -> None:
    history = History()
    for step in range(3):  # topic tN grows N records per second
        history.add(1000.0 + step, {f"records:t{n}": float(n * step) for n in range(10)})

    async def check(client: TestClient, sources: FakeSources) -> None:
        sources.topic_obj = pb.Topic(name="t0", partitions=1)
        sources.topics = lambda: _topics([f"t{n}" for n in range(10)])  # type: ignore[method-assign]
        page = await (await client.get("/topics")).text()
        assert "records/s per topic (the 8 busiest of 10)" in page
        assert "t9 (now 9)" in page and "t2 (now 2)" in page
        assert "t1 (now" not in page and "t0 (now" not in page

    run(check, history)


async def _topics(names: list[str]) -> list[pb.Topic]:
    return [pb.Topic(name=n, partitions=1) for n in names]


def test_other_host_names_are_refused() -> None:
    """A page elsewhere cannot read the console by DNS rebinding: Host must name it."""

    async def check(client: TestClient, sources: FakeSources) -> None:
        port = client.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            ok = await client.get("/healthz", headers={"Host": host})
            assert ok.status == 200, host
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
            refused = await client.get("/topics", headers={"Host": host})
            assert refused.status == 403, host
            assert "answers requests for 127.0.0.1, ::1, localhost only" in await refused.text()

    run(check)


def test_allowed_hosts() -> None:
    assert allowed_hosts("0.0.0.0:8080") is None
    assert allowed_hosts("[::]:8080") is None
    assert allowed_hosts("10.1.2.3:8080") == {"127.0.0.1", "localhost", "::1", "10.1.2.3"}
