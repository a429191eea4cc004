"""Kafka ACLs: bindings, filters and the decision whether a principal may do an operation.

Sans-I/O: this module holds no connection and reads no store. The ingest process loads every
binding from the metadata catalog (ingest/authorizer.py) into an :class:`Authorizer`
snapshot and asks it; `streamctl acl` and the ACL APIs use the same bindings, filters and
catalog encoding.

The model is Kafka's ``AclBinding``: a resource pattern (resource type, name, pattern type)
and an access control entry (principal, host, operation, permission). Numbers are Kafka's wire
codes (the enums below), so a binding crosses CreateAcls/DescribeAcls/DeleteAcls unchanged.

Rules of a decision (``Authorizer.authorize``), Kafka's:

1. A super user (``super_users``) may do everything; no ACL is consulted.
2. An ACL applies to a request when its resource type is the resource's, its pattern matches
   the name (LITERAL: equal, or the literal name ``*``; PREFIXED: the name starts with it),
   its principal is the caller's or ``User:*``, and its host is the caller's or ``*``.
3. A DENY applies to its own operation only (and ALL to every operation); a DENY that
   applies wins over every ALLOW.
4. An ALLOW of an operation also allows what it implies: DESCRIBE is implied by READ, WRITE,
   DELETE and ALTER; DESCRIBE_CONFIGS by ALTER_CONFIGS; ALL implies every operation.
5. With no ACL at all on the resource (for any principal), the answer is
   ``allow_everyone_if_no_acl_found`` (false by default: nothing is allowed that no ACL
   allows).

Catalog encoding (kind ``acl``, one entry per binding): the entry's name is the SHA-256 hex
digest of the binding's definition, so the same binding stored twice is one entry (Kafka
treats creating an existing ACL as success); the definition is UTF-8 JSON with every enum by
name::

    {"resource_type": "TOPIC", "name": "orders", "pattern_type": "LITERAL",
     "principal": "User:alice", "host": "*", "operation": "READ", "permission": "ALLOW"}
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Final

import msgspec

__all__ = [
    "CATALOG_KIND",
    "CLUSTER_NAME",
    "AclBinding",
    "AclFilter",
    "AclOperation",
    "Authorizer",
    "PatternType",
    "Permission",
    "ResourceType",
    "decode_binding",
    "encode_binding",
    "binding_error",
    "filter_error",
    "parse_super_users",
]

#: Catalog kind of the stored bindings.
CATALOG_KIND: Final = "acl"
#: The one name of the CLUSTER resource (Kafka's).
CLUSTER_NAME: Final = "kafka-cluster"
#: A LITERAL resource name matching every name of its type.
WILDCARD: Final = "*"
#: The principal matching every principal.
WILDCARD_PRINCIPAL: Final = "User:*"
#: The host matching every host.
WILDCARD_HOST: Final = "*"


class ResourceType(enum.IntEnum):
    """Kafka's resource type codes (ANY only in filters)."""

    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(enum.IntEnum):
    """Kafka's pattern type codes (ANY and MATCH only in filters)."""

    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class AclOperation(enum.IntEnum):
    """Kafka's ACL operation codes (ANY only in filters)."""

    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Permission(enum.IntEnum):
    """Kafka's permission type codes (ANY only in filters)."""

    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


Op = AclOperation

#: What an ALLOW of each operation allows besides itself (rule 4; ALL is handled apart).
_IMPLIED_BY: Final[dict[AclOperation, frozenset[AclOperation]]] = {
    Op.DESCRIBE: frozenset({Op.READ, Op.WRITE, Op.DELETE, Op.ALTER}),
    Op.DESCRIBE_CONFIGS: frozenset({Op.ALTER_CONFIGS}),
}

#: The operations each resource type supports (Kafka's lists), for authorized-operations sets.
OPERATIONS: Final[dict[ResourceType, tuple[AclOperation, ...]]] = {
    ResourceType.TOPIC: (
        Op.READ,
        Op.WRITE,
        Op.CREATE,
        Op.DELETE,
        Op.ALTER,
        Op.DESCRIBE,
        Op.DESCRIBE_CONFIGS,
        Op.ALTER_CONFIGS,
    ),
    ResourceType.GROUP: (Op.READ, Op.DELETE, Op.DESCRIBE),
    ResourceType.CLUSTER: (
        Op.CREATE,
        Op.ALTER,
        Op.DESCRIBE,
        Op.CLUSTER_ACTION,
        Op.DESCRIBE_CONFIGS,
        Op.ALTER_CONFIGS,
        Op.IDEMPOTENT_WRITE,
    ),
    ResourceType.TRANSACTIONAL_ID: (Op.WRITE, Op.DESCRIBE),
    ResourceType.DELEGATION_TOKEN: (Op.DESCRIBE,),
    ResourceType.USER: (Op.CREATE_TOKENS, Op.DESCRIBE_TOKENS),
}


class AclBinding(msgspec.Struct, frozen=True):
    """One ACL: who (principal, host) may or may not (permission) do what (operation) on
    which resources (type, name, pattern type)."""

    resource_type: ResourceType
    name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: AclOperation
    permission: Permission


class AclFilter(msgspec.Struct, frozen=True):
    """A selection of bindings (DescribeAcls, DeleteAcls, `streamctl acl list/delete`):
    ``None`` strings and the ANY codes match everything; pattern type MATCH selects the
    bindings that would apply to the named resource."""

    resource_type: ResourceType = ResourceType.ANY
    name: str | None = None
    pattern_type: PatternType = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: AclOperation = AclOperation.ANY
    permission: Permission = Permission.ANY

    def matches(self, b: AclBinding) -> bool:
        if self.resource_type not in (ResourceType.ANY, b.resource_type):
            return False
        if not self._matches_pattern(b):
            return False
        if self.principal is not None and self.principal != b.principal:
            return False
        if self.host is not None and self.host != b.host:
            return False
        if self.operation not in (AclOperation.ANY, b.operation):
            return False
        return self.permission in (Permission.ANY, b.permission)

    def _matches_pattern(self, b: AclBinding) -> bool:
        kind = self.pattern_type
        if kind == PatternType.MATCH:
            if self.name is None:
                return True
            if b.pattern_type == PatternType.PREFIXED:
                return self.name.startswith(b.name)
            return b.name in (self.name, WILDCARD)
        if kind != PatternType.ANY and kind != b.pattern_type:
            return False
        return self.name is None or self.name == b.name


def _principal_error(principal: str) -> str | None:
    kind, sep, name = principal.partition(":")
    if not sep or not kind or not name:
        return f"principal {principal!r} is not of the form TYPE:NAME (e.g. User:alice, User:*)"
    return None


def _host_error(host: str) -> str | None:
    if host == WILDCARD_HOST:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"host {host!r} is neither '*' nor an IP address"
    return None


def binding_error(b: AclBinding) -> str | None:
    """Why ``b`` may not be stored (Kafka's checks on a new ACL), or None when it may."""
    if b.resource_type in (ResourceType.UNKNOWN, ResourceType.ANY):
        return f"resource type {b.resource_type.name} is not a resource: name one (TOPIC, ...)"
    if b.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
        return f"pattern type {b.pattern_type.name} is only a filter: use LITERAL or PREFIXED"
    if not b.name:
        return "the resource name is empty"
    if b.resource_type == ResourceType.CLUSTER and b.name != CLUSTER_NAME:
        return f"the only CLUSTER resource name is {CLUSTER_NAME!r}, not {b.name!r}"
    if b.operation in (AclOperation.UNKNOWN, AclOperation.ANY):
        return f"operation {b.operation.name} is only a filter: name an operation (READ, ...)"
    if b.operation != AclOperation.ALL and b.operation not in OPERATIONS[b.resource_type]:
        supported = ", ".join(o.name for o in OPERATIONS[b.resource_type])
        return (
            f"operation {b.operation.name} does not apply to a {b.resource_type.name} "
            f"(it takes ALL, {supported})"
        )
    if b.permission not in (Permission.ALLOW, Permission.DENY):
        return f"permission {b.permission.name} is only a filter: use ALLOW or DENY"
    return _principal_error(b.principal) or _host_error(b.host)


def filter_error(f: AclFilter) -> str | None:
    """Why ``f`` is not a valid filter, or None when it is."""
    if f.resource_type == ResourceType.UNKNOWN:
        return "the filter's resource type is UNKNOWN"
    if f.pattern_type == PatternType.UNKNOWN:
        return "the filter's pattern type is UNKNOWN"
    if f.operation == AclOperation.UNKNOWN:
        return "the filter's operation is UNKNOWN"
    if f.permission == Permission.UNKNOWN:
        return "the filter's permission is UNKNOWN"
    return None


class _StoredBinding(msgspec.Struct, frozen=True):
    """The catalog definition: every enum by name (see the module docstring)."""

    resource_type: str
    name: str
    pattern_type: str
    principal: str
    host: str
    operation: str
    permission: str


def encode_binding(b: AclBinding) -> tuple[str, bytes]:
    """The catalog (name, definition) of a binding; equal bindings give equal entries."""
    definition = msgspec.json.encode(
        _StoredBinding(
            b.resource_type.name,
            b.name,
            b.pattern_type.name,
            b.principal,
            b.host,
            b.operation.name,
            b.permission.name,
        )
    )
    return hashlib.sha256(definition).hexdigest(), definition


def decode_binding(definition: bytes) -> AclBinding:
    """A binding back from its catalog definition; ``ValueError`` when it is not one."""
    try:
        s = msgspec.json.decode(definition, type=_StoredBinding)
        return AclBinding(
            ResourceType[s.resource_type],
            s.name,
            PatternType[s.pattern_type],
            s.principal,
            s.host,
            AclOperation[s.operation],
            Permission[s.permission],
        )
    except (msgspec.DecodeError, KeyError) as exc:
        raise ValueError(f"not an ACL binding definition: {exc}") from None


def parse_super_users(value: str) -> frozenset[str]:
    """The principals of a ``super_users`` setting (Kafka's ``super.users``: principals
    separated by semicolons, e.g. ``User:admin;User:ops``); ``ValueError`` names a bad one."""
    users = [p.strip() for p in value.split(";") if p.strip()]
    for principal in users:
        error = _principal_error(principal)
        if error is not None:
            raise ValueError(error)
    return frozenset(users)


def _resource_matches(b: AclBinding, name: str) -> bool:
    if b.pattern_type == PatternType.PREFIXED:
        return name.startswith(b.name)
    return b.name == name or b.name == WILDCARD


class Authorizer:
    """An immutable snapshot of the ACLs with the decision rules (module docstring).

    Decisions are remembered per snapshot (a new snapshot is made when the ACLs change), so
    the many partitions of one topic in a request cost one decision.
    """

    def __init__(
        self,
        bindings: Iterable[AclBinding],
        super_users: frozenset[str] = frozenset(),
        allow_everyone_if_no_acl_found: bool = False,
    ) -> None:
        self.bindings: tuple[AclBinding, ...] = tuple(dict.fromkeys(bindings))
        self.super_users = super_users
        self.allow_everyone_if_no_acl_found = allow_everyone_if_no_acl_found
        self._by_type: dict[ResourceType, list[AclBinding]] = {}
        for b in self.bindings:
            self._by_type.setdefault(b.resource_type, []).append(b)
        self._decisions: dict[tuple[str, str, AclOperation, ResourceType, str], bool] = {}

    def authorize(
        self,
        principal: str,
        host: str,
        operation: AclOperation,
        resource_type: ResourceType,
        name: str,
    ) -> bool:
        """May ``principal`` connecting from ``host`` do ``operation`` on the resource?"""
        if principal in self.super_users:
            return True
        key = (principal, host, operation, resource_type, name)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(principal, host, operation, resource_type, name)
            if len(self._decisions) >= 100_000:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _decide(
        self,
        principal: str,
        host: str,
        operation: AclOperation,
        resource_type: ResourceType,
        name: str,
    ) -> bool:
        on_resource = [
            b for b in self._by_type.get(resource_type, ()) if _resource_matches(b, name)
        ]
        if not on_resource:
            return self.allow_everyone_if_no_acl_found
        allowed = False
        implied = _IMPLIED_BY.get(operation, frozenset())
        for b in on_resource:
            if b.principal not in (principal, WILDCARD_PRINCIPAL):
                continue
            if b.host not in (host, WILDCARD_HOST):
                continue
            if b.permission == Permission.DENY:
                if b.operation in (operation, AclOperation.ALL):
                    return False
            elif b.operation in (operation, AclOperation.ALL) or b.operation in implied:
                allowed = True
        return allowed

    def authorized_operations(
        self, principal: str, host: str, resource_type: ResourceType, name: str
    ) -> int:
        """Kafka's authorized-operations bit set: bit ``op`` set for every operation the
        resource type supports that the caller may do."""
        bits = 0
        for operation in OPERATIONS[resource_type]:
            if self.authorize(principal, host, operation, resource_type, name):
                bits |= 1 << operation
        return bits

    def authorize_any(
        self, principal: str, host: str, operation: AclOperation, resource_type: ResourceType
    ) -> bool:
        """May the caller do ``operation`` on at least one resource of the type (Kafka's
        ``authorizeByResourceType``, used for idempotent producers)? True when an ALLOW of the
        operation (or ALL) applies to the caller and no DENY of it covers that ALLOW's whole
        pattern; with no ACL of the type at all, ``allow_everyone_if_no_acl_found``."""
        if principal in self.super_users:
            return True
        mine = [
            b
            for b in self._by_type.get(resource_type, ())
            if b.principal in (principal, WILDCARD_PRINCIPAL)
            and b.host in (host, WILDCARD_HOST)
            and b.operation in (operation, AclOperation.ALL)
        ]
        denies = [b for b in mine if b.permission == Permission.DENY]
        if any(d.pattern_type == PatternType.LITERAL and d.name == WILDCARD for d in denies):
            return False
        for allow in mine:
            if allow.permission != Permission.ALLOW:
                continue
            if not any(_covers(d, allow) for d in denies):
                return True
        if not self._by_type.get(resource_type):
            return self.allow_everyone_if_no_acl_found
        return False


def _covers(deny: AclBinding, allow: AclBinding) -> bool:
    """Does ``deny`` apply to every name ``allow`` applies to?"""
    if deny.pattern_type == PatternType.PREFIXED:
        return allow.name.startswith(deny.name)
    return allow.pattern_type == PatternType.LITERAL and allow.name == deny.name
