"""A whole StreamHouse on a temporary directory and free ports, for our tests and yours.

    with Stack(tmp_path) as stack:
        client = Client(stack.grpc_address)

The stack runs under supervisord exactly as `streamhouse up` does; `kill(program)` sends
SIGKILL to one process (supervisord restarts it), `restart()` stops and starts everything.

`Cluster` is N such stacks (agents) sharing one metadata URL (PostgreSQL) and one object store,
each with its own data dir (rings, logs), ports and supervisord:

    with Cluster(tmp_path, 3, postgres_dsn, "s3://bucket/prefix", env=s3_env) as cluster:
        producer = Producer({"bootstrap.servers": cluster.kafka_bootstrap})
        cluster.kill_agent(1)      # SIGKILL of supervisord and its programs at once
        cluster.start_agent(1)     # same data dir and ports, so the same agent id
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamhouse.cli import SUPERVISORD_CONF, prepare_data_dir, stack_environment
from streamhouse.config import load_settings
from streamhouse.rings import unlink_all

MiB = 1024 * 1024

# Small rings and cache so many test stacks fit side by side.
TEST_SETTINGS = {
    "STREAMHOUSE_PRODUCE_RING_BYTES": str(32 * MiB),
    "STREAMHOUSE_SEALED_RING_BYTES": str(32 * MiB),
    "STREAMHOUSE_COMMITTED_RING_BYTES": str(32 * MiB),
    "STREAMHOUSE_ACK_RING_BYTES": str(4 * MiB),
    "STREAMHOUSE_FETCH_REQUEST_RING_BYTES": str(2 * MiB),
    "STREAMHOUSE_FETCH_RESPONSE_RING_BYTES": str(32 * MiB),
    "STREAMHOUSE_MAX_SEGMENT_BYTES": str(8 * MiB),
    "STREAMHOUSE_MAX_BATCH_BYTES": str(8 * MiB),
    "STREAMHOUSE_MAX_FETCH_BYTES": str(8 * MiB),
    "STREAMHOUSE_CACHE_BYTES": str(64 * MiB),
    "STREAMHOUSE_FLUSH_INTERVAL_MS": "20",
    "STREAMHOUSE_LOG_LEVEL": "INFO",
    # Every metadata call made on an event loop raises (metadata/store.py rule 6).
    "STREAMHOUSE_DEBUG_LOOP_CALLS": "1",
    # Test records often carry fixed old timestamps that the default 7-day retention would
    # drop; tests of the lifecycle turn it on themselves.
    "STREAMHOUSE_LIFECYCLE_ENABLED": "false",
}

PROGRAMS = ("ingest", "segmenter", "uploader", "reader", "lifecycle", "sql", "console")
# Pause between polls of supervisorctl while waiting for a process state (bounded waits).
POLL_S = 0.05


_handed_out: set[int] = set()
_port_choice = random.SystemRandom()  # not the global generator tests may seed


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for clients' local ports (Linux; Linux's default elsewhere)."""
    try:
        low, high = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A 127.0.0.1 TCP port nothing listens on, below the ephemeral range: a port the kernel
    hands to outgoing connections could be taken by any client socket (a test's own) between
    this call and the server's bind, and the server would fail to start. Never the same port
    twice in one process."""
    low, _ = _ephemeral_range()
    first = 20_000 if low > 21_000 else 1_024
    for _ in range(1_000):
        port = _port_choice.randrange(first, low)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # below the range is crowded: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Reconnect backoff of the readiness probes' gRPC channels. gRPC's default (1 s, growing 1.6x)
#: would leave a probe that first tried before the listener was up waiting a second or two
#: after it is; these poll at the pace of POLL_S instead.
PROBE_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]


def _probe_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A channel for a readiness probe (TLS when `credentials` is given)."""
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=PROBE_CHANNEL_OPTIONS)
    return grpc.insecure_channel(address, options=PROBE_CHANNEL_OPTIONS)


class StackError(RuntimeError):
    pass


def _children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after ')'.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(pid: int) -> list[int]:
    children = _children_map()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed orphan may wait for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


class Stack:
    """One StreamHouse stack (supervisord + its PROGRAMS) on `data_dir`; each stack gets
    free gRPC, Kafka and sql ports."""

    def __init__(
        self,
        data_dir: os.PathLike[str] | str,
        env: Mapping[str, str] | None = None,
        grpc_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``grpc_credentials``: TLS credentials for the health checks of a stack whose gRPC
        listener uses TLS (``STREAMHOUSE_GRPC_TLS``/``GRPC_AUTH=mtls``; with mtls they must
        carry a client certificate)."""
        self.data_dir = pathlib.Path(data_dir).resolve()
        self.grpc_credentials = grpc_credentials
        self.grpc_port = free_port()
        self.kafka_port = free_port()
        self.sql_port = free_port()
        self.metrics_port = free_port()
        self.console_port = free_port()
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("STREAMHOUSE_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        base.update(TEST_SETTINGS)
        base.update(
            {
                "STREAMHOUSE_DATA_DIR": str(self.data_dir),
                "STREAMHOUSE_GRPC_LISTEN": f"127.0.0.1:{self.grpc_port}",
                "STREAMHOUSE_KAFKA_LISTEN": f"127.0.0.1:{self.kafka_port}",
                "STREAMHOUSE_SQL_LISTEN": f"127.0.0.1:{self.sql_port}",
                "STREAMHOUSE_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
                "STREAMHOUSE_CONSOLE_LISTEN": f"127.0.0.1:{self.console_port}",
            }
        )
        base.update(env or {})
        self.settings = load_settings(base)
        self.env = stack_environment(self.settings, base)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def kafka_address(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def sql_address(self) -> str:
        """The sql service's gRPC address (statements, continuous queries)."""
        return f"127.0.0.1:{self.sql_port}"

    @property
    def metrics_address(self) -> str:
        """The stack's one Prometheus scrape address (served by ingest at /metrics)."""
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def console_address(self) -> str:
        """The web console's address (http://<this>/topics)."""
        return f"127.0.0.1:{self.console_port}"

    @property
    def running(self) -> bool:
        """supervisord was started and has not been stopped or killed."""
        return self.proc is not None

    def start(self, timeout: float = 60) -> Stack:
        """Launches the stack and waits until it is ready. When it does not become ready (or the
        wait is interrupted), everything it started is stopped before the error is raised:
        supervisord, and any of its programs still alive after that."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self._stop_after_failed_start()
            raise
        return self

    def _stop_after_failed_start(self) -> None:
        if self.proc is None:
            return
        started = _descendants(self.proc.pid)
        try:
            self.stop(timeout=30)
        finally:
            # A program supervisord could not stop (or lost track of) is killed.
            for pid in started:
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def launch(self) -> None:
        """Starts supervisord without waiting for the programs (see `wait_ready`)."""
        if self.proc is not None:
            raise StackError(f"the stack on {self.data_dir} is already running")
        prepare_data_dir(self.settings)
        log = open(self.data_dir / "logs" / "stack-console.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(SUPERVISORD_CONF)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = 60, *, serving: bool = True) -> None:
        """Blocks until every program runs and the gRPC health check says SERVING (with
        ``serving=False``: answers at all, SERVING or NOT_SERVING, as ingest does while its
        object store is unusable)."""
        deadline = time.monotonic() + timeout
        channel = _probe_channel(self.grpc_address, self.grpc_credentials)
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise StackError(f"supervisord exited early; see {self.data_dir}/logs")
                try:
                    remaining = max(0.1, deadline - time.monotonic())
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(),
                        timeout=min(remaining, 2),
                        wait_for_ready=True,
                    )
                    answered = (
                        reply.status == health_pb2.HealthCheckResponse.SERVING
                        or not serving
                        and reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
                    )
                    if answered and self._all_running():
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(f"stack not ready after {timeout}s; see {self.data_dir}/logs")
                time.sleep(POLL_S)

    def wait_sql_ready(self, timeout: float = 60) -> None:
        """Blocks until the sql service answers its health check with SERVING (over TLS with
        ``grpc_credentials``: the sql listener has the gRPC listener's TLS)."""
        deadline = time.monotonic() + timeout
        channel = _probe_channel(self.sql_address, self.grpc_credentials)
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(),
                        timeout=max(0.1, min(2, deadline - time.monotonic())),
                        wait_for_ready=True,
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(
                        f"sql service not ready after {timeout}s; see {self.data_dir}/logs/sql.log"
                    )
                time.sleep(POLL_S)

    def supervisorctl(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(SUPERVISORD_CONF), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip()

    def program_states(self) -> dict[str, tuple[str, int]]:
        """Every program's supervisord state and pid (0 when it has no process), from one
        XML-RPC call on supervisord's unix socket (what supervisorctl asks, without starting
        one); empty while supervisord does not answer."""
        from supervisor.xmlrpc import SupervisorTransport

        url = f"unix://{self.data_dir}/run/supervisor.sock"
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", SupervisorTransport(None, None, url))
        try:
            infos = proxy.supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error):
            return {}  # supervisord not (yet, or any more) answering
        finally:
            proxy("close")()
        return {info["name"]: (info["statename"], info["pid"]) for info in infos}

    def pids(self) -> dict[str, int]:
        """Every program's pid, 0 for one without a process (one call for all of them)."""
        return {name: pid for name, (_, pid) in self.program_states().items()}

    def _all_running(self) -> bool:
        """Every program is RUNNING (up for supervisord's startsecs, so past its start-up)."""
        states = self.program_states()
        return all(states.get(p, ("", 0))[0] == "RUNNING" for p in PROGRAMS)

    def pid(self, program: str) -> int:
        """The pid of a running program, 0 when it is not running."""
        return self.pids().get(program, 0)

    def kill(self, program: str) -> int:
        """SIGKILLs one program; returns the killed pid (supervisord restarts it)."""
        pid = self.pid(program)
        if not pid:
            raise StackError(f"{program} is not running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, program: str, old_pid: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(program)
            if pid and pid != old_pid:
                return pid
            time.sleep(POLL_S)
        raise StackError(f"{program} did not restart within {timeout}s")

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        unlink_all(self.settings)

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill_all(self, timeout: float = 30) -> list[int]:
        """SIGKILLs supervisord and every process under it at once: nothing runs its shutdown
        (no deregistration, no seal, no commit), as when the machine dies. Returns the pids.

        The pids are collected first (supervisord's descendants, from /proc), then supervisord
        is killed (so it restarts nothing) and its programs right after it; returns once every
        one of them is gone. The stack can be started again with `start()`."""
        if self.proc is None:
            raise StackError(f"the stack on {self.data_dir} is not running")
        victims = [self.proc.pid, *_descendants(self.proc.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in victims):
            if time.monotonic() > deadline:
                raise StackError(f"processes {victims} still alive {timeout}s after SIGKILL")
            time.sleep(POLL_S)
        self.proc = None
        unlink_all(self.settings)
        return victims

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- raw Kafka calls


def kafka_call(
    address: str,
    api_key: int,
    version: int,
    request: Any,
    timeout: float = 10,
    client_id: str = "testing",
) -> Any:
    """Sends one Kafka request to `address` (host:port) on a fresh connection; returns the
    decoded response body. For asking one particular agent, whatever its clients are told."""
    from streamhouse.kafka.framing import decode_response, encode_request
    from streamhouse.kafka.messages import RequestHeader

    host, _, port = address.rpartition(":")
    header = RequestHeader(
        request_api_key=api_key, request_api_version=version, correlation_id=1, client_id=client_id
    )
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(encode_request(header, request))
        with sock.makefile("rb") as reader:
            head = reader.read(4)
            if len(head) < 4:
                raise StackError(f"{address} closed the connection before answering API {api_key}")
            (size,) = struct.unpack(">i", head)
            _, body = decode_response(reader.read(size), api_key, version)
    return body


class KafkaView(NamedTuple):
    """What one agent's Kafka Metadata response says: brokers and partition leaders."""

    brokers: dict[int, str]  # node id -> "host:port"
    controller: int
    leaders: dict[int, int]  # partition -> leader node id (of the topic asked about)


def kafka_metadata(address: str, topic: str | None = None, client_id: str = "testing") -> KafkaView:
    """A Metadata v1 request to one agent (naming `topic`, or no topic), as `client_id`."""
    from streamhouse.kafka.messages import MetadataRequest

    topics = [] if topic is None else [MetadataRequest.MetadataRequestTopic(name=topic)]
    body = kafka_call(address, 3, 1, MetadataRequest(topics=topics), client_id=client_id)
    brokers = {b.node_id: f"{b.host}:{b.port}" for b in body.brokers}
    leaders: dict[int, int] = {}
    for t in body.topics:
        if t.error_code:
            raise StackError(f"Metadata from {address}: topic {t.name!r} error {t.error_code}")
        leaders = {p.partition_index: p.leader_id for p in t.partitions}
    return KafkaView(brokers, body.controller_id, leaders)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls `predicate` every POLL_S until it holds; raises StackError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not true after {timeout}s")
        time.sleep(POLL_S)


# ------------------------------------------------ Kafka client helpers (need confluent-kafka)


class Deliveries:
    """A confluent-kafka delivery-report callback that keeps every acknowledgement (record value
    -> (partition, offset), and per partition the time each was reported) and every failure.

    A report is timed when the client serves it (`poll`), which may be a little after the
    broker answered; `first_ack_after` can therefore be told which records count (e.g. only
    records produced after some moment), so that an answer received before it is never taken
    for one received after."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.ack_times: dict[int, list[tuple[float, bytes]]] = {}  # partition -> (time, value)
        self.failed: list[str] = []

    def __call__(self, err: Any, msg: Any) -> None:
        now = time.monotonic()
        with self.lock:
            if err is None:
                self.acked[msg.value()] = (msg.partition(), msg.offset())
                self.ack_times.setdefault(msg.partition(), []).append((now, msg.value()))
            else:
                self.failed.append(f"{msg.value()!r}: {err}")

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def first_ack_after(
        self, partition: int, moment: float, counts: Callable[[bytes], bool] | None = None
    ) -> float | None:
        """Time of the first acknowledgement on `partition` later than `moment` (of a record
        `counts` accepts, when given), if any."""
        with self.lock:
            times = list(self.ack_times.get(partition, []))
        for at, value in times:
            if at > moment and (counts is None or counts(value)):
                return at
        return None


def read_kafka_log(
    bootstrap: str, topic: str, partitions: int, timeout: float = 60
) -> dict[int, list[tuple[int, bytes]]]:
    """Every record of every partition as (offset, value), from the log start to the high
    watermark, read by partition (assign, no group) by a confluent-kafka consumer."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "log-reader", "enable.auto.commit": False}
    )
    out: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    deadline = time.monotonic() + timeout

    def high_watermark(partition: int) -> int:
        # Right after a failover the client's metadata may still miss a partition or name a
        # dead leader ("Unknown partition", timeouts): ask again until the deadline.
        while True:
            try:
                return consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)[1]
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"no high watermark for {topic}[{partition}]: {exc}") from exc
                time.sleep(POLL_S)

    try:
        left = sum(high_watermark(p) for p in range(partitions))
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        while left > 0:
            if time.monotonic() > deadline:
                raise StackError(f"{left} records of {topic} not read back in {timeout}s")
            # consume() returns at num_messages or at the timeout: never ask for more than left.
            for message in consumer.consume(num_messages=min(10_000, left), timeout=1):
                if message.error() is not None:
                    raise StackError(f"reading {topic}: {message.error()}")
                out[message.partition()].append((message.offset(), message.value()))
                left -= 1
    finally:
        consumer.close()
    return out


def log_problems(
    log: dict[int, list[tuple[int, bytes]]], acked: dict[bytes, tuple[int, int]]
) -> list[str]:
    """What is wrong with a log read back against the acknowledgements: offsets not 0..n-1 in
    a partition, a value present twice, an acknowledged value missing or not at its
    acknowledged (partition, offset). Empty when every acknowledged record is there exactly
    once."""
    problems: list[str] = []
    where: dict[bytes, tuple[int, int]] = {}
    for p, records in log.items():
        offsets = [o for o, _ in records]
        if offsets != list(range(len(records))):
            gaps = [o for i, o in enumerate(offsets) if o != i][:3]
            problems.append(f"partition {p}: offsets not 0..{len(records) - 1} (from {gaps})")
        for offset, value in records:
            if value in where:
                problems.append(f"{value!r} twice: at {where[value]} and {(p, offset)}")
            where[value] = (p, offset)
    missing = [v for v in acked if v not in where]
    if missing:
        problems.append(f"{len(missing)} acknowledged records missing, e.g. {missing[:3]}")
    moved = [(v, acked[v], where[v]) for v in acked if v in where and acked[v] != where[v]]
    if moved:
        problems.append(f"{len(moved)} records not where acknowledged, e.g. {moved[:3]}")
    return problems[:20]


# --------------------------------------------------------------------------- clusters of agents

# Agents notice a dead peer within a lease; short ones make failover tests quick. The lease
# stays several heartbeats long so a loaded 2-core machine does not expire live agents.
CLUSTER_SETTINGS = {
    "STREAMHOUSE_AGENT_HEARTBEAT_MS": "500",
    "STREAMHOUSE_AGENT_LEASE_MS": "3000",
}


class Cluster:
    """N agents (`Stack`s) sharing one metadata URL and one object store.

    Each agent has its own data dir (`<base_dir>/agent<i>`: rings, logs, supervisord), its own
    free gRPC and Kafka ports and its own supervisord. `env` is applied to every agent after
    CLUSTER_SETTINGS (e.g. S3 credentials); `agent_env[i]` to agent i only (e.g. its zone).
    The ports are chosen once, so a killed agent started again keeps its agent id (its Kafka
    advertised address) and with it its node id."""

    def __init__(
        self,
        base_dir: os.PathLike[str] | str,
        n: int,
        metadata_url: str,
        object_store_url: str,
        env: Mapping[str, str] | None = None,
        agent_env: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        if n < 1:
            raise ValueError(f"a cluster needs at least one agent, not {n}")
        if agent_env is not None and len(agent_env) != n:
            raise ValueError(f"agent_env has {len(agent_env)} entries for {n} agents")
        self.base_dir = pathlib.Path(base_dir)
        self.metadata_url = metadata_url
        self.object_store_url = object_store_url
        self.agents: list[Stack] = []
        for i in range(n):
            merged = dict(CLUSTER_SETTINGS)
            merged.update(env or {})
            merged["STREAMHOUSE_METADATA"] = metadata_url
            merged["STREAMHOUSE_OBJECT_STORE"] = object_store_url
            merged.update(agent_env[i] if agent_env is not None else {})
            self.agents.append(Stack(self.base_dir / f"agent{i}", env=merged))

    def __len__(self) -> int:
        return len(self.agents)

    def __getitem__(self, i: int) -> Stack:
        return self.agents[i]

    # -- addresses ------------------------------------------------------------------------------

    @property
    def kafka_addresses(self) -> list[str]:
        return [a.kafka_address for a in self.agents]

    @property
    def grpc_addresses(self) -> list[str]:
        return [a.grpc_address for a in self.agents]

    @property
    def kafka_bootstrap(self) -> str:
        """Every agent's Kafka address, comma-separated (bootstrap.servers)."""
        return ",".join(self.kafka_addresses)

    def agent_by_kafka_address(self, address: str) -> int:
        """Index of the agent whose Kafka listener is `address` (as Metadata names it)."""
        for i, agent in enumerate(self.agents):
            if agent.kafka_address == address:
                return i
        raise StackError(f"no agent of this cluster listens for Kafka on {address}")

    def running_indices(self) -> list[int]:
        return [i for i, a in enumerate(self.agents) if a.running]

    # -- life cycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> Cluster:
        """Starts every agent that is not running (all at once) and waits until each serves
        and all agree on who the brokers are."""
        started = [a for a in self.agents if not a.running]
        try:
            for agent in started:
                agent.launch()
            deadline = time.monotonic() + timeout
            for agent in started:
                agent.wait_ready(max(1.0, deadline - time.monotonic()))
            if started:
                # Ready means one cluster: every agent lists all of them (each learns the
                # others from the registry on its own schedule).
                self.wait_brokers(
                    len(self.running_indices()), max(1.0, deadline - time.monotonic())
                )
        except BaseException:
            self.stop()
            raise
        return self

    def start_agent(self, i: int, timeout: float = 60) -> None:
        self.agents[i].start(timeout)

    def stop_agent(self, i: int) -> None:
        """Clean stop (SIGTERM to supervisord): the agent seals, commits and deregisters."""
        self.agents[i].stop()

    def kill_agent(self, i: int) -> list[int]:
        """SIGKILL of agent i's supervisord and all of its processes at once (query runners too)."""
        return self.agents[i].kill_all()

    def stop(self) -> None:
        """Stops every running agent (one failing to stop does not leave the others up)."""
        errors: list[BaseException] = []
        for agent in self.agents:
            try:
                agent.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise StackError(f"{len(errors)} agent(s) failed to stop: {errors}")

    def wait_brokers(self, count: int, timeout: float = 30) -> dict[int, str]:
        """Waits until every running agent's Kafka Metadata lists `count` brokers, the same
        ones; returns them (node id -> address)."""
        deadline = time.monotonic() + timeout
        seen: list[dict[int, str]] = []
        while True:
            try:
                seen = [kafka_metadata(self.agents[i].kafka_address).brokers
                        for i in self.running_indices()]  # fmt: skip
            except (OSError, StackError):
                seen = []
            if seen and all(len(b) == count and b == seen[0] for b in seen):
                return seen[0]
            if time.monotonic() > deadline:
                raise StackError(f"agents did not agree on {count} brokers in {timeout}s: {seen}")
            time.sleep(POLL_S)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------ Kafka admin and producer helpers (need confluent-kafka)

T = TypeVar("T")
#: How long the helpers below wait for a broker's answer or a condition, by default.
KAFKA_WAIT_S = 20.0


def poll_until(check: Callable[[], T | None], what: str, timeout: float = KAFKA_WAIT_S) -> T:
    """Calls `check` every POLL_S until it returns something other than None, and returns that;
    an AssertionError naming `what` after `timeout` seconds (tests assert what they wait for)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_S)


def only_future(futures: Mapping[Any, Future[Any]]) -> Future[Any]:
    """The one future of a confluent-kafka admin call made about one resource."""
    if len(futures) != 1:
        raise StackError(f"expected the future of one resource, got {len(futures)}: {futures}")
    (future,) = futures.values()
    return future


def admin_result(futures: Mapping[Any, Future[Any]], timeout: float = KAFKA_WAIT_S) -> Any:
    """The result of the one future of a confluent-kafka admin call."""
    return only_future(futures).result(timeout)


def admin_error(future: Future[Any], timeout: float = KAFKA_WAIT_S) -> Any:
    """The `confluent_kafka.KafkaError` a confluent-kafka admin future failed with; an
    AssertionError when it succeeded."""
    from confluent_kafka import KafkaError, KafkaException

    try:
        value = future.result(timeout)
    except KafkaException as exc:
        error = exc.args[0]
        if not isinstance(error, KafkaError):
            raise AssertionError(f"the call failed without a KafkaError: {exc!r}") from exc
        return error
    raise AssertionError(f"the call was expected to fail but returned {value!r}")


def produce_values(
    bootstrap: str,
    topic: str,
    partition: int,
    values: Sequence[bytes],
    timestamps: Sequence[int] | None = None,
    timeout: float = KAFKA_WAIT_S,
) -> None:
    """Produces `values` (with `timestamps`, ms, when given) to one partition with a
    confluent-kafka producer; returns once every one is acknowledged, an AssertionError naming
    the failures otherwise."""
    from confluent_kafka import Producer

    if timestamps is not None and len(timestamps) != len(values):
        raise StackError(f"{len(values)} values but {len(timestamps)} timestamps")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    failed: list[Any] = []
    try:
        for i, value in enumerate(values):
            producer.produce(
                topic,
                value=value,
                partition=partition,
                timestamp=timestamps[i] if timestamps is not None else 0,
                on_delivery=lambda err, _msg: failed.append(err) if err else None,
            )
        left = producer.flush(timeout)
    finally:
        producer.close()
    assert left == 0, f"{left} records to {topic}[{partition}] not acknowledged in {timeout}s"
    assert not failed, f"produce to {topic}[{partition}] failed: {failed}"


def topic_configs(admin: Any, topic: str, timeout: float = KAFKA_WAIT_S) -> dict[str, Any]:
    """A topic's config entries (name -> `confluent_kafka.admin.ConfigEntry`), described by a
    confluent-kafka AdminClient."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    return admin_result(
        admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]), timeout
    )
