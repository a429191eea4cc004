"""ACL enforcement on the gRPC service: which operation on which resource each method needs.

``method_handlers`` (ingest/grpc_service.py) wraps every service method with :func:`guarded`
before its error wrapper, so the caller's principal (set there from the token or client
certificate; ``User:ANONYMOUS`` without gRPC authentication) is known and a refusal becomes
PERMISSION_DENIED naming the principal, the operation and the resource. The same ACL snapshot
as the Kafka listener decides (ingest/authorizer.py); the same Kafka operations apply:

=================  =========================================================================
CreateTopic        CREATE topic (or CREATE cluster)
GetTopic           DESCRIBE topic
ListTopics         only the topics the caller may DESCRIBE are listed
AlterTopicConfig   ALTER_CONFIGS topic
DeleteTopic        DELETE topic
Produce, ...Batch  WRITE topic (ProduceStream: every request; the first refused ends it)
Consume, Subscribe READ topic (Subscribe: before every streamed message)
CommitOffset       READ group and READ topic
GetOffset          DESCRIBE group and DESCRIBE topic
InitProducer       IDEMPOTENT_WRITE cluster, or WRITE on some topic
DescribeCluster    DESCRIBE cluster
DescribeStorage    DESCRIBE cluster (it names every topic)
=================  =========================================================================

The health and reflection services are not checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ingest.authorizer import AclCache, acl_cache
from metadata.async_store import AsyncMetadata
from streamhouse.acl import CLUSTER_NAME, AclOperation, Authorizer, ResourceType
from streamhouse.config import Settings
from streamhouse.errors import ErrorCode, StreamHouseError
from streamhouse.grpc_auth import peer_host
from streamhouse.principal import current_principal

Op = AclOperation
T = ResourceType

#: The error (and so the PERMISSION_DENIED status) of a refusal, per resource type.
_REFUSAL = {
    T.TOPIC: ErrorCode.TOPIC_AUTHORIZATION_FAILED,
    T.GROUP: ErrorCode.GROUP_AUTHORIZATION_FAILED,
    T.CLUSTER: ErrorCode.CLUSTER_AUTHORIZATION_FAILED,
}

# What each method needs: (operation, resource type, request field naming the resource).
_NEEDS: dict[str, list[tuple[AclOperation, ResourceType, str | None]]] = {
    "GetTopic": [(Op.DESCRIBE, T.TOPIC, "name")],
    "AlterTopicConfig": [(Op.ALTER_CONFIGS, T.TOPIC, "name")],
    "DeleteTopic": [(Op.DELETE, T.TOPIC, "name")],
    "Produce": [(Op.WRITE, T.TOPIC, "topic")],
    "ProduceBatch": [(Op.WRITE, T.TOPIC, "topic")],
    "ProduceStream": [(Op.WRITE, T.TOPIC, "topic")],
    "Consume": [(Op.READ, T.TOPIC, "topic")],
    "Subscribe": [(Op.READ, T.TOPIC, "topic")],
    "CommitOffset": [(Op.READ, T.GROUP, "group"), (Op.READ, T.TOPIC, "topic")],
    "GetOffset": [(Op.DESCRIBE, T.GROUP, "group"), (Op.DESCRIBE, T.TOPIC, "topic")],
    "DescribeCluster": [(Op.DESCRIBE, T.CLUSTER, None)],
    "DescribeStorage": [(Op.DESCRIBE, T.CLUSTER, None)],
    "CreateTopic": [],  # CREATE cluster or CREATE topic: _check_create
    "ListTopics": [],  # filtered answer
    "InitProducer": [],  # _check_idempotent
}


class _Call:
    """Who is calling (principal, host) and the ACLs that judge them."""

    def __init__(self, authorizer: Authorizer, context: Any) -> None:
        self.authorizer = authorizer
        self.principal = current_principal.get()
        self.host = peer_host(context.peer())

    def may(self, operation: AclOperation, resource_type: ResourceType, name: str) -> bool:
        return self.authorizer.authorize(self.principal, self.host, operation, resource_type, name)

    def refuse(self, operation: AclOperation, resource_type: ResourceType, name: str) -> None:
        raise StreamHouseError(
            _REFUSAL[resource_type],
            f"{self.principal} (from {self.host or 'an unknown host'}) may not "
            f"{operation.name} {resource_type.name} {name!r}: the ACLs do not allow it (streamctl "
            "acl list shows them; an administrator adds one with streamctl acl add or CreateAcls)",
        )

    def require(self, method: str, request: Any) -> None:
        for operation, resource_type, field in _NEEDS[method]:
            name = CLUSTER_NAME if field is None else getattr(request, field)
            if not self.may(operation, resource_type, name):
                self.refuse(operation, resource_type, name)
        if method == "CreateTopic" and not (
            self.may(Op.CREATE, T.CLUSTER, CLUSTER_NAME)
            or self.may(Op.CREATE, T.TOPIC, request.name)
        ):
            self.refuse(Op.CREATE, T.TOPIC, request.name)
        if method == "InitProducer" and not (
            self.may(Op.IDEMPOTENT_WRITE, T.CLUSTER, CLUSTER_NAME)
            or self.authorizer.authorize_any(self.principal, self.host, Op.WRITE, T.TOPIC)
        ):
            self.refuse(Op.IDEMPOTENT_WRITE, T.CLUSTER, CLUSTER_NAME)


def guarded(
    method: str, fn: Callable[..., Any], settings: Settings, meta: AsyncMetadata
) -> Callable[..., Any]:
    """``fn`` (a service method) refusing what the caller may not do; ``fn`` itself when no
    authorizer is configured."""
    if settings.authorizer == "none":
        return fn
    if method not in _NEEDS:
        raise ValueError(f"gRPC method {method} has no ACL rule: add it to ingest/grpc_acl.py")
    cache = acl_cache(settings, meta)
    if method == "Subscribe":
        return _guarded_subscribe(fn, cache)
    if method == "ProduceStream":
        return _guarded_stream(fn, cache)
    return _guarded_unary(method, fn, cache)


def _guarded_unary(
    method: str, fn: Callable[..., Awaitable[Any]], cache: AclCache
) -> Callable[..., Awaitable[Any]]:
    async def checked(request: Any, context: Any) -> Any:
        call = _Call(await cache.snapshot(), context)
        call.require(method, request)
        response = await fn(request, context)
        if method == "ListTopics":
            kept = [t for t in response.topics if call.may(Op.DESCRIBE, T.TOPIC, t.name)]
            del response.topics[:]
            response.topics.extend(kept)
        return response

    checked.__name__ = fn.__name__
    return checked


def _guarded_subscribe(
    fn: Callable[..., AsyncIterator[Any]], cache: AclCache
) -> Callable[..., AsyncIterator[Any]]:
    async def checked(request: Any, context: Any) -> AsyncIterator[Any]:
        _Call(await cache.snapshot(), context).require("Subscribe", request)
        async for item in fn(request, context):
            # Checked again per message, as Kafka checks every Fetch: a revoked READ ends the
            # stream within the ACL refresh.
            _Call(await cache.snapshot(), context).require("Subscribe", request)
            yield item

    checked.__name__ = fn.__name__
    return checked


def _guarded_stream(
    fn: Callable[..., AsyncIterator[Any]], cache: AclCache
) -> Callable[..., AsyncIterator[Any]]:
    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async def allowed() -> AsyncIterator[Any]:
            async for request in requests:
                if hasattr(request, "topic"):  # a malformed one is refused by the service
                    _Call(await cache.snapshot(), context).require("ProduceStream", request)
                yield request

        async for item in fn(allowed(), context):
            yield item

    checked.__name__ = fn.__name__
    return checked
