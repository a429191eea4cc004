"""`streamhouse status [--json]`: what a stack on a data dir is doing, read from the outside.

- programs: supervisord's XML-RPC `supervisor.getAllProcessInfo` over its unix socket
  (`<data_dir>/run/supervisor.sock`): state, pid and uptime in seconds; restarts are counted in
  the program's log (supervisord keeps no count): its `starting` lines minus one.
- rings: each ring's header in /dev/shm (see streamhouse/ring.py for the layout): capacity
  (u64 at offset 16), head (u64 at 128) and tail (u64 at 256); used = head - tail.
- object store: PUT then DELETE of a small probe object `_probe/status` (reachable, writable).
- metadata: opens the metadata store (migrating it as every process does) and lists the
  `SLOWEST_GROUPS` (5) consumer groups with the largest lag (high watermark - committed
  offset, summed over the group's partitions).
- serving: ingest's gRPC health check (`grpc_listen`, service "") and, when it is not SERVING,
  the reason ingest wrote to `<data_dir>/run/serving.json` (ingest/serving.py).
- throughput: produce and fetch records/s and bytes/s over the last minute, per topic and in
  total, as ingest wrote them to `<data_dir>/run/throughput.json` (ingest/throughput.py
  documents the file); null when ingest is not writing it (not running, or stale).

JSON output (`--json`), one object::

    {"data_dir": str, "supervisord": "running" | "not running",
     "programs": {name: {"state": str, "pid": int, "uptime_s": int, "restarts": int}},
     "rings": {name: {"capacity": int, "used": int, "occupancy": float} | null},
     "object_store": {"url": str, "ok": bool, "error": str | null},
     "metadata": {"target": str, "ok": bool, "error": str | null,
                  "slowest_groups": [{"group": str, "lag": int}...]},
     "serving": {"status": "SERVING" | "NOT_SERVING" | "UNKNOWN" | "UNREACHABLE",
                 "reason": str | null},
     "throughput": {"window_s": float, "total": RATES, "topics": {topic: RATES}} | null}

    RATES = {"produce_records_per_s": float, "produce_bytes_per_s": float,
             "fetch_records_per_s": float, "fetch_bytes_per_s": float}
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import socket
import struct
import sys
import xmlrpc.client
from typing import Any

from streamhouse import rings
from streamhouse.config import Settings
from streamhouse.ring import _shm_name

_SHM_DIR = "/dev/shm"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self.path = path
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self.path, self.timeout)


def supervisor_socket(settings: Settings) -> pathlib.Path:
    return settings.run_dir / "supervisor.sock"


def supervisor_proxy(settings: Settings, timeout: float = 5.0) -> xmlrpc.client.ServerProxy:
    """supervisord's XML-RPC interface over the stack's unix socket."""
    transport = _UnixTransport(str(supervisor_socket(settings)), timeout)
    return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=transport)


def ring_shm_path(settings: Settings, name: str) -> str:
    return os.path.join(_SHM_DIR, _shm_name(name, os.path.realpath(settings.run_dir)))


def ring_state(settings: Settings, name: str) -> dict[str, Any] | None:
    """A ring's capacity and bytes in flight from its header; None when it does not exist."""
    try:
        with open(ring_shm_path(settings, name), "rb") as f:
            header = f.read(384)
    except FileNotFoundError:
        return None
    if len(header) < 384 or header[:6] != b"SHRING":
        return None
    (capacity,) = struct.unpack_from("<Q", header, 16)
    (head,) = struct.unpack_from("<Q", header, 128)
    (tail,) = struct.unpack_from("<Q", header, 256)
    used = max(head - tail, 0)
    return {"capacity": capacity, "used": used, "occupancy": used / capacity if capacity else 0}


def existing_rings(settings: Settings) -> list[str]:
    return [n for n in rings.ALL if os.path.exists(ring_shm_path(settings, n))]


def _restarts(settings: Settings, program: str) -> int:
    """Starts of `program` logged in its log file (run_process logs `starting` once per
    start) minus one."""
    path = settings.log_dir / f"{program}.log"
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    starts = sum(
        1
        for line in text.splitlines()
        if f" {program} INFO {program}: starting" in line
        or (f'"process": "{program}"' in line and '"msg": "starting' in line)
    )
    return max(starts - 1, 0)


def programs(settings: Settings) -> dict[str, dict[str, Any]] | None:
    """Every supervisord program's state; None when supervisord does not answer."""
    try:
        infos = supervisor_proxy(settings).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return None
    out: dict[str, dict[str, Any]] = {}
    for info in infos:
        running = info["statename"] == "RUNNING"
        out[info["name"]] = {
            "state": info["statename"],
            "pid": info["pid"],
            "uptime_s": max(info["now"] - info["start"], 0) if running else 0,
            "restarts": _restarts(settings, info["name"]),
        }
    return out


def _check_object_store(settings: Settings) -> dict[str, Any]:
    from streamhouse import objectstore

    url = settings.object_store_url
    try:
        store = objectstore.open_object_store(url, settings.store_timeout_ms)
        import asyncio

        async def probe() -> None:
            key = "_probe/status"
            await objectstore.put(store, key, b"probe")
            await objectstore.delete(store, key)

        asyncio.run(asyncio.wait_for(probe(), settings.store_timeout_ms / 1000))
    except Exception as exc:  # reported, not raised: status shows what is wrong
        return {"url": str(url), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"url": str(url), "ok": True, "error": None}


#: How many consumer groups `slowest_groups` lists.
SLOWEST_GROUPS = 5


def _slowest_groups(store: Any) -> list[dict[str, Any]]:
    """The groups with the largest total lag (high watermark - committed offset, summed over
    their partitions), largest first; at most the first `MAX_GROUPS` groups by name are read
    (ingest/sampler.py does the same for the metrics)."""
    from ingest.sampler import MAX_GROUPS, group_lags

    groups = sorted(store.list_offset_groups())[:MAX_GROUPS]
    commits = {group: store.list_group_offsets(group) for group in groups}
    topics = {t.topic_id: t for t in store.list_topics()}
    wanted = {c.topic_id for offsets in commits.values() for c in offsets} & set(topics)
    high_watermarks = {
        (p.topic_id, p.partition): p.high_watermark
        for topic_id in wanted
        for p in store.list_partitions(topic_id)
    }
    _, sums = group_lags(commits, topics, high_watermarks, max_series=0)
    ranked = sorted(sums.items(), key=lambda item: (-item[1], item[0]))[:SLOWEST_GROUPS]
    return [{"group": group, "lag": lag} for group, lag in ranked]


def _check_metadata(settings: Settings) -> dict[str, Any]:
    from metadata.interface import open_store

    target = settings.metadata_target
    shown = str(target).split("@")[-1]  # no password in the output
    try:
        store = open_store(target)
        try:
            slowest = _slowest_groups(store)
        finally:
            store.close()
    except Exception as exc:  # reported, not raised
        error = f"{type(exc).__name__}: {exc}"
        return {"target": shown, "ok": False, "error": error, "slowest_groups": []}
    return {"target": shown, "ok": True, "error": None, "slowest_groups": slowest}


def _check_serving(settings: Settings) -> dict[str, Any]:
    """Ingest's health check, and the reason it gave for not serving."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    host, _, port = settings.grpc_listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    try:
        from streamhouse.tls import local_grpc_channel  # TLS per the settings

        with local_grpc_channel(settings, f"{host}:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=3
            )
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as exc:
        return {"status": "UNREACHABLE", "reason": f"ingest's health check: {exc.code().name}"}
    reason = None
    if status != "SERVING":
        from ingest.serving import read_state_file

        state = read_state_file(settings)
        reason = str(state["reason"]) if state and state.get("reason") else None
    return {"status": status, "reason": reason}


def _throughput(settings: Settings) -> dict[str, Any] | None:
    """The last minute's rates ingest wrote (ingest/throughput.py), None if not current."""
    from ingest.throughput import read_state_file

    state = read_state_file(settings)
    if state is None:
        return None
    return {key: state.get(key) for key in ("window_s", "total", "topics")}


def collect(settings: Settings) -> dict[str, Any]:
    progs = programs(settings)
    return {
        "data_dir": str(settings.data_path),
        "supervisord": "running" if progs is not None else "not running",
        "programs": progs or {},
        "rings": {name: ring_state(settings, name) for name in rings.ALL},
        "object_store": _check_object_store(settings),
        "metadata": _check_metadata(settings),
        "serving": _check_serving(settings)
        if progs is not None
        else {"status": "UNREACHABLE", "reason": "supervisord is not running"},
        "throughput": _throughput(settings) if progs is not None else None,
    }


def _rates_line(label: str, rates: dict[str, float]) -> str:
    return (
        f"  {label}: produce {rates['produce_records_per_s']:.1f} rec/s "
        f"{rates['produce_bytes_per_s']:.0f} B/s, fetch {rates['fetch_records_per_s']:.1f} rec/s "
        f"{rates['fetch_bytes_per_s']:.0f} B/s"
    )


def render(status: dict[str, Any]) -> str:
    lines = [f"stack {status['data_dir']}: supervisord {status['supervisord']}"]
    for name, p in sorted(status["programs"].items()):
        lines.append(
            f"  {name:<10} {p['state']:<9} pid {p['pid']:<7} up {p['uptime_s']}s "
            f"restarts {p['restarts']}"
        )
    for name, r in status["rings"].items():
        if r is not None:
            lines.append(
                f"  ring {name:<15} {r['used']}/{r['capacity']} bytes ({r['occupancy']:.1%})"
            )
    for key in ("object_store", "metadata"):
        c = status[key]
        where = c.get("url") or c.get("target")
        lines.append(f"  {key.replace('_', ' ')} {where}: {'ok' if c['ok'] else c['error']}")
    for slow in status["metadata"]["slowest_groups"]:
        lines.append(f"  group {slow['group']}: lag {slow['lag']}")
    serving = status["serving"]
    reason = f": {serving['reason']}" if serving["reason"] else ""
    lines.append(f"  health {serving['status']}{reason}")
    throughput = status.get("throughput")
    if throughput is None:
        lines.append("  throughput: unknown (ingest is not writing run/throughput.json)")
    else:
        lines.append(
            _rates_line(f"throughput (last {throughput['window_s']:.0f} s)", throughput["total"])
        )
        for topic, rates in sorted(throughput["topics"].items()):
            lines.append(_rates_line(f"  topic {topic}", rates))
    return "\n".join(lines)


def main(settings: Settings, as_json: bool) -> int:
    status = collect(settings)
    print(json.dumps(status, indent=2) if as_json else render(status), file=sys.stdout)
    healthy = (
        status["supervisord"] == "running"
        and all(p["state"] == "RUNNING" for p in status["programs"].values())
        and status["object_store"]["ok"]
        and status["metadata"]["ok"]
        and status["serving"]["status"] == "SERVING"
    )
    return 0 if healthy else 1
