"""The console's HTTP server (aiohttp on uvloop): routes, query parameters, and the sampler.

Routes (all GET except the query form's POST; every page is whole HTML from console/pages.py):

    /                                           -> /topics
    /topics                                     topics, offsets, sizes, throughput + charts
    /topics/{topic}                             one topic: partitions, storage, config, chart
    /topics/{topic}/partitions/{p}/records      record browser: ?offset=N&limit=N&format=F
    /groups                                     consumer groups: members, lag + lag chart
    /storage                                    storage totals, per topic, monthly cost
    /queries                                    continuous queries; POST sql=... runs a read
    /healthz                                    "ok" (the console itself is up)

Bad parameters are answered 400 with a page saying what to give; a source that fails (ingest or
the sql service down) 503 with its message. The console listens on `console_listen`
(127.0.0.1:8080 by default) and writes nothing anywhere.

Access: bound to loopback, whoever can open a connection on this machine sees the pages. Bound
elsewhere, set `console_http_password` (and `console_http_user`, default ``admin``): every
page but /healthz then asks for HTTP Basic credentials (401 with ``WWW-Authenticate`` without
them; compared in constant time). Basic sends the password in every request: put TLS in front
(a reverse proxy) when the console is reached over a network. The console logs a warning when
bound beyond loopback without a password. What the console itself may read from the stack is
its own principal's business (console/sources.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from console import pages
from console.adhoc import StatementRefused, read_only_statement
from console.history import History
from console.payload import FORMATS
from console.sampler import Sampler
from console.sources import SourceError, StackSources
from console.svg import Series, line_chart
from streamhouse import cost
from streamhouse.config import Settings
from streamhouse.process import check_ports_free, describe_failure, spawn

__all__ = ["MAX_RECORDS", "build_app", "main"]

log = logging.getLogger("console")

MAX_RECORDS = 500
DEFAULT_RECORDS = 20
HISTORY_S = 3600.0
CHART_SERIES = 8  # lines per chart: the busiest topics, the most lagging groups

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


class BadRequest(ValueError):
    pass


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not a whole number; give {low} to {high}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}={value} is out of range; give {low} to {high}")
    return value


class Console:
    """Page handlers over the sources and the sampled history."""

    def __init__(self, sources: StackSources, history: History) -> None:
        self.sources = sources
        self.history = history

    # -- charts -----------------------------------------------------------------------------

    def _rates(self, topic: str) -> tuple[float | None, float | None]:
        return self.history.rate(f"records:{topic}"), self.history.rate(f"bytes:{topic}")

    def _busiest(self, kind: str, subjects: list[str], measure: str) -> list[str]:
        """At most CHART_SERIES of `subjects`, those with the highest rate (or latest value)
        first: a chart stays readable, and its page small, however many topics there are."""

        def weight(subject: str) -> float:
            name = f"{kind}:{subject}"
            value = self.history.rate(name) if measure == "rate" else self.history.latest(name)
            return value or 0.0

        return sorted(sorted(subjects), key=weight, reverse=True)[:CHART_SERIES]

    def _throughput_charts(self, names: list[str]) -> list[str]:
        topics = self._busiest("records", names, "rate")
        some = f" (the {len(topics)} busiest of {len(names)})" if len(topics) < len(names) else ""
        records = [Series(t, self.history.rate_points(f"records:{t}")) for t in topics]
        charts = [line_chart(records, title="records/s per topic" + some, unit="rec/s")]
        produced = [
            Series(t, [(at, v / 1024) for at, v in self.history.rate_points(f"bytes:{t}")])
            for t in topics
            if self.history.latest(f"bytes:{t}") is not None
        ]
        if produced:
            title = "KiB/s produced per topic" + some
            charts.append(line_chart(produced, title=title, unit="KiB/s"))
        return charts

    # -- pages ------------------------------------------------------------------------------

    async def topics(self, request: web.Request) -> web.Response:
        try:
            topics = await self.sources.topics()
        except SourceError as exc:
            return _html(pages.topics_page([], None, {}, [], str(exc)), 503)
        error = None
        stored: dict[str, int] | None
        try:
            storage = await self.sources.storage()
            stored = {t.name: t.bytes_stored for t in storage.topics}
        except SourceError as exc:
            stored, error = None, str(exc)
        names = [t.name for t in topics]
        rates = {name: self._rates(name) for name in names}
        charts = self._throughput_charts(names)
        return _html(pages.topics_page(topics, stored, rates, charts, error))

    async def topic(self, request: web.Request) -> web.Response:
        name = request.match_info["topic"]
        try:
            topic = await self.sources.topic(name)
        except SourceError as exc:
            return _html(pages.error_page(f"Topic {name}", "topics", str(exc)), 404)
        entry = None
        try:
            storage = await self.sources.storage()
            entry = next((t for t in storage.topics if t.name == name), None)
        except SourceError as exc:
            log.debug("no storage figures for the topic page: %s", exc)
        charts = self._throughput_charts([name])
        return _html(pages.topic_page(topic, entry, self._rates(name), charts))

    async def records(self, request: web.Request) -> web.Response:
        name = request.match_info["topic"]
        title = f"Records of {name}"
        try:
            partition = int(request.match_info["partition"])
            topic = await self.sources.topic(name)
        except ValueError:
            return _html(pages.error_page(title, "topics", "the partition must be a number"), 400)
        except SourceError as exc:
            return _html(pages.error_page(title, "topics", str(exc)), 404)
        info = {p.partition: p for p in topic.partition_info}
        if partition not in info:
            message = f"topic {name!r} has partitions 0 to {topic.partitions - 1}, not {partition}"
            return _html(pages.error_page(title, "topics", message), 404)
        fmt = request.query.get("format", "text")
        start = info[partition].log_start_offset
        try:
            if fmt not in FORMATS:
                raise BadRequest(f"format={fmt!r}: give one of {', '.join(FORMATS)}")
            offset = _int_param(request, "offset", start, 0, 2**63 - 1)
            limit = _int_param(request, "limit", DEFAULT_RECORDS, 1, MAX_RECORDS)
        except BadRequest as exc:
            page = pages.records_page(
                name, partition, start, DEFAULT_RECORDS, "text", [], None, None, None, str(exc)
            )
            return _html(page, 400)
        try:
            found, next_offset, hw, log_start = await self.sources.records(
                name, partition, offset, limit
            )
        except SourceError as exc:
            page = pages.records_page(
                name, partition, offset, limit, fmt, [], None, None, None, str(exc)
            )
            return _html(page, 503)
        page = pages.records_page(
            name, partition, offset, limit, fmt, found[:limit], next_offset, hw, log_start
        )
        return _html(page)

    async def groups(self, request: web.Request) -> web.Response:
        names = self._busiest("lag", self.history.names("lag"), "latest")
        charts = [
            line_chart(
                [Series(g, self.history.points(f"lag:{g}")) for g in names],
                title="total lag per group",
                unit="records",
            )
        ]
        try:
            topics = await self.sources.topics()
            high_watermarks = {
                (t.name, p.partition): p.high_watermark for t in topics for p in t.partition_info
            }
            groups, problems = await self.sources.groups(high_watermarks)
        except SourceError as exc:
            return _html(pages.groups_page([], charts, str(exc)), 503)
        return _html(pages.groups_page(groups, charts, "; ".join(problems) or None))

    async def storage(self, request: web.Request) -> web.Response:
        try:
            storage = await self.sources.storage()
        except SourceError as exc:
            return _html(pages.error_page("Storage", "storage", str(exc)), 503)
        usage = cost.Usage(
            bytes_stored=storage.bytes_stored,
            dead_bytes=storage.dead_bytes,
            bytes_live=storage.bytes_live,
            objects_created_last_hour=storage.segments_created_last_hour,
            bytes_written_per_hour=storage.bytes_created_last_hour,
        )
        return _html(pages.storage_page(storage, cost.estimate(usage)))

    async def queries(self, request: web.Request) -> web.Response:
        statement, result, message, error, status = "", None, None, None, 200
        if request.method == "POST":
            form = await request.post()
            statement = str(form.get("sql", ""))
            try:
                executed = await self.sources.execute(read_only_statement(statement))
            except StatementRefused as exc:
                error, status = str(exc), 400
            except SourceError as exc:
                error, status = str(exc), 400
            else:
                result, message = executed.table, executed.message
        queries, list_error = None, None
        try:
            queries = await self.sources.queries()
        except SourceError as exc:
            list_error = str(exc)
        page = pages.queries_page(queries, statement, result, message, error, list_error)
        return _html(page, status)


@web.middleware
async def _one_line_failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A page that fails unexpectedly is one log line and a 500 page naming the failure (no
    stack dump at INFO, as every process logs)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        cause = describe_failure(exc)
        log.error("page %s failed: %s", request.path, cause)
        message = f"this page failed: {cause}; see console.log and report it"
        return _html(pages.error_page("Error", "", message), 500)


_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def allowed_hosts(listen: str) -> frozenset[str] | None:
    """Host names a request may name in its Host header for a console bound to `listen`; None
    (any) when it is bound to every interface. Refusing other names keeps a web page from
    reading the console through DNS rebinding (its name resolving to 127.0.0.1)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host in ("0.0.0.0", "::", ""):
        return None
    return _LOOPBACK_NAMES | {host.lower()}


def _host_guard(allowed: frozenset[str] | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        named = (request.host or "").lower()
        if named.startswith("["):
            named = named[1:].partition("]")[0]
        else:
            named = named.rpartition(":")[0] if named.count(":") == 1 else named
        if allowed is not None and named not in allowed:
            return web.Response(
                status=403,
                text=f"the console answers requests for {', '.join(sorted(allowed))} only, not "
                f"{named!r}; open it by one of those names (or bind STREAMHOUSE_CONSOLE_LISTEN "
                "to 0.0.0.0 to allow any)",
            )
        return await handler(request)

    return guard


def _basic_auth(user: str, password: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"{user}:{password}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        given = b""
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                given = b""
        if not hmac.compare_digest(given, expected):
            return web.Response(
                status=401,
                text="the console asks for its user name and password (HTTP Basic; "
                "STREAMHOUSE_CONSOLE_HTTP_USER / _PASSWORD of the stack)",
                headers={"WWW-Authenticate": 'Basic realm="StreamHouse console", charset="UTF-8"'},
            )
        return await handler(request)

    return guard


def build_app(
    sources: StackSources,
    history: History,
    listen: str = "127.0.0.1:8080",
    http_credentials: tuple[str, str] | None = None,
) -> web.Application:
    """The console's routes; with `http_credentials` (user, password) every page but /healthz
    needs them as HTTP Basic credentials."""
    console = Console(sources, history)

    async def root(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/topics")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    middlewares = [_host_guard(allowed_hosts(listen))]
    if http_credentials is not None:
        middlewares.append(_basic_auth(*http_credentials))
    app = web.Application(middlewares=[*middlewares, _one_line_failures])
    app.router.add_get("/", root)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/topics", console.topics)
    app.router.add_get("/topics/{topic}", console.topic)
    app.router.add_get("/topics/{topic}/partitions/{partition}/records", console.records)
    app.router.add_get("/groups", console.groups)
    app.router.add_get("/storage", console.storage)
    app.router.add_get("/queries", console.queries)
    app.router.add_post("/queries", console.queries)
    return app


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """The console process: serve until `stop`."""
    check_ports_free(settings, ("console_listen",))
    sources = StackSources(settings)
    history = History(HISTORY_S)
    credentials = None
    if settings.console_http_password:
        credentials = (settings.console_http_user, settings.console_http_password)
    elif settings.console_listen.rpartition(":")[0].strip("[]").lower() not in _LOOPBACK_NAMES:
        log.warning(
            "the console listens on %s with no password: anyone who reaches it sees every "
            "page; set STREAMHOUSE_CONSOLE_HTTP_PASSWORD (README 'Security')",
            settings.console_listen,
        )
    app = build_app(sources, history, settings.console_listen, credentials)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = settings.console_listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    try:
        await site.start()
        log.info("web console on http://%s/", settings.console_listen)
        sampler = Sampler(sources, history, settings.console_sample_ms / 1000)
        task = spawn(sampler.run(), "console sampler")
        await stop.wait()
        task.cancel()
    finally:
        await runner.cleanup()
        sources.close()
