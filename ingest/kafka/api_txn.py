"""Transactions (exactly-once): the Kafka APIs of the transaction coordinator.

``APIS`` maps an API key to (name, lowest and highest advertised version, handler); the broker
merges it into what it advertises and dispatches.
"""

from __future__ import annotations

from typing import Any

APIS: dict[int, tuple[str, int, int, Any]] = {}
