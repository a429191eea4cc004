"""A continuous query's checkpoint objects: the plan's state and a view's rows.

Objects (in the stack's object store)
-------------------------------------
======================================  ===================================================
key                                     content
======================================  ===================================================
``sql/state/<query>/<step>-<rand>.arrow``  ``ContinuousPlan.snapshot()`` bytes as the plan
                                        made them (its own format; the planner's stages
                                        write Arrow IPC)
``sql/views/<query>/<step>-<rand>.arrow``  a materialized view's current rows: one Arrow IPC
                                        stream (schema = the plan's output schema)
======================================  ===================================================

``<step>`` is the checkpoint step the object belongs to, zero-padded to 12 digits;
``<rand>`` 16 hex digits, so a runner fenced off mid-checkpoint never overwrites the objects
of the runner that replaced it. An object is live only once a committed ``CheckpointState``
names it (``state_key`` / ``view_key``), in the same metadata transaction as the output and
positions it goes with.

Deletion: after a commit the runner deletes the objects the previous checkpoint named
(``delete_objects``). On start, and now and then, ``sweep`` deletes every object of the query
that the committed checkpoint does not name and whose step is not above the committed step
(left by a runner killed between its PUTs and its commit, or fenced off): no runner can ever
commit them, since their step is taken.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

import pyarrow as pa

from metadata.async_store import AsyncMetadata
from sql.continuous.definition import decode_checkpoint
from streamhouse import objectstore

__all__ = [
    "STATE_PREFIX",
    "VIEW_PREFIX",
    "delete_objects",
    "load_state",
    "load_view_rows",
    "put_state",
    "put_view",
    "read_view",
    "state_key",
    "sweep",
    "view_bytes",
    "view_key",
]

log = logging.getLogger("sql.continuous")

STATE_PREFIX = "sql/state/"
VIEW_PREFIX = "sql/views/"
#: Checkpoints a view read follows when the object it read was replaced meanwhile.
VIEW_READ_ATTEMPTS = 5
_STEP = re.compile(r"/(\d{12})-[0-9a-f]{16}\.arrow$")


def _key(prefix: str, name: str, step: int) -> str:
    return f"{prefix}{name}/{step:012d}-{secrets.token_hex(8)}.arrow"


def state_key(name: str, step: int) -> str:
    """A new key for query ``name``'s plan snapshot of checkpoint ``step``."""
    return _key(STATE_PREFIX, name, step)


def view_key(name: str, step: int) -> str:
    """A new key for view ``name``'s rows of checkpoint ``step``."""
    return _key(VIEW_PREFIX, name, step)


def view_bytes(table: pa.Table) -> bytes:
    """A view's rows as one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_view(data: bytes) -> pa.Table:
    """The rows ``view_bytes`` wrote."""
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()


async def put_state(store: Any, name: str, step: int, snapshot: bytes) -> str:
    """PUTs a plan snapshot for checkpoint ``step``; returns its key."""
    key = _key(STATE_PREFIX, name, step)
    await objectstore.put(store, key, snapshot)
    return key


async def put_view(store: Any, name: str, step: int, table: pa.Table) -> str:
    """PUTs a view's rows for checkpoint ``step``; returns its key."""
    key = _key(VIEW_PREFIX, name, step)
    await objectstore.put(store, key, view_bytes(table))
    return key


async def load_state(store: Any, key: str) -> bytes:
    return await objectstore.get(store, key)


async def load_view_rows(meta: AsyncMetadata, store: Any, name: str) -> pa.Table | None:
    """The rows of materialized view ``name`` as of its last checkpoint; None when it has
    not committed one (or is not a view). An object deleted under the reader (a newer
    checkpoint replaced it) is followed to the newer one."""
    tried: set[str] = set()
    for _attempt in range(VIEW_READ_ATTEMPTS):
        checkpoint = await meta.get_query_checkpoint(name)
        if checkpoint is None:
            return None
        key = decode_checkpoint(checkpoint.payload).view_key
        if key is None:
            return None
        try:
            return read_view(await objectstore.get(store, key))
        except Exception:
            # the runner deletes a view object once a newer checkpoint names another one:
            # read the checkpoint again (a key that fails twice is a real failure)
            if key in tried or len(tried) + 1 == VIEW_READ_ATTEMPTS:
                raise
            tried.add(key)
    return None  # not reached: the last attempt returns or raises


async def delete_objects(store: Any, keys: list[str]) -> None:
    """Deletes superseded objects; best effort (``sweep`` finds what is left)."""
    if not keys:
        return
    try:
        await objectstore.delete_many(store, keys)
    except Exception as exc:  # noqa: BLE001  (a failed delete only leaves garbage)
        log.warning("could not delete %d superseded checkpoint objects: %s", len(keys), exc)


async def sweep(store: Any, name: str, step: int, keep: set[str]) -> int:
    """Deletes the query's state and view objects not in ``keep`` whose step is at most
    ``step`` (module docstring); returns how many."""
    doomed: list[str] = []
    for prefix in (STATE_PREFIX, VIEW_PREFIX):
        async for page in objectstore.list_objects(store, f"{prefix}{name}/"):
            for info in page:
                m = _STEP.search(info.key)
                if info.key in keep or m is None or int(m[1]) > step:
                    continue
                doomed.append(info.key)
    await delete_objects(store, doomed)
    return len(doomed)
