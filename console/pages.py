"""The console's pages as HTML strings, built from what the sources returned.

Sans-I/O: each `*_page` function takes plain data (protobuf messages of the gRPC and sql APIs,
console structs, numbers) and returns a whole HTML document; the server only sends it. Every
piece of text that comes from the stack (topic and group names, record bytes, client ids, query
text, SQL results, error messages) goes through `html.escape` (`_e`) or, for record bytes,
console/payload.py; URLs are built with `urllib.parse.quote`.

No JavaScript and nothing fetched: styles are inline in the page, charts are inline SVG
(console/svg.py). Overview pages reload themselves every `REFRESH_S` seconds
(`<meta http-equiv="refresh">`); the record browser and the query form do not.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from console.groups import GroupView
from console.payload import FORMATS, render
from streamhouse.cost import CostEstimate
from streamhouse.proto import streamhouse_pb2 as pb

__all__ = [
    "REFRESH_S",
    "error_page",
    "format_bytes",
    "groups_page",
    "queries_page",
    "records_page",
    "storage_page",
    "topic_page",
    "topics_page",
]

REFRESH_S = 10
MAX_RESULT_ROWS = 500
_PARTITIONS_INLINE = 8

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:8px 16px;display:flex;gap:20px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header a.active{color:#fff;font-weight:bold}
header .brand{font-weight:bold;color:#fff;margin-right:12px}
main{padding:12px 20px}h1{font-size:1.4em;margin:8px 0}h2{font-size:1.1em;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;margin:6px 0}
th,td{border:1px solid #d8dce2;padding:3px 8px;text-align:left;vertical-align:top;font-size:.9em}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{margin:0;white-space:pre-wrap;word-break:break-all;font-size:.85em}
.error{background:#fde8e8;border:1px solid #e0a0a0;padding:8px;margin:8px 0}
.notice{background:#eef6ea;border:1px solid #a8cf98;padding:8px;margin:8px 0}
.note{color:#777;font-size:.8em}.null{color:#999;font-style:italic}
.chart{background:#fff;border:1px solid #d8dce2;margin:6px 12px 6px 0}
.chart .plot{fill:#fbfcfd;stroke:#d8dce2}.chart .grid{stroke:#e6e9ee}
.chart text{font-size:11px;fill:#555}.chart .chart-title{font-size:13px;fill:#222}
form.inline{display:flex;gap:10px;align-items:end;margin:8px 0}
textarea{width:100%;max-width:900px;font-family:monospace}
.kv td:first-child{font-weight:bold}
"""

_NAV = (
    ("topics", "/topics", "Topics"),
    ("groups", "/groups", "Consumer groups"),
    ("storage", "/storage", "Storage"),
    ("queries", "/queries", "Queries"),
)


def _e(value: object) -> str:
    return html.escape(str(value))


def format_bytes(n: float) -> str:
    """1023 B, 1.5 KiB, 12.0 MiB, ..."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _rate(value: float | None, unit: str = "") -> str:
    if value is None:
        return '<span class="null">-</span>'
    text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return _e(text + unit)


def _iso_ms(ms: int) -> str:
    if ms <= 0:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _topic_url(name: str) -> str:
    return "/topics/" + quote(name, safe="")


def _records_url(topic: str, partition: int, **params: object) -> str:
    url = f"{_topic_url(topic)}/partitions/{partition}/records"
    return url + ("?" + urlencode(params) if params else "")


def layout(title: str, active: str, body: str, *, refresh: bool = False) -> str:
    nav = "".join(
        f'<a href="{href}"{" class=active" if key == active else ""}>{label}</a>'
        for key, href, label in _NAV
    )
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)} - StreamHouse</title>{meta}<style>{_CSS}</style></head>"
        f'<body><header><span class="brand">StreamHouse</span>{nav}</header>'
        f"<main><h1>{_e(title)}</h1>{body}</main></body></html>"
    )


def _error_box(error: str | None) -> str:
    return f'<div class="error" id="error">{_e(error)}</div>' if error else ""


def error_page(title: str, active: str, error: str) -> str:
    return layout(title, active, _error_box(error))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "") -> str:
    """A table whose cells are already HTML (no header row when every header is empty)."""
    ident = f' id="{_e(table_id)}"' if table_id else ""
    if not any(headers):  # a key-value table: no header row
        body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
        return f"<table{ident}><tbody>{body}</tbody></table>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: object, num: bool = False) -> str:
    return f'<td class="num">{_e(value)}</td>' if num else f"<td>{_e(value)}</td>"


# ---------------------------------------------------------------------------------- topics


def _offsets_inline(topic: pb.Topic) -> str:
    parts = sorted(topic.partition_info, key=lambda p: p.partition)
    shown = [
        f"p{p.partition}: {p.log_start_offset}&ndash;{p.high_watermark}"
        for p in parts[:_PARTITIONS_INLINE]
    ]
    if len(parts) > _PARTITIONS_INLINE:
        shown.append(f"+ {len(parts) - _PARTITIONS_INLINE} more")
    return "<br>".join(shown)


def topics_page(
    topics: Sequence[pb.Topic],
    stored: Mapping[str, int] | None,
    rates: Mapping[str, tuple[float | None, float | None]],
    charts: Sequence[str],
    error: str | None = None,
) -> str:
    """Every topic: partitions, offsets per partition, records, stored bytes (None: storage
    not known), records/s and bytes/s over the last minute; then the throughput charts."""
    rows = []
    for t in topics:
        records = sum(p.high_watermark - p.log_start_offset for p in t.partition_info)
        size = stored.get(t.name) if stored is not None else None
        per_s, bytes_s = rates.get(t.name, (None, None))
        rows.append(
            [
                f'<td><a href="{_topic_url(t.name)}">{_e(t.name)}</a></td>',
                _td(t.partitions, num=True),
                f"<td>{_offsets_inline(t)}</td>",
                _td(records, num=True),
                _td(format_bytes(size) if size is not None else "-", num=True),
                f'<td class="num">{_rate(per_s)}</td>',
                f'<td class="num">{_rate(bytes_s and bytes_s / 1024, " KiB/s")}</td>',
            ]
        )
    table = _table(
        [
            "topic",
            "partitions",
            "offsets (log start - high watermark)",
            "records",
            "stored",
            "records/s (1 min)",
            "bytes/s (1 min)",
        ],
        rows,
        "topics",
    )
    if not topics and not error:
        table = '<p id="no-topics">No topics yet.</p>'
    return layout(
        "Topics",
        "topics",
        _error_box(error) + table + "<h2>Throughput</h2>" + "".join(charts),
        refresh=True,
    )


def topic_page(
    topic: pb.Topic,
    storage: pb.TopicStorage | None,
    rate: tuple[float | None, float | None],
    charts: Sequence[str],
) -> str:
    """One topic: per-partition offsets with links to the record browser, storage, config."""
    rows = []
    for p in sorted(topic.partition_info, key=lambda p: p.partition):
        browse = _records_url(topic.name, p.partition, offset=p.log_start_offset)
        rows.append(
            [
                _td(p.partition, num=True),
                _td(p.log_start_offset, num=True),
                _td(p.high_watermark, num=True),
                _td(p.high_watermark - p.log_start_offset, num=True),
                f'<td><a href="{_e(browse)}">browse records</a></td>',
            ]
        )
    summary = [
        ("topic id", topic.topic_id),
        ("partitions", topic.partitions),
        ("records/s (1 min)", _rate(rate[0])),
        ("bytes/s (1 min)", _rate(rate[1] and rate[1] / 1024, " KiB/s")),
    ]
    if storage is not None:
        summary += [
            ("stored", format_bytes(storage.bytes_stored)),
            ("live block bytes", format_bytes(storage.bytes_live)),
            ("objects", storage.objects),
            ("cleanup policy", storage.cleanup_policy),
        ]
    summary_rows = [[f"<td>{_e(k)}</td>", f"<td>{v if k.endswith('(1 min)') else _e(v)}</td>"]
                    for k, v in summary]  # fmt: skip
    config_rows = [[_td(k), _td(v)] for k, v in sorted(topic.config.items())]
    body = (
        '<div class="kv">'
        + _table(["", ""], summary_rows, "summary")
        + "</div><h2>Partitions</h2>"
        + _table(["partition", "log start", "high watermark", "records", ""], rows, "partitions")
        + "<h2>Throughput</h2>"
        + "".join(charts)
        + "<h2>Config</h2>"
        + _table(["key", "value"], config_rows, "config")
    )
    return layout(f"Topic {topic.name}", "topics", body, refresh=True)


def _headers_html(headers: Sequence[tuple[str, bytes | None]], fmt: str) -> str:
    if not headers:
        return '<span class="null">none</span>'
    items = "".join(f"<div><b>{_e(k)}</b>: {render(v, fmt)}</div>" for k, v in headers)
    return items


def records_page(
    topic: str,
    partition: int,
    offset: int,
    limit: int,
    fmt: str,
    records: Sequence[Any],
    next_offset: int | None,
    high_watermark: int | None,
    log_start: int | None,
    error: str | None = None,
) -> str:
    """The record browser: a form (offset, how many, format) and the records from there.

    `records` are `streamhouse.client.Record`s (offset, timestamp_ms, key, value, headers)."""
    options = "".join(
        f'<option value="{f}"{" selected" if f == fmt else ""}>{f}</option>' for f in FORMATS
    )
    form = (
        f'<form class="inline" method="get" action="{_e(_records_url(topic, partition))}">'
        f'<label>offset<br><input name="offset" id="offset" value="{offset}" size="10"></label>'
        f'<label>how many<br><input name="limit" id="limit" value="{limit}" size="5"></label>'
        f'<label>show as<br><select name="format" id="format">{options}</select></label>'
        '<button type="submit" id="show">show</button></form>'
    )
    switch = " ".join(
        f'<a href="{_e(_records_url(topic, partition, offset=offset, limit=limit, format=f))}"'
        f' id="as-{f}">{f}</a>'
        for f in FORMATS
    )
    where = ""
    if high_watermark is not None and log_start is not None:
        where = (
            f"<p>Partition {partition}: log start {log_start}, high watermark "
            f"{high_watermark}. Show as: {switch}</p>"
        )
    rows = [
        [
            _td(r.offset, num=True),
            _td(_iso_ms(r.timestamp_ms)),
            f"<td>{render(r.key, fmt)}</td>",
            f"<td>{render(r.value, fmt)}</td>",
            f"<td>{_headers_html(r.headers, fmt)}</td>",
        ]
        for r in records
    ]
    table = _table(["offset", "timestamp", "key", "value", "headers"], rows, "records")
    if not records and not error:
        table = '<p id="no-records">No records from this offset (at the high watermark).</p>'
    more = ""
    if records and next_offset is not None and high_watermark is not None:
        if next_offset < high_watermark:
            url = _records_url(topic, partition, offset=next_offset, limit=limit, format=fmt)
            more = (
                f'<p><a href="{_e(url)}" id="next">next {limit} from offset {next_offset}</a></p>'
            )
    back = f'<p><a href="{_topic_url(topic)}">back to topic {_e(topic)}</a></p>'
    return layout(
        f"Records of {topic} partition {partition}",
        "topics",
        back + form + where + _error_box(error) + table + more,
    )


# ---------------------------------------------------------------------------------- groups


def _assignment(assignment: Mapping[str, Sequence[int]]) -> str:
    if not assignment:
        return '<span class="null">none</span>'
    return "<br>".join(
        f"{_e(topic)}: {', '.join(str(p) for p in parts)}"
        for topic, parts in sorted(assignment.items())
    )


def groups_page(groups: Sequence[GroupView], charts: Sequence[str], error: str | None) -> str:
    """Each group: state, members and their assignments, lag per partition and in total."""
    summary_rows = [
        [
            f'<td><a href="#group-{_e(quote(g.group_id, safe=""))}">{_e(g.group_id)}</a></td>',
            _td(g.state),
            _td(len(g.members), num=True),
            f'<td class="num" data-group="{_e(g.group_id)}">{g.total_lag}</td>',
            _td(g.coordinator),
        ]
        for g in groups
    ]
    parts = [_error_box(error)]
    if groups:
        headers = ["group", "state", "members", "total lag", "coordinator"]
        parts.append(_table(headers, summary_rows, "groups"))
    elif not error:
        parts.append('<p id="no-groups">No consumer groups yet.</p>')
    parts.append("<h2>Lag over time</h2>" + "".join(charts))
    for g in groups:
        members = [
            [
                _td(m.client_id),
                _td(m.client_host),
                f"<td>{_assignment(m.assignment)}</td>",
                _td(m.member_id),
            ]
            for m in g.members
        ]
        lags = [
            [
                _td(p.topic),
                _td(p.partition, num=True),
                _td(p.committed if p.committed >= 0 else "-", num=True),
                _td(p.high_watermark if p.high_watermark >= 0 else "-", num=True),
                _td(p.lag if p.lag is not None else "-", num=True),
            ]
            for p in g.partitions
        ]
        anchor = _e(quote(g.group_id, safe=""))
        parts.append(
            f'<section id="group-{anchor}"><h2>Group {_e(g.group_id)}</h2>'
            f"<p>state <b>{_e(g.state)}</b>, protocol {_e(g.protocol_type or '-')}"
            f"/{_e(g.protocol or '-')}, total lag <b>{g.total_lag}</b></p>"
            + _error_box(g.error)
            + (
                _table(["client id", "host", "assignment", "member id"], members)
                if members
                else "<p>No members.</p>"
            )
            + _table(["topic", "partition", "committed", "high watermark", "lag"], lags)
            + "</section>"
        )
    return layout("Consumer groups", "groups", "".join(parts), refresh=True)


# --------------------------------------------------------------------------------- storage


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"


def storage_page(storage: pb.DescribeStorageResponse, cost: CostEstimate) -> str:
    """Bytes stored, objects, live vs dead, per topic, and the monthly cost estimate."""
    totals = [
        ("live objects", f"{storage.objects}"),
        ("bytes stored (live objects)", format_bytes(storage.bytes_stored)),
        ("live block bytes", format_bytes(storage.bytes_live)),
        ("dead objects (awaiting deletion)", f"{storage.dead_objects}"),
        ("dead bytes", format_bytes(storage.dead_bytes)),
        (
            f"small objects (< {format_bytes(storage.small_object_bytes)})",
            f"{storage.small_objects} ({format_bytes(storage.small_bytes)})",
        ),
        ("objects created in the last hour", f"{storage.segments_created_last_hour}"),
        ("bytes created in the last hour", format_bytes(storage.bytes_created_last_hour)),
    ]
    total_rows = [[_td(k), _td(v)] for k, v in totals]
    topic_rows = [
        [
            f'<td><a href="{_topic_url(t.name)}">{_e(t.name)}</a></td>',
            _td(t.objects, num=True),
            _td(format_bytes(t.bytes_stored), num=True),
            _td(format_bytes(t.bytes_live), num=True),
            _td(t.records, num=True),
            _td(t.cleanup_policy),
        ]
        for t in storage.topics
    ]
    cost_rows = [
        [
            _td(side),
            _td(line.item),
            _td(f"{line.quantity:,.4f} {line.unit}"),
            _td(_usd(line.unit_price_usd)),
            _td(_usd(line.monthly_usd), num=True),
            _td(line.basis),
        ]
        for side, lines in (("StreamHouse", cost.streamhouse), ("Kafka", cost.kafka))
        for line in lines
    ]
    saving = ""
    if cost.saving_percent is not None and cost.saving_percent >= 0:
        saving = f"; StreamHouse costs {cost.saving_percent:.0f}% less"
    elif cost.saving_percent is not None:
        ratio = cost.streamhouse_monthly_usd / cost.kafka_monthly_usd
        saving = f"; StreamHouse costs {ratio:.1f} times as much"
    body = (
        '<div class="kv">'
        + _table(["", ""], total_rows, "storage-totals")
        + "</div><h2>Monthly cost estimate</h2>"
        + f'<p>StreamHouse on S3: <b id="monthly-cost">{_usd(cost.streamhouse_monthly_usd)}'
        + f"</b> a month (Kafka with {cost.prices.replication_factor} replicas on block "
        + f"storage: {_usd(cost.kafka_monthly_usd)}{saving}). GETs are not counted; "
        + "prices are S3 Standard / EBS gp3 list prices of us-east-1 (streamhouse/cost.py).</p>"
        + _table(
            ["deployment", "item", "quantity", "unit price", "per month", "basis"],
            cost_rows,
            "cost",
        )
        + "<h2>Per topic</h2>"
        + _table(
            ["topic", "objects", "stored", "live block bytes", "records", "cleanup policy"],
            topic_rows,
            "storage-topics",
        )
        + f'<p class="note">as of {_e(_iso_ms(storage.now_ms))}, answered by '
        + f"{_e(storage.answered_by)}</p>"
    )
    return layout("Storage", "storage", body, refresh=True)


# --------------------------------------------------------------------------------- queries


def _query_rows(queries: Sequence[Any]) -> list[list[str]]:
    rows = []
    for q in queries:
        runner = q.runner.state or "-"
        rows.append(
            [
                _td(q.name),
                _td(q.kind),
                _td(runner),
                _td(q.lag, num=True),
                _td(q.rows_in, num=True),
                _td(q.rows_out, num=True),
                _td(f"{q.rows_in_per_s:.1f} / {q.rows_out_per_s:.1f}", num=True),
                _td(q.output_topic or "-"),
                _td(q.last_error or q.runner.last_error or ""),
                f"<td><pre>{_e(q.sql)}</pre></td>",
            ]
        )
    return rows


def _result_table(table: Any) -> str:
    """A pyarrow Table as an HTML table (at most MAX_RESULT_ROWS rows)."""
    names = list(table.column_names)
    shown = table.slice(0, MAX_RESULT_ROWS).to_pylist()
    rows = [[_td("NULL" if row[n] is None else row[n]) for n in names] for row in shown]
    note = ""
    if table.num_rows > MAX_RESULT_ROWS:
        note = f'<p class="note">{table.num_rows - MAX_RESULT_ROWS} more rows not shown</p>'
    count = f'<p id="row-count">{table.num_rows} row{"s" if table.num_rows != 1 else ""}</p>'
    return count + _table(names, rows, "result") + note


def queries_page(
    queries: Sequence[Any] | None,
    statement: str,
    result: Any | None,
    message: str | None,
    error: str | None,
    list_error: str | None = None,
) -> str:
    """Continuous queries (sql `QueryStatus`es), the ad-hoc form and its result (a pyarrow
    Table, or the service's message)."""
    parts = [_error_box(list_error)]
    if queries:
        parts.append(
            _table(
                [
                    "name",
                    "kind",
                    "runner",
                    "lag",
                    "rows in",
                    "rows out",
                    "rows/s in / out",
                    "output topic",
                    "last error",
                    "sql",
                ],
                _query_rows(queries),
                "queries",
            )
        )
    elif queries is not None:
        parts.append('<p id="no-queries">No continuous queries.</p>')
    parts.append(
        "<h2>Ad-hoc query</h2>"
        '<form method="post" action="/queries">'
        f'<textarea name="sql" id="sql" rows="5">{_e(statement)}</textarea><br>'
        '<button type="submit" id="run">run</button> '
        '<span class="note">reads only: SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, VALUES</span>'
        "</form>"
    )
    parts.append(_error_box(error))
    if message:
        parts.append(f'<div class="notice" id="message">{_e(message)}</div>')
    if result is not None:
        parts.append(_result_table(result))
    return layout("Queries", "queries", "".join(parts))
