"""The history of a nemesis run: every operation the workload invoked and how it completed.

One JSON object per line, appended (and flushed) as it happens, so a long run's history survives
a crash of the run itself and can be re-checked later (`python -m tests.faults.nemesis --check
FILE`). Line layout (keys absent when they do not apply):

| key       | meaning                                                                          |
|-----------|----------------------------------------------------------------------------------|
| `t`       | seconds since the run started (float)                                            |
| `process` | who did it: `kafka-0`, `grpc-1`, `consumer-0`, `final`, `nemesis`                 |
| `type`    | `invoke`, `ok` (definitely happened), `fail` (definitely did not), `info` (unknown) |
| `f`       | `send`, `poll`, `commit`, `assign`, `read` (final full read), or a nemesis fault   |
| `values`  | `send`: the unique values sent (strings), one call may send several               |
| `partition` | `send`: the partition written                                                  |
| `offsets` | `send` `ok`: the offset of each value, aligned with `values`                     |
| `records` | `poll`/`read` `ok`: `[partition, offset, value]` of every record returned        |
| `commits` | `commit`: `[partition, offset]` committed                                         |
| `error`   | `fail`/`info`: what the client said                                               |

Rules the workload keeps: every value is sent once and is unique in the run; a `send` is
`invoke`d before it can complete; `fail` is only written for errors that prove the value was
not stored (validation errors), every other error is `info`; an `assign` op marks the start of
a new assignment of a consumer, after which its offsets may legitimately move backwards.
"""

from __future__ import annotations

import json
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

Op = dict[str, Any]


class History:
    """Thread-safe, append-only history written as JSON lines to `path`."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._file: TextIO = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.counts: dict[str, int] = {}

    def record(self, process: str, type_: str, f: str, **fields: Any) -> None:
        op: Op = {"t": round(time.monotonic() - self._started, 4), "process": process}
        op["type"] = type_
        op["f"] = f
        op.update(fields)
        line = json.dumps(op, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            key = f"{f}:{type_}"
            self.counts[key] = self.counts.get(key, 0) + 1

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_history(path: pathlib.Path) -> Iterator[Op]:
    """The operations of a history file, in the order they were written.

    A last line cut short by a crash of the run is ignored; any other bad line is an error.
    """
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    for number, line in enumerate(lines, 1):
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise ValueError(f"{path}:{number}: not a JSON history line: {line[:80]!r}") from None
