"""Generate `streamhouse/kafka/messages.py` from Apache Kafka's JSON message specs.

    python -m streamhouse.kafka.generate /path/to/kafka-protocol/message [-o OUTPUT]

The specs are the files of `clients/src/main/resources/common/message/` in Apache Kafka: JSON
with `//` comments, one file per request, response or header. This script reads them and writes
one Python module holding

  - one `msgspec.Struct` type per message and per nested or common struct, whose fields are the
    union of all versions (as Kafka's Java classes do), so a server fills one type whatever
    version it answers (kw_only; gc=False since messages never form reference cycles);
  - one decode and one encode function per (message, version), straight-line code with runs of
    fixed-width fields packed by one precompiled `struct.Struct`; versions whose byte layout is
    the same share one function;
  - tables mapping (api_key, version) to those functions, the supported version ranges, the
    API names, and which header version each message uses.

The output is formatted with `ruff format` when ruff is installed, and committed, so installs
need neither the specs nor this script. Field descriptions ("about") of the specs are not
copied. What the spec language means, as implemented here:

  validVersions      versions of the message, "0-11"; every one is generated
  flexibleVersions   versions using compact strings/bytes/arrays and a tagged-field section at
                     the end of every struct; a field may override it ("none" for ClientId)
  versions           versions in which a field is on the wire ("3+", "0-7", "5", "none")
  nullableVersions   versions in which the field may be null (string, bytes, records, arrays,
                     structs; a nullable struct is preceded by an int8: -1 null, 1 present)
  taggedVersions/tag the field travels in the tagged section with that tag, and is written only
                     when it differs from its default; unknown tags are skipped when decoding
  default            Kafka's default ("null", "-1", "0x7fffffff", "true", ...); a struct field
                     defaults to a struct of defaults
  ignorable          when false, encoding a non-default value at a version lacking the field
                     raises EncodeError (Kafka's UnsupportedVersionException) instead of
                     dropping it silently
  commonStructs      struct types shared by several fields of one message

Two header rules live in Kafka's generator rather than in the specs, and are kept here too:
ControlledShutdown v0 requests use request header v0, and ApiVersions responses always use
response header v0 (so a client can read the error whatever version it asked for).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import keyword
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUTPUT = Path(__file__).with_name("messages.py")

FIXED = {
    "bool": ("?", 1),
    "int8": ("b", 1),
    "int16": ("h", 2),
    "int32": ("i", 4),
    "int64": ("q", 8),
    "uint16": ("H", 2),
    "uint32": ("I", 4),
    "float64": ("d", 8),
    "uuid": ("16s", 16),
}
VARIABLE = {"string", "bytes", "records"}
PRIMITIVES = set(FIXED) | VARIABLE
PY_TYPES = {
    "bool": "bool",
    "int8": "int",
    "int16": "int",
    "int32": "int",
    "int64": "int",
    "uint16": "int",
    "uint32": "int",
    "float64": "float",
    "uuid": "UUID",
    "string": "str",
    "bytes": "bytes",
    "records": "bytes | memoryview",
}
_NULL_COMPACT = 'b"\\x00"'
# Names the generated code may take from primitives.py (imported only when used).
PRIMITIVE_NAMES = sorted(
    """ArrayStructs DecodeError EncodeError compact_nullable_string compact_string nullable_string
    read_array_length read_bytes read_compact_array_length read_compact_bytes
    read_compact_nullable_bytes read_compact_nullable_string read_compact_records
    read_compact_string read_nullable_bytes read_nullable_string read_records read_string
    read_tagged_field_header read_uvarint skip_tagged_fields string tagged_fields
    uuid_from_bytes uvarint write_bytes write_compact_bytes write_compact_nullable_bytes
    write_nullable_bytes""".split(),
    key=lambda name: (not name[0].isupper(), name),
)
# Struct format character -> letter used in the name of the precompiled struct.Struct.
FORMAT_NAMES = {"?": "o", "b": "b", "h": "h", "i": "i", "q": "q", "H": "H", "I": "I", "d": "d"}


# ------------------------------------------------------------------------------ spec model


@dataclass(frozen=True)
class Versions:
    """A version range; `hi` None means open-ended ("3+"), lo > hi means none."""

    lo: int
    hi: int | None

    @classmethod
    def parse(cls, text: str | None) -> Versions:
        if text is None:
            return NONE
        text = str(text).strip()
        if text == "none":
            return NONE
        if text.endswith("+"):
            return cls(int(text[:-1]), None)
        if "-" in text:
            lo, hi = text.split("-")
            return cls(int(lo), int(hi))
        return cls(int(text), int(text))

    def __contains__(self, version: int) -> bool:
        return self.lo <= version and (self.hi is None or version <= self.hi)

    @property
    def empty(self) -> bool:
        return self.hi is not None and self.hi < self.lo

    def __str__(self) -> str:
        if self.empty:
            return "none"
        if self.hi is None:
            return f"{self.lo}+"
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


NONE = Versions(0, -1)


@dataclass
class FieldSpec:
    name: str
    attr: str
    type: str
    versions: Versions
    nullable: Versions
    tagged: Versions
    tag: int | None
    flexible: Versions | None  # per-field override of the message's flexibleVersions
    default: object
    ignorable: bool
    struct: StructSpec | None = None

    @property
    def is_array(self) -> bool:
        return self.type.startswith("[]")

    @property
    def elem(self) -> str:
        return self.type[2:] if self.is_array else self.type


@dataclass
class StructSpec:
    name: str
    path: str  # Python path of the class, "FetchResponse.PartitionData"
    stem: str  # stem of generated function names, "FetchResponse_PartitionData"
    fields: list[FieldSpec] = field(default_factory=list)


@dataclass
class Message:
    name: str
    kind: str  # request, response or header
    api_key: int | None
    valid: Versions
    flexible: Versions
    root: StructSpec
    structs: list[StructSpec]
    unstable_latest: bool


def strip_comments(text: str) -> str:
    """JSON text without // comments (a // inside a string is kept)."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif c == "/" and text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def snake(name: str) -> str:
    """Python attribute name of a spec field name (TopicId -> topic_id)."""
    name = name.replace("KRaft", "Kraft")
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()
    return s + "_" if keyword.iskeyword(s) else s


def _collect_inline(fields: list[dict], found: dict[str, list[dict]]) -> None:
    for f in fields:
        if "fields" in f:
            struct_name = f["type"][2:] if f["type"].startswith("[]") else f["type"]
            if struct_name in found:
                raise ValueError(f"struct {struct_name} is defined twice")
            found[struct_name] = f["fields"]
            _collect_inline(f["fields"], found)


def parse_message(spec: dict) -> Message:
    name = spec["name"]
    definitions: dict[str, list[dict]] = {}
    for common in spec.get("commonStructs", []):
        definitions[common["name"]] = common["fields"]
        _collect_inline(common["fields"], definitions)
    _collect_inline(spec["fields"], definitions)
    structs: dict[str, StructSpec] = {}

    def build_fields(raw_fields: list[dict], owner: str) -> list[FieldSpec]:
        out: list[FieldSpec] = []
        attrs: set[str] = set()
        for raw in raw_fields:
            spec_field = FieldSpec(
                name=raw["name"],
                attr=snake(raw["name"]),
                type=raw["type"],
                versions=Versions.parse(raw["versions"]),
                nullable=Versions.parse(raw.get("nullableVersions")),
                tagged=Versions.parse(raw.get("taggedVersions")),
                tag=raw.get("tag"),
                flexible=(
                    Versions.parse(raw["flexibleVersions"]) if "flexibleVersions" in raw else None
                ),
                default=raw.get("default"),
                ignorable=bool(raw.get("ignorable", False)),
            )
            if spec_field.attr in attrs:
                raise ValueError(f"{owner}: two fields named {spec_field.attr}")
            attrs.add(spec_field.attr)
            if (spec_field.tag is None) != spec_field.tagged.empty:
                raise ValueError(f"{owner}.{spec_field.name}: tag and taggedVersions go together")
            if spec_field.elem not in PRIMITIVES:
                spec_field.struct = build_struct(spec_field.elem)
            elif "fields" in raw:
                raise ValueError(f"{owner}.{spec_field.name}: primitive type with fields")
            out.append(spec_field)
        return out

    def build_struct(struct_name: str) -> StructSpec:
        if struct_name in structs:
            return structs[struct_name]
        if struct_name not in definitions:
            raise ValueError(f"{name}: unknown type {struct_name}")
        if struct_name == name:
            raise ValueError(f"{name}: struct named like its message")
        struct_spec = StructSpec(struct_name, f"{name}.{struct_name}", f"{name}_{struct_name}")
        structs[struct_name] = struct_spec
        struct_spec.fields = build_fields(definitions[struct_name], struct_spec.path)
        return struct_spec

    root = StructSpec(name, name, name)
    root.fields = build_fields(spec["fields"], name)
    return Message(
        name=name,
        kind=spec["type"],
        api_key=spec.get("apiKey"),
        valid=Versions.parse(spec["validVersions"]),
        flexible=Versions.parse(spec["flexibleVersions"]),
        root=root,
        structs=list(structs.values()),
        unstable_latest=bool(spec.get("latestVersionUnstable", False)),
    )


def load_messages(spec_dir: Path) -> list[Message]:
    """Requests, responses and the two headers of a spec directory (other kinds skipped)."""
    messages = []
    for path in sorted(spec_dir.glob("*.json")):
        spec = json.loads(strip_comments(path.read_text(encoding="utf-8")))
        if spec["type"] in ("request", "response", "header"):
            messages.append(parse_message(spec))
    return messages


def versions_of(message: Message) -> range:
    assert message.valid.hi is not None, f"{message.name}: open validVersions"
    return range(message.valid.lo, message.valid.hi + 1)


def spec_digest(spec_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(spec_dir.glob("*.json")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------ defaults


def default_source(f: FieldSpec) -> tuple[str, bool]:
    """(Python source of the field's default, whether it is a factory)."""
    raw = f.default
    if f.is_array:
        if raw == "null":
            return "None", False
        if raw not in (None, ""):
            raise ValueError(f"{f.name}: array default {raw!r}")
        return "list", True
    if f.struct is not None:
        if raw == "null":
            return "None", False
        return f"lambda: {f.struct.path}()", True
    t = f.type
    if t == "records":
        return "None", False
    if raw == "null":
        return "None", False
    if t == "string":
        return repr(raw or ""), False
    if t == "bytes":
        return 'b""', False
    if t == "bool":
        return ("True" if str(raw).lower() == "true" else "False"), False
    if t == "float64":
        return repr(float(raw or 0)), False
    if t == "uuid":
        if raw not in (None, ""):
            raise ValueError(f"{f.name}: uuid default {raw!r}")
        return "_ZERO_UUID", False
    if raw in (None, ""):
        return "0", False
    return str(int(str(raw), 0)), False


def py_annotation(f: FieldSpec) -> str:
    base = f.struct.path if f.struct is not None else PY_TYPES[f.elem]
    if f.is_array:
        base = f"list[{base}]"
    if (not f.nullable.empty or f.type == "records" or default_source(f)[0] == "None") and (
        "None" not in base
    ):
        base += " | None"
    return base


# ------------------------------------------------------------------------------ code generation


class Module:
    """Collects generated functions (deduplicated by body) and struct.Struct constants."""

    def __init__(self) -> None:
        self.functions: list[str] = []
        self.bodies: dict[tuple[str, str], str] = {}
        self.formats: dict[str, str] = {}
        self.default_instances: dict[str, str] = {}
        self.arrays: dict[str, str] = {}

    def fmt(self, fmt: str) -> str:
        if fmt not in self.formats:
            name = "".join("u" if part == "16s" else FORMAT_NAMES[part] for part in _split(fmt))
            self.formats[fmt] = f"_S_{name}"
        return self.formats[fmt]

    def array_structs(self, fmt: str) -> str:
        name = f"_A_{FORMAT_NAMES[fmt]}"
        self.arrays[name] = fmt
        return name

    def default_instance(self, struct: StructSpec) -> str:
        if struct.path not in self.default_instances:
            self.default_instances[struct.path] = f"_D_{struct.stem}"
        return self.default_instances[struct.path]

    def function(self, prefix: str, stem: str, version: int, params: str, body: list[str]) -> str:
        text = "\n".join(body)
        key = (f"{prefix}_{stem}", text)
        if key not in self.bodies:
            name = f"{prefix}_{stem}_v{version}"
            self.bodies[key] = name
            self.functions.append(f"def {name}({params}):\n{text}\n")
        return self.bodies[key]


def _split(fmt: str) -> list[str]:
    return re.findall(r"16s|[?bhiqHId]", fmt)


class Context:
    """One (message, version): whether it is flexible, and the module collecting code."""

    def __init__(self, module: Module, message: Message, version: int) -> None:
        self.module = module
        self.message = message
        self.version = version
        self.flex = version in message.flexible

    def field_flex(self, f: FieldSpec) -> bool:
        return self.version in f.flexible if f.flexible is not None else self.flex

    def nullable(self, f: FieldSpec) -> bool:
        return self.version in f.nullable

    def present(self, f: FieldSpec) -> bool:
        return self.version in f.versions

    def is_tagged(self, f: FieldSpec) -> bool:
        return self.version in f.tagged

    def min_size(self, struct: StructSpec) -> int:
        """Fewest bytes one encoded element of `struct` takes at this version."""
        total = 1 if self.flex else 0
        for f in struct.fields:
            if not self.present(f) or self.is_tagged(f):
                continue
            if f.is_array or f.elem in VARIABLE:
                total += 1 if self.field_flex(f) else (2 if f.type == "string" else 4)
            elif f.struct is not None:
                total += 1 if self.nullable(f) else self.min_size(f.struct)
            else:
                total += FIXED[f.elem][1]
        return total

    # ---- decoding

    def decoder(self, struct: StructSpec) -> str:
        lines: list[str] = []
        tagged: list[FieldSpec] = []
        group: list[tuple[str, FieldSpec]] = []
        for f in struct.fields:
            if not self.present(f):
                continue
            if self.is_tagged(f):
                tagged.append(f)
                continue
            if not f.is_array and f.elem in FIXED:
                group.append((f"f_{f.attr}", f))
                continue
            self._flush_decode_group(group, lines, "    ")
            self._decode_value(f, f"f_{f.attr}", lines, "    ", self.field_flex(f))
        self._flush_decode_group(group, lines, "    ")
        if self.flex:
            self._decode_tagged(tagged, lines)
        args = ", ".join(
            f"{f.attr}=f_{f.attr}" for f in struct.fields if self.present(f) or f in tagged
        )
        lines.append(f"    return {_alias(struct)}({args}), pos")
        return self.module.function("_d", struct.stem, self.version, "buf, pos", lines)

    def _flush_decode_group(
        self, group: list[tuple[str, FieldSpec]], lines: list[str], indent: str
    ) -> None:
        if not group:
            return
        fmt = "".join(FIXED[f.elem][0] for _, f in group)
        size = sum(FIXED[f.elem][1] for _, f in group)
        targets = ", ".join(var for var, _ in group)
        if len(group) == 1:
            targets = f"({targets},)"
        lines.append(f"{indent}{targets} = {self.module.fmt(fmt)}.unpack_from(buf, pos)")
        lines.append(f"{indent}pos += {size}")
        for var, f in group:
            if f.elem == "uuid":
                lines.append(f"{indent}{var} = uuid_from_bytes({var})")
        group.clear()

    def _decode_value(
        self, f: FieldSpec, var: str, lines: list[str], indent: str, flex: bool
    ) -> None:
        nullable = self.nullable(f)
        if f.is_array:
            if flex:  # inline fast path of read_compact_array_length
                lines.append(f"{indent}n = buf[pos] - 1")
                lines.append(f"{indent}if n < 0x7F:")
                lines.append(f"{indent}    pos += 1")
                lines.append(f"{indent}else:")
                lines.append(f"{indent}    n, pos = read_compact_array_length(buf, pos)")
            else:
                lines.append(f"{indent}n, pos = read_array_length(buf, pos)")
            lines.append(f"{indent}if n < 0:")
            if nullable:
                lines.append(f"{indent}    {var} = None")
            else:
                lines.append(
                    f'{indent}    raise DecodeError("non-nullable array {f.name} is null")'
                )
            lines.append(f"{indent}else:")
            inner = indent + "    "
            if f.elem in FIXED:
                fmt, size = FIXED[f.elem]
                if f.elem == "uuid":
                    # Checked before building the list: a lying count must not make
                    # millions of UUIDs out of nothing.
                    lines.append(f"{inner}if pos + 16 * n > len(buf):")
                    lines.append(
                        f'{inner}    raise DecodeError(f"uuid array {f.name} of {{n}} runs '
                        'past the end")'
                    )
                    lines.append(f"{inner}{var} = [")
                    lines.append(f"{inner}    uuid_from_bytes(bytes(buf[p : p + 16]))")
                    lines.append(f"{inner}    for p in range(pos, pos + 16 * n, 16)")
                    lines.append(f"{inner}]")
                else:
                    arrays = self.module.array_structs(fmt)
                    lines.append(f"{inner}{var} = list({arrays}[n].unpack_from(buf, pos))")
                lines.append(f"{inner}pos += {size} * n")
                return
            if f.struct is not None:
                element_size = self.min_size(f.struct)
                item = f"{self.decoder(f.struct)}(buf, pos)"
            else:
                element_size = 1 if flex else (2 if f.elem == "string" else 4)
                item = f"{self._variable_reader(f.elem, False, flex)}(buf, pos)"
            if element_size > 0:
                # Each element takes at least element_size bytes: a count the remaining bytes
                # cannot hold fails here, before any element is decoded.
                scaled = "n" if element_size == 1 else f"n * {element_size}"
                lines.append(f"{inner}if {scaled} > len(buf) - pos:")
                lines.append(
                    f'{inner}    raise DecodeError(f"array {f.name} of {{n}} runs past the end")'
                )
            lines.append(f"{inner}{var} = []")
            lines.append(f"{inner}for _ in range(n):")
            lines.append(f"{inner}    item, pos = {item}")
            lines.append(f"{inner}    {var}.append(item)")
            return
        if f.struct is not None:
            call = f"{self.decoder(f.struct)}(buf, pos)"
            if nullable:
                lines.append(f"{indent}(present,) = {self.module.fmt('b')}.unpack_from(buf, pos)")
                lines.append(f"{indent}pos += 1")
                lines.append(f"{indent}if present < 0:")
                lines.append(f"{indent}    {var} = None")
                lines.append(f"{indent}else:")
                lines.append(f"{indent}    {var}, pos = {call}")
            else:
                lines.append(f"{indent}{var}, pos = {call}")
            return
        if f.elem in FIXED:
            fmt, size = FIXED[f.elem]
            lines.append(f"{indent}({var},) = {self.module.fmt(fmt)}.unpack_from(buf, pos)")
            lines.append(f"{indent}pos += {size}")
            if f.elem == "uuid":
                lines.append(f"{indent}{var} = uuid_from_bytes({var})")
            return
        reader = self._variable_reader(f.elem, nullable or f.elem == "records", flex)
        lines.append(f"{indent}{var}, pos = {reader}(buf, pos)")
        if f.elem == "records" and not nullable:
            lines.append(f"{indent}if {var} is None:")
            lines.append(f'{indent}    raise DecodeError("non-nullable records {f.name} are null")')

    @staticmethod
    def _variable_reader(elem: str, nullable: bool, flex: bool) -> str:
        kind = {"string": "string", "bytes": "bytes", "records": "records"}[elem]
        name = f"{'nullable_' if nullable and elem != 'records' else ''}{kind}"
        return f"read_{'compact_' if flex else ''}{name}"

    def _decode_tagged(self, tagged: list[FieldSpec], lines: list[str]) -> None:
        if not tagged:
            lines.append("    if buf[pos]:")
            lines.append("        pos = skip_tagged_fields(buf, pos)")
            lines.append("    else:")
            lines.append("        pos += 1")
            return
        for f in tagged:
            source, factory = default_source(f)
            if factory:
                source = "[]" if f.is_array or f.struct is None else f"{_alias(f.struct)}()"
            lines.append(f"    f_{f.attr} = {source}")
        lines.append("    if buf[pos]:")
        lines.append("        n_tags, pos = read_uvarint(buf, pos)")
        lines.append("        for _ in range(n_tags):")
        lines.append("            tag, end, pos = read_tagged_field_header(buf, pos)")
        keyword_ = "if"
        for f in sorted(tagged, key=lambda f: f.tag or 0):
            lines.append(f"            {keyword_} tag == {f.tag}:")
            self._decode_value(f, f"f_{f.attr}", lines, " " * 16, True)
            lines.append("                if pos != end:")
            lines.append(
                f'                    raise DecodeError("tagged field {f.name} has a bad size")'
            )
            keyword_ = "elif"
        lines.append("            pos = end")
        lines.append("    else:")
        lines.append("        pos += 1")

    # ---- encoding

    def encoder(self, struct: StructSpec) -> str:
        lines: list[str] = []
        tagged: list[FieldSpec] = []
        group: list[FieldSpec] = []
        for f in struct.fields:
            if not self.present(f):
                # Responses are built once for every version by the broker's handlers, so a
                # field the version lacks is dropped as if it were ignorable; requests stay
                # strict (a client must not silently lose what it asked for).
                if not f.ignorable and self.message.kind == "request":
                    self._check_absent(f, lines)
                continue
            if self.is_tagged(f):
                tagged.append(f)
                continue
            if not f.is_array and f.elem in FIXED:
                group.append(f)
                continue
            self._flush_encode_group(group, lines, "    ", "w")
            self._encode_value(f, f"o.{f.attr}", lines, "    ", "w", self.field_flex(f))
        self._flush_encode_group(group, lines, "    ", "w")
        if self.flex:
            self._encode_tagged(tagged, lines)
        if not lines:
            lines.append("    pass")
        return self.module.function("_e", struct.stem, self.version, "w, o", lines)

    def _nondefault(self, f: FieldSpec, expr: str) -> str:
        """Condition that `expr` (the field's value) differs from the field's default."""
        source, factory = default_source(f)
        if source == "None":
            return f"{expr} is not None"
        if f.is_array:
            return f"({expr} is None or len({expr}) > 0)"
        if f.struct is not None:
            return f"{expr} != {self.module.default_instance(f.struct)}"
        if f.type == "bool":
            return expr if source == "False" else f"not {expr}"
        return f"{expr} != {source}"

    def _check_absent(self, f: FieldSpec, lines: list[str]) -> None:
        lines.append(f"    if {self._nondefault(f, f'o.{f.attr}')}:")
        lines.append(
            f'        raise _not_in_version("{self.message.name}", "{f.attr}", {self.version})'
        )

    def _flush_encode_group(
        self, group: list[FieldSpec], lines: list[str], indent: str, write: str
    ) -> None:
        if not group:
            return
        fmt = "".join(FIXED[f.elem][0] for f in group)
        values = ", ".join(
            f"o.{f.attr}.bytes" if f.elem == "uuid" else f"o.{f.attr}" for f in group
        )
        lines.append(f"{indent}{write}({self.module.fmt(fmt)}.pack({values}))")
        group.clear()

    def _encode_value(
        self, f: FieldSpec, expr: str, lines: list[str], indent: str, write: str, flex: bool
    ) -> None:
        nullable = self.nullable(f)
        if f.is_array:
            lines.append(f"{indent}x = {expr}")
            inner = indent
            if nullable:
                lines.append(f"{indent}if x is None:")
                lines.append(f"{indent}    {write}({_NULL_COMPACT if flex else '_NULL32'})")
                lines.append(f"{indent}else:")
                inner = indent + "    "
            if f.elem in FIXED and f.elem != "uuid":
                arrays = self.module.array_structs(FIXED[f.elem][0])
                if flex:
                    lines.append(f"{inner}{write}(uvarint(len(x) + 1))")
                else:
                    lines.append(f"{inner}{write}({self.module.fmt('i')}.pack(len(x)))")
                lines.append(f"{inner}{write}({arrays}[len(x)].pack(*x))")
                return
            if flex:
                lines.append(f"{inner}{write}(uvarint(len(x) + 1))")
            else:
                lines.append(f"{inner}{write}({self.module.fmt('i')}.pack(len(x)))")
            lines.append(f"{inner}for item in x:")
            if f.struct is not None:
                lines.append(f"{inner}    {self.encoder(f.struct)}({write}, item)")
            elif f.elem == "uuid":
                lines.append(f"{inner}    {write}(item.bytes)")
            else:
                self._encode_variable(f.elem, False, flex, "item", lines, inner + "    ", write)
            return
        if f.struct is not None:
            call = f"{self.encoder(f.struct)}({write}, {{}})"
            if nullable:
                lines.append(f"{indent}x = {expr}")
                lines.append(f"{indent}if x is None:")
                lines.append(f'{indent}    {write}(b"\\xff")')
                lines.append(f"{indent}else:")
                lines.append(f'{indent}    {write}(b"\\x01")')
                lines.append(f"{indent}    {call.format('x')}")
            else:
                lines.append(f"{indent}{call.format(expr)}")
            return
        if f.elem in FIXED:
            value = f"{expr}.bytes" if f.elem == "uuid" else expr
            lines.append(f"{indent}{write}({self.module.fmt(FIXED[f.elem][0])}.pack({value}))")
            return
        self._encode_variable(f.elem, nullable, flex, expr, lines, indent, write)

    @staticmethod
    def _encode_variable(
        elem: str, nullable: bool, flex: bool, expr: str, lines: list[str], indent: str, write: str
    ) -> None:
        if elem == "string":
            name = f"{'compact_' if flex else ''}{'nullable_' if nullable else ''}string"
            lines.append(f"{indent}{write}({name}({expr}))")
        else:
            name = f"write_{'compact_' if flex else ''}{'nullable_' if nullable else ''}bytes"
            lines.append(f"{indent}{name}({write}, {expr})")

    def _encode_tagged(self, tagged: list[FieldSpec], lines: list[str]) -> None:
        if not tagged:
            lines.append('    w(b"\\x00")')
            return
        lines.append("    tags = []")
        for f in sorted(tagged, key=lambda f: f.tag or 0):
            lines.append(f"    if {self._nondefault(f, f'o.{f.attr}')}:")
            lines.append("        parts = []")
            self._encode_value(f, f"o.{f.attr}", lines, " " * 8, "parts.append", True)
            lines.append(f"        tags.append(({f.tag}, parts))")
        lines.append("    w(tagged_fields(tags))")


def _alias(struct: StructSpec) -> str:
    return f"_{struct.stem}" if "." in struct.path else struct.path


# ------------------------------------------------------------------------------ module text


def render_class(message: Message, struct: StructSpec, indent: str) -> list[str]:
    lines = [f"{indent}class {struct.name}(msgspec.Struct, kw_only=True, gc=False):"]
    body = indent + "    "
    if struct is message.root:
        where = f"API key {message.api_key}, " if message.api_key is not None else ""
        lines.append(
            f'{body}"""{message.name}: {where}versions {message.valid}, '
            f'flexible {message.flexible}."""'
        )
        if message.api_key is not None:
            lines.append("")
            lines.append(f"{body}API_KEY: ClassVar[int] = {message.api_key}")
    else:
        lines.append(f'{body}"""Struct {struct.name} of {message.name}."""')
    lines.append("")
    for f in struct.fields:
        notes = [f"versions {f.versions}"]
        if not f.nullable.empty:
            notes.append(f"nullable {f.nullable}")
        if f.tag is not None:
            notes.append(f"tag {f.tag} in {f.tagged}")
        if f.flexible is not None:
            notes.append(f"flexible {f.flexible}")
        if f.ignorable:
            notes.append("ignorable")
        lines.append(f"{body}# {f.type}: {', '.join(notes)}")
        source, factory = default_source(f)
        if factory:
            source = f"msgspec.field(default_factory={source})"
        lines.append(f"{body}{f.attr}: {py_annotation(f)} = {source}")
    if struct is message.root:
        for nested in message.structs:
            lines.append("")
            lines.extend(render_class(message, nested, body))
    return lines


def render(messages: list[Message], digest: str) -> str:
    module = Module()
    headers = {m.name: m for m in messages if m.kind == "header"}
    apis = sorted(
        (m for m in messages if m.kind in ("request", "response")),
        key=lambda m: (m.api_key, m.kind),
    )
    tables: dict[str, list[str]] = {
        "REQUEST_DECODERS": [],
        "REQUEST_ENCODERS": [],
        "RESPONSE_DECODERS": [],
        "RESPONSE_ENCODERS": [],
    }
    for message in apis:
        prefix = "REQUEST" if message.kind == "request" else "RESPONSE"
        for version in versions_of(message):
            ctx = Context(module, message, version)
            key = f"({message.api_key}, {version})"
            tables[f"{prefix}_DECODERS"].append(f"    {key}: {ctx.decoder(message.root)},")
            tables[f"{prefix}_ENCODERS"].append(f"    {key}: {ctx.encoder(message.root)},")
    header_tables: dict[str, list[str]] = {}
    for name, prefix in (("RequestHeader", "REQUEST"), ("ResponseHeader", "RESPONSE")):
        message = headers[name]
        decoders, encoders = [], []
        for version in versions_of(message):
            ctx = Context(module, message, version)
            decoders.append(ctx.decoder(message.root))
            encoders.append(ctx.encoder(message.root))
        header_tables[f"{prefix}_HEADER_DECODERS"] = decoders
        header_tables[f"{prefix}_HEADER_ENCODERS"] = encoders

    requests = {m.api_key: m for m in apis if m.kind == "request"}
    responses = {m.api_key: m for m in apis if m.kind == "response"}
    for api_key, request in requests.items():
        response = responses[api_key]
        if request.valid != response.valid or request.flexible != response.flexible:
            raise ValueError(f"{request.name} and {response.name} disagree on versions")

    code = "\n".join(module.functions)
    code += " EncodeError"  # always used by _not_in_version
    if module.arrays:
        code += " ArrayStructs"
    used = [name for name in PRIMITIVE_NAMES if re.search(rf"\b{name}\b", code)]
    imports = (
        "from streamhouse.kafka.primitives import (\n"
        + "".join(f"    {name},\n" for name in used)
        + ")\n"
    )
    out: list[str] = []
    add = out.append
    head = f'''"""Kafka protocol messages and their codecs: GENERATED, do not edit.

Written by `python -m streamhouse.kafka.generate <specs>` from Apache Kafka's JSON message specs
({len(messages)} request, response and header specs; digest {digest} of the spec directory).
Change the generator and re-run it.

One msgspec Struct per message (fields of all versions; the comment above each field gives the
versions that carry it) with nested structs as class attributes, e.g.
`ProduceRequest.TopicProduceData`. Codecs are separate functions, looked up in the tables:

    REQUEST_DECODERS[(api_key, version)](buf: memoryview, pos) -> (message, new_pos)
    REQUEST_ENCODERS[(api_key, version)](write, message)  # write(part) for each encoded part
    RESPONSE_DECODERS / RESPONSE_ENCODERS, and *_HEADER_DECODERS / *_HEADER_ENCODERS[version]

`records` fields decode to a memoryview slice of `buf` (zero-copy) and are written as given.
Use `streamhouse.kafka.framing` for whole frames.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, ClassVar
from uuid import UUID

import msgspec

{imports}
Decoder = Callable[[memoryview, int], tuple[Any, int]]
Encoder = Callable[[Callable[[Any], object], Any], None]

_ZERO_UUID = UUID(int=0)
_NULL32 = b"\\xff\\xff\\xff\\xff"


def _not_in_version(message: str, attr: str, version: int) -> EncodeError:
    return EncodeError(f"{{message}}.{{attr}} is not default but version {{version}} lacks it")
'''
    add(head)
    for message in [headers["RequestHeader"], headers["ResponseHeader"], *apis]:
        add("")
        add("\n".join(render_class(message, message.root, "")))
        add("")
    add("")
    for message in [headers["RequestHeader"], headers["ResponseHeader"], *apis]:
        for struct in message.structs:
            add(f"_{struct.stem} = {struct.path}")
    for path, name in module.default_instances.items():
        add(f"{name} = {path}()")
    add("")
    for fmt, name in sorted(module.formats.items(), key=lambda item: item[1]):
        add(f'{name} = struct.Struct(">{fmt}")')
    for name, fmt in sorted(module.arrays.items()):
        add(f'{name} = ArrayStructs("{fmt}")')
    add("")
    for text in module.functions:
        add("")
        add(text)
    add("")
    for name, entries in tables.items():
        kind = "Decoder" if "DECODERS" in name else "Encoder"
        add(f"{name}: dict[tuple[int, int], {kind}] = {{")
        out.extend(entries)
        add("}")
    for name, functions in header_tables.items():
        kind = "Decoder" if "DECODERS" in name else "Encoder"
        add(f"{name}: tuple[{kind}, ...] = ({', '.join(functions)},)")
    add("")
    add('"""Every generated API: api_key -> (min_version, max_version)."""')
    add("SUPPORTED: dict[int, tuple[int, int]] = {")
    for api_key, request in requests.items():
        add(f"    {api_key}: ({request.valid.lo}, {request.valid.hi}),")
    add("}")
    add('"""api_key -> API name, as in Kafka\'s ApiKeys ("Produce", "Fetch", ...)."""')
    add("API_NAMES: dict[int, str] = {")
    for api_key, request in requests.items():
        add(f"    {api_key}: {request.name.removesuffix('Request')!r},")
    add("}")
    add("REQUEST_TYPES: dict[int, type[Any]] = {")
    for api_key, request in requests.items():
        add(f"    {api_key}: {request.name},")
    add("}")
    add("RESPONSE_TYPES: dict[int, type[Any]] = {")
    for api_key, response in responses.items():
        add(f"    {api_key}: {response.name},")
    add("}")
    unstable = sorted(k for k, m in requests.items() if m.unstable_latest)
    add('"""APIs whose latest version the specs mark unstable (brokers do not advertise it)."""')
    add(f"UNSTABLE_LATEST: frozenset[int] = frozenset({{{', '.join(map(str, unstable))}}})")
    add("_FIRST_FLEXIBLE: dict[int, int] = {")
    for api_key, request in requests.items():
        first = request.flexible.lo if not request.flexible.empty else 1 << 15
        add(f"    {api_key}: {first},")
    add("}")
    add('''

def request_header_version(api_key: int, api_version: int) -> int:
    """Request header version of a request (also for versions newer than the specs')."""
    if api_version >= _FIRST_FLEXIBLE[api_key]:
        return 2
    if api_key == 7 and api_version == 0:  # ControlledShutdown v0 predates ClientId
        return 0
    return 1


def response_header_version(api_key: int, api_version: int) -> int:
    """Response header version of a response; ApiVersions always answers with v0."""
    if api_key == 18:
        return 0
    return 1 if api_version >= _FIRST_FLEXIBLE[api_key] else 0
''')
    return "\n".join(out)


def format_with_ruff(path: Path) -> bool:
    """Run `ruff format` on the output; False when ruff is not installed."""
    ruff = shutil.which("ruff")
    command = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    try:
        subprocess.run([*command, "format", "--quiet", str(path)], check=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def generate(spec_dir: Path, output: Path = OUTPUT, *, format_code: bool = True) -> Path:
    """Write the generated module for the specs in `spec_dir` to `output`."""
    messages = load_messages(spec_dir)
    text = render(messages, spec_digest(spec_dir))
    output.write_text(text, encoding="utf-8")
    if format_code and not format_with_ruff(output):
        print(f"warning: ruff not found, {output} left unformatted", file=sys.stderr)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamhouse.kafka.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("spec_dir", type=Path, help="directory of Kafka's message/*.json specs")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT, help="module to write")
    parser.add_argument("--no-format", action="store_true", help="do not run ruff format")
    args = parser.parse_args(argv)
    if not args.spec_dir.is_dir():
        parser.error(f"{args.spec_dir} is not a directory")
    path = generate(args.spec_dir, args.output, format_code=not args.no_format)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
