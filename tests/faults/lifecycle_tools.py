"""Tools for the lifecycle fault tests and bench/lifecycle_bench.py: an S3 proxy that counts
(and can slow) the requests a stack or a lifecycle pass makes (`S3CountingProxy`, which lives in
streamhouse/s3proxy.py and is re-exported here), and views of what the bucket and the metadata
store hold.

`S3CountingProxy` sits between StreamHouse processes and SeaweedFS (point AWS_ENDPOINT_URL at
`proxy.endpoint`). It reads each HTTP/1.1 request from the client (request line, headers and
a body framed by Content-Length or chunked transfer coding), counts it by kind, optionally
waits `delay_s` before forwarding it, and forwards the bytes unchanged; responses are piped
back untouched. Kinds: ``GET`` (object reads, ranged or not), ``LIST`` (a GET of the bucket
with ``list-type=``), ``PUT``, ``HEAD``, ``DELETE`` and ``POST`` (batch deletes, multipart
uploads). Counting the wire is the honest GET count of a read: it sees every request the
reader or a pass makes, retries included, whatever their caches do.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from metadata.interface import open_store
from streamhouse import objectstore
from streamhouse.s3proxy import ProxyError, S3CountingProxy

__all__ = [
    "ProxyError",
    "S3CountingProxy",
    "bucket_segments",
    "open_objects",
    "unknown_objects",
]

# ------------------------------------------------------------------ bucket and metadata


S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


def open_objects(env: Mapping[str, str], object_store_url: str) -> object:
    """The object store of a stack, opened in this process with the S3 settings of its env.

    The store reads ``AWS_*`` from the environment when it is opened, so they are set for
    that moment only and restored after: nothing leaks into later tests (or the stacks they
    start, which inherit this process's environment)."""
    saved = {name: os.environ.get(name) for name in S3_ENV}
    try:
        for name in S3_ENV:
            if name in env:
                os.environ[name] = env[name]
        return objectstore.open_object_store(object_store_url)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def bucket_segments(env: Mapping[str, str], object_store_url: str) -> dict[str, int]:
    """Every object under ``segments/``: key -> size."""
    store = open_objects(env, object_store_url)

    async def listing() -> dict[str, int]:
        return {
            info.key: info.size
            async for page in objectstore.list_objects(store, "segments/")
            for info in page
        }

    return asyncio.run(listing())


def unknown_objects(metadata_target: str, keys: set[str]) -> set[str]:
    """The keys no segment row (live or dead) knows."""
    store = open_store(metadata_target)
    try:
        known = store.known_segments(sorted(keys))
    finally:
        store.close()
    return keys - set(known)
