"""Hypothesis strategies for Kafka messages, built from Kafka's JSON specs through the
generator's own spec model (``streamhouse.kafka.generate``), so every (API, version) of
``messages.SUPPORTED`` has one. Used by the codec's property tests and the live-listener fuzz.

The specs are found at ``$STREAMHOUSE_KAFKA_SPECS`` or ``../shared/kafka-protocol/message``
beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from streamhouse.kafka import generate, messages
from streamhouse.kafka.generate import FieldSpec, Message, StructSpec

SPEC_DIR = Path(
    os.environ.get(
        "STREAMHOUSE_KAFKA_SPECS",
        Path(__file__).resolve().parents[3] / "shared" / "kafka-protocol" / "message",
    )
)
SPECS: list[Message] = generate.load_messages(SPEC_DIR) if SPEC_DIR.is_dir() else []
API_MESSAGES = [m for m in SPECS if m.kind in ("request", "response")]

INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
}


def struct_type(path: str) -> type[Any]:
    """The generated class of a spec struct path ("FetchRequest.FetchTopic")."""
    obj: Any = messages
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class MessageStrategies:
    """Strategies for the messages of the specs; `strings` and `records` replace the default
    strategies of string fields and records fields (e.g. to favour a known topic name)."""

    def __init__(
        self,
        strings: st.SearchStrategy[str] | None = None,
        records: st.SearchStrategy[bytes] | None = None,
    ) -> None:
        self.strings = strings if strings is not None else st.text(max_size=12)
        self.records = records if records is not None else st.binary(max_size=24)
        self._structs: dict[tuple[str, int], st.SearchStrategy[Any]] = {}

    def scalar(self, kind: str) -> st.SearchStrategy[Any]:
        if kind in INT_RANGES:
            lo, hi = INT_RANGES[kind]
            return st.integers(lo, hi)
        if kind == "bool":
            return st.booleans()
        if kind == "float64":
            return st.floats(allow_nan=False)
        if kind == "uuid":
            return st.uuids(version=None) | st.just(messages._ZERO_UUID)
        if kind == "string":
            return self.strings  # text() never has surrogates: always UTF-8 encodable
        if kind == "records":
            return self.records
        return st.binary(max_size=24)

    def field(self, f: FieldSpec, version: int) -> st.SearchStrategy[Any]:
        if f.is_array:
            if f.struct is not None:
                element = self.struct(f.struct, version)
            else:
                element = self.scalar(f.elem)
            value: st.SearchStrategy[Any] = st.lists(element, max_size=3)
        elif f.struct is not None:
            value = self.struct(f.struct, version)
        else:
            value = self.scalar(f.type)
        if version in f.nullable:
            value = st.none() | value
        return value

    def struct(self, struct: StructSpec, version: int) -> st.SearchStrategy[Any]:
        """Instances of `struct` with every field `version` carries drawn, the others default."""
        key = (struct.path, version)
        if key not in self._structs:
            fields = {
                f.attr: self.field(f, version) for f in struct.fields if version in f.versions
            }
            self._structs[key] = st.builds(struct_type(struct.path), **fields)
        return self._structs[key]

    def message(
        self, message: Message, versions: list[int] | None = None
    ) -> st.SearchStrategy[tuple[int, Any]]:
        """(version, message) pairs, the version drawn from `versions` or all of the spec's."""
        choices = versions if versions is not None else list(generate.versions_of(message))
        return st.sampled_from(choices).flatmap(
            lambda version: st.tuples(st.just(version), self.struct(message.root, version))
        )
