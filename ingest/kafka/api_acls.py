"""Authorisation: CreateAcls, DescribeAcls, DeleteAcls (v0-3; v0 knows LITERAL patterns only).

``APIS`` maps an API key to (name, lowest and highest advertised version, handler); the broker
merges it into what it advertises and dispatches.

The bindings live in the metadata catalog (ingest/authorizer.py; format in streamhouse/acl.py).
Who may call these is decided before the handler runs (ingest/kafka/authorize.py: ALTER on the
cluster for Create/Delete, DESCRIBE for Describe). As Kafka: with no authorizer configured
every call answers SECURITY_DISABLED; a bad binding or filter answers INVALID_REQUEST with
what is wrong, per creation or filter (DescribeAcls: for the request); creating a binding that
exists succeeds and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ingest.authorizer import acl_cache
from ingest.kafka import errors
from streamhouse.acl import binding_error, filter_error
from streamhouse.acl_wire import binding_from_wire, entry_fields, filter_from_wire, match_fields
from streamhouse.kafka.messages import (
    CreateAclsRequest,
    CreateAclsResponse,
    DeleteAclsRequest,
    DeleteAclsResponse,
    DescribeAclsRequest,
    DescribeAclsResponse,
    RequestHeader,
)

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker

_DISABLED = (
    "no authorizer is configured on this cluster: set STREAMHOUSE_AUTHORIZER=acl (README "
    '"Security") to store and enforce ACLs'
)


async def create_acls(
    broker: KafkaBroker, header: RequestHeader, request: CreateAclsRequest
) -> CreateAclsResponse:
    R = CreateAclsResponse.AclCreationResult
    cache = acl_cache(broker.settings, broker.meta)
    if not cache.enabled:
        return CreateAclsResponse(
            results=[
                R(error_code=errors.SECURITY_DISABLED, error_message=_DISABLED)
                for _ in request.creations
            ]
        )
    results = []
    for c in request.creations:
        binding = binding_from_wire(c.resource_type, c.resource_name, c.resource_pattern_type, c)
        problem = binding_error(binding)
        if problem is not None:
            results.append(R(error_code=errors.INVALID_REQUEST, error_message=problem))
            continue
        await cache.add(binding)
        results.append(R(error_code=0, error_message=None))
    return CreateAclsResponse(results=results)


async def describe_acls(
    broker: KafkaBroker, header: RequestHeader, request: DescribeAclsRequest
) -> DescribeAclsResponse:
    D = DescribeAclsResponse
    cache = acl_cache(broker.settings, broker.meta)
    if not cache.enabled:
        return D(error_code=errors.SECURITY_DISABLED, error_message=_DISABLED)
    selection = filter_from_wire(request)
    problem = filter_error(selection)
    if problem is not None:
        return D(error_code=errors.INVALID_REQUEST, error_message=problem)
    by_resource: dict[tuple[int, str, int], list[D.AclDescription]] = {}
    for b in sorted(
        await cache.list_bindings(selection),
        key=lambda b: (b.resource_type, b.name, b.pattern_type, b.principal, b.host),
    ):
        by_resource.setdefault((b.resource_type, b.name, b.pattern_type), []).append(
            D.AclDescription(**entry_fields(b))
        )
    return D(
        error_code=0,
        error_message=None,
        resources=[
            D.DescribeAclsResource(
                resource_type=rtype, resource_name=name, pattern_type=ptype, acls=acls
            )
            for (rtype, name, ptype), acls in by_resource.items()
        ],
    )


async def delete_acls(
    broker: KafkaBroker, header: RequestHeader, request: DeleteAclsRequest
) -> DeleteAclsResponse:
    D = DeleteAclsResponse
    cache = acl_cache(broker.settings, broker.meta)
    if not cache.enabled:
        return D(
            filter_results=[
                D.DeleteAclsFilterResult(
                    error_code=errors.SECURITY_DISABLED, error_message=_DISABLED
                )
                for _ in request.filters
            ]
        )
    results = []
    for f in request.filters:
        selection = filter_from_wire(f)
        problem = filter_error(selection)
        if problem is not None:
            results.append(
                D.DeleteAclsFilterResult(error_code=errors.INVALID_REQUEST, error_message=problem)
            )
            continue
        removed = await cache.remove(selection)
        results.append(
            D.DeleteAclsFilterResult(
                error_code=0,
                error_message=None,
                matching_acls=[
                    D.DeleteAclsMatchingAcl(error_code=0, error_message=None, **match_fields(b))
                    for b in removed
                ],
            )
        )
    return D(filter_results=results)


APIS: dict[int, tuple[str, int, int, Any]] = {
    29: ("DescribeAcls", 0, 3, describe_acls),
    30: ("CreateAcls", 0, 3, create_acls),
    31: ("DeleteAcls", 0, 3, delete_acls),
}
