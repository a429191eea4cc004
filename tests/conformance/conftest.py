"""Fixtures of the metadata conformance suite: every test that takes ``store`` or
``open_store`` runs once on SQLite and once on PostgreSQL (a fresh database of the session's
throwaway cluster, tests/conftest.py). Modules that define their own fixtures of these names
use theirs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metadata import MetadataStore
from metadata.postgres import PostgresMetadataStore

Store = MetadataStore | PostgresMetadataStore
Opener = Callable[..., Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores on one backend's metadata; every store opened is closed at the end."""
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "meta.db"

        def opener(**kwargs: object) -> Store:
            opened.append(MetadataStore(path, **kwargs))  # type: ignore[arg-type]
            return opened[-1]
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")

        def opener(**kwargs: object) -> Store:
            opened.append(PostgresMetadataStore(dsn, **kwargs))  # type: ignore[arg-type]
            return opened[-1]

    yield opener
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store: Opener) -> Store:
    return open_store()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores with a 30 s busy timeout on one backend, for tests that race threads;
    every store opened is closed at the end."""
    opened: list[Store] = []
    lock = threading.Lock()
    if request.param == "sqlite":
        target: str = str(tmp_path / "race.db")

        def make(**kwargs: Any) -> Store:
            return MetadataStore(target, busy_timeout_ms=30_000, **kwargs)
    else:
        target = request.getfixturevalue("postgres_dsn")

        def make(**kwargs: Any) -> Store:
            return PostgresMetadataStore(target, busy_timeout_ms=30_000, **kwargs)

    def opener(**kwargs: Any) -> Store:
        s = make(**kwargs)
        with lock:
            opened.append(s)
        return s

    yield opener
    for s in opened:
        s.close()
