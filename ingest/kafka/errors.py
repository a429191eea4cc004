"""Kafka error codes by name, for the handlers: a view of ``streamhouse.errors.ErrorCode``.

``errors.CORRUPT_MESSAGE`` is the Kafka number (2); the table itself, with whether each error
is retriable and its gRPC status, lives in ``streamhouse/errors.py``.
"""

from __future__ import annotations

from streamhouse.errors import ErrorCode

# The names the handlers use, each bound to its Kafka code.
globals().update({e.name: e.kafka_code for e in ErrorCode})

# Every code by name (the pipeline used to report errors by name; kept for the handlers).
BY_NAME: dict[str, int] = {e.name: e.kafka_code for e in ErrorCode}
