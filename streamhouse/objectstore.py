"""The object store behind the log, opened from a URL through obstore.

- `file:///abs/path`  a local folder (the embedded default: `<data_dir>/objects`)
- `s3://bucket[/prefix]` S3 or any S3-compatible server; endpoint, region and keys come from
  the usual `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
  `AWS_SECRET_ACCESS_KEY`); an `http://` endpoint is allowed.
- `memory://` objects live in one process's memory: nothing is durable and other processes
  cannot read them, so a multi-process stack on it serves reads from the reader's cache only.
  For tests of the write path.
"""

from __future__ import annotations

import os
import pathlib
from datetime import timedelta
from typing import Any

import obstore
from obstore.store import LocalStore, MemoryStore, S3Store


class ObjectStoreConfigError(ValueError):
    """The object store URL or its settings cannot be used; the message says why."""


def open_object_store(url: str, timeout_ms: int = 30_000) -> Any:
    """Returns an obstore store for `url`; raises ObjectStoreConfigError on a bad URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ObjectStoreConfigError(
            f"object store {url!r} is not a URL (file://, s3://, memory://)"
        )
    timeout = timedelta(milliseconds=timeout_ms)
    if scheme == "file":
        path = pathlib.Path(rest)
        if not path.is_absolute():
            raise ObjectStoreConfigError(f"object store {url!r}: a file:// path must be absolute")
        path.mkdir(parents=True, exist_ok=True)
        return LocalStore(str(path), mkdir=True)
    if scheme == "memory":
        return MemoryStore()
    if scheme == "s3":
        if not rest.split("/", 1)[0]:
            raise ObjectStoreConfigError(f"object store {url!r} names no bucket")
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
        client_options: dict[str, Any] = {
            "timeout": timeout,
            "connect_timeout": timedelta(seconds=5),
        }
        if endpoint.startswith("http://"):
            client_options["allow_http"] = True
        retry = {"max_retries": 3, "retry_timeout": timeout}
        config: dict[str, Any] = {}
        if endpoint:
            # Path-style requests work with every S3-compatible server.
            config["virtual_hosted_style_request"] = False
        if not os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
            config["region"] = "us-east-1"
        return S3Store.from_url(
            url, config=config, client_options=client_options, retry_config=retry
        )
    raise ObjectStoreConfigError(
        f"object store scheme {scheme!r} is not supported: use file://, s3:// or memory://"
    )


async def put(store: Any, key: str, data: bytes) -> None:
    await obstore.put_async(store, key, data)


async def get_range(store: Any, key: str, start: int, length: int) -> bytes:
    return bytes(await obstore.get_range_async(store, key, start=start, length=length))


async def get(store: Any, key: str) -> bytes:
    result = await obstore.get_async(store, key)
    return bytes(await result.bytes_async())


async def delete(store: Any, key: str) -> None:
    await obstore.delete_async(store, key)
