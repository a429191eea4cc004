"""ACL bindings and filters on Kafka's wire: the fields of CreateAcls, DescribeAcls and
DeleteAcls (streamhouse/kafka/messages.py, from Kafka's JSON schemas) to and from
:class:`~streamhouse.acl.AclBinding` / :class:`~streamhouse.acl.AclFilter`.

Sans-I/O; used by the broker's ACL APIs (ingest/kafka/api_acls.py) and by ``streamctl acl
--bootstrap-server`` (streamhouse/aclctl.py). Every enum crosses as its Kafka code (the
numbers of streamhouse/acl.py's enums); names and principals as strings. Field names:

- a binding in CreateAcls' ``AclCreation``: resource_type, resource_name,
  resource_pattern_type, principal, host, operation, permission_type;
- a binding in DescribeAcls' answer: resource_type, resource_name, pattern_type per resource,
  then principal, host, operation, permission_type per ``AclDescription``; in DeleteAcls'
  ``DeleteAclsMatchingAcl`` all seven on one struct (same names);
- a filter (DescribeAclsRequest, DeleteAcls' ``DeleteAclsFilter``): resource_type_filter,
  resource_name_filter, pattern_type_filter, principal_filter, host_filter, operation,
  permission_type (null strings match any).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from streamhouse.acl import (
    AclBinding,
    AclFilter,
    AclOperation,
    PatternType,
    Permission,
    ResourceType,
)

E = TypeVar("E", ResourceType, PatternType, AclOperation, Permission)
#: How a wire code becomes an enum member: :func:`lenient_code` or the enum itself (strict).
Decode = Callable[[type[Any], int], Any]


def lenient_code(kind: type[E], value: int) -> E:
    """The enum member of a wire code; an unknown code is UNKNOWN (refused by validation)."""
    try:
        return kind(value)
    except ValueError:
        return kind.UNKNOWN


def strict_code(kind: type[E], value: int) -> E:
    """The enum member of a wire code; an unknown code raises ValueError naming it."""
    return kind(value)


def binding_from_wire(
    resource_type: int, name: str, pattern_type: int, entry: Any, code: Decode = lenient_code
) -> AclBinding:
    """The binding of a resource pattern and an entry with ``principal``, ``host``,
    ``operation`` and ``permission_type`` (a CreateAcls creation, a DescribeAcls description,
    a DeleteAcls match)."""
    return AclBinding(
        code(ResourceType, resource_type),
        name,
        code(PatternType, pattern_type),
        entry.principal,
        entry.host,
        code(AclOperation, entry.operation),
        code(Permission, entry.permission_type),
    )


def entry_fields(b: AclBinding) -> dict[str, Any]:
    """The access-control-entry fields of ``b`` (principal, host, operation, permission)."""
    return {
        "principal": b.principal,
        "host": b.host,
        "operation": b.operation,
        "permission_type": b.permission,
    }


def creation_fields(b: AclBinding) -> dict[str, Any]:
    """The fields of ``b`` as a CreateAcls ``AclCreation``."""
    return {
        "resource_type": b.resource_type,
        "resource_name": b.name,
        "resource_pattern_type": b.pattern_type,
        **entry_fields(b),
    }


def match_fields(b: AclBinding) -> dict[str, Any]:
    """The fields of ``b`` as a DeleteAcls ``DeleteAclsMatchingAcl`` (without its error)."""
    return {
        "resource_type": b.resource_type,
        "resource_name": b.name,
        "pattern_type": b.pattern_type,
        **entry_fields(b),
    }


def filter_from_wire(f: Any) -> AclFilter:
    """The filter of a DescribeAclsRequest or a DeleteAclsFilter (unknown codes: UNKNOWN)."""
    return AclFilter(
        lenient_code(ResourceType, f.resource_type_filter),
        f.resource_name_filter,
        lenient_code(PatternType, f.pattern_type_filter),
        f.principal_filter,
        f.host_filter,
        lenient_code(AclOperation, f.operation),
        lenient_code(Permission, f.permission_type),
    )


def filter_fields(f: AclFilter) -> dict[str, Any]:
    """The fields of ``f`` as a DescribeAclsRequest or a DeleteAclsFilter."""
    return {
        "resource_type_filter": f.resource_type,
        "resource_name_filter": f.name,
        "pattern_type_filter": f.pattern_type,
        "principal_filter": f.principal,
        "host_filter": f.host,
        "operation": f.operation,
        "permission_type": f.permission,
    }
