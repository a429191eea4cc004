"""ACLs on the sql service: which operation on which resource each statement and method needs.

With ``authorizer = acl`` the sql service decides with the same ACLs, super users and
``allow_everyone_if_no_acl_found`` as the Kafka and gRPC listeners (streamhouse/acl.py,
cached per process by streamhouse/acl_cache.py), for the principal of the call's token or
client certificate (streamhouse/grpc_auth.py; ``User:ANONYMOUS`` without gRPC
authentication). The resources are Kafka's: data is guarded by its topics, and the SQL
catalog (declared streams and tables, continuous queries) is the cluster's, so changing it is
ALTER on the cluster, as altering the cluster's configuration is in Kafka.

=============================================  ==============================================
Execute: SELECT, EXPLAIN, WITH ... (ad hoc)    READ on every topic the plan scans: a topic,
                                               the topic of a stream or table, and for a
                                               materialized view every topic its query reads
Execute: CREATE MATERIALIZED VIEW              ALTER cluster, and READ on every topic the
                                               query reads; a ``dead_letter_topic``: WRITE on
                                               it (and CREATE on it or on the cluster when it
                                               does not exist yet)
Execute: CREATE STREAM ... AS SELECT           as a view, and WRITE on the output topic (and
                                               CREATE on it or the cluster when missing)
Execute: CREATE STREAM / TABLE (declaration)   ALTER cluster
Execute: DROP STREAM / TABLE / MATERIALIZED    ALTER cluster
VIEW / QUERY, and ``DropQuery``
Execute: SHOW ..., DESCRIBE name;              DESCRIBE cluster (they name every query,
``ListQueries``, ``DescribeQuery``             relation and topic)
=============================================  ==============================================

A refusal is PERMISSION_DENIED naming the principal, its host, the operation and the
resource. The query runners (one process per continuous query) are the service's own and are
not checked again: a query's rights are checked once, when it is created. The in-process path
(``python3 -m sql query --via local``, ``streamctl sql --via local``) reads the metadata and
object stores directly and is not checked at all: whoever holds those credentials is an
administrator.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sql.statements import (
    CreateQuery,
    CreateRelation,
    Describe,
    DropQuery,
    DropRelation,
    Query,
    ShowQueries,
    ShowRelations,
    Statement,
)
from streamhouse.acl import CLUSTER_NAME, AclOperation, Authorizer, ResourceType

__all__ = [
    "AccessDenied",
    "Need",
    "SqlAccess",
    "cluster",
    "create_topic",
    "reads",
    "statement_needs",
    "writes",
]

Op = AclOperation
T = ResourceType


@dataclass(frozen=True)
class Need:
    """One permission: any one of ``choices`` (operation, resource type, resource name) will
    do; a refusal names the first."""

    choices: tuple[tuple[AclOperation, ResourceType, str], ...]


def cluster(operation: AclOperation) -> Need:
    return Need(((operation, T.CLUSTER, CLUSTER_NAME),))


def reads(topics: Iterable[str]) -> list[Need]:
    """READ on each of ``topics`` (each once, in name order: the first refused is named)."""
    return [Need(((Op.READ, T.TOPIC, topic),)) for topic in sorted(set(topics))]


def writes(topic: str) -> Need:
    return Need(((Op.WRITE, T.TOPIC, topic),))


def create_topic(topic: str) -> Need:
    """What creating ``topic`` takes: CREATE on the topic or on the cluster (as in Kafka)."""
    return Need(((Op.CREATE, T.TOPIC, topic), (Op.CREATE, T.CLUSTER, CLUSTER_NAME)))


def statement_needs(statement: Statement) -> list[Need]:
    """What a statement needs before anything is planned or read; the topics a query reads and
    writes are checked by the engine once it has planned them."""
    if isinstance(statement, (CreateRelation, DropRelation, DropQuery, CreateQuery)):
        return [cluster(Op.ALTER)]
    if isinstance(statement, (ShowRelations, ShowQueries, Describe)):
        return [cluster(Op.DESCRIBE)]
    assert isinstance(statement, Query)
    return []


class AccessDenied(Exception):
    """The caller may not do what the statement or method needs; the message names the
    principal, host, operation and resource, and where ACLs are managed."""


class SqlAccess:
    """The decisions of one call: its principal and host against one ACL snapshot."""

    def __init__(self, authorizer: Authorizer, principal: str, host: str) -> None:
        self.authorizer = authorizer
        self.principal = principal
        self.host = host

    def check(self, needs: Sequence[Need]) -> None:
        """Returns when every need is met; raises AccessDenied naming the first that is not."""
        for need in needs:
            if any(
                self.authorizer.authorize(self.principal, self.host, op, rtype, name)
                for op, rtype, name in need.choices
            ):
                continue
            op, rtype, name = need.choices[0]
            raise AccessDenied(
                f"{self.principal} (from {self.host or 'an unknown host'}) may not {op.name} "
                f"{rtype.name} {name!r}: the ACLs do not allow it (streamctl acl list shows "
                "them; an administrator adds one with streamctl acl add or CreateAcls; the sql "
                "service's rules are in README 'Security')"
            )
