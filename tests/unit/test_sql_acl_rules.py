"""The sql service's ACL rules (sql/acl.py) without a server: what each statement needs before
it is planned, and the decisions and refusals of one call's ACL snapshot."""

from __future__ import annotations

import pytest

from sql.acl import AccessDenied, SqlAccess, create_topic, reads, statement_needs, writes
from sql.statements import parse_statement
from streamhouse.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclOperation,
    Authorizer,
    PatternType,
    Permission,
    ResourceType,
)

Op = AclOperation
T = ResourceType


def allow(operation: AclOperation, resource_type: ResourceType, name: str) -> AclBinding:
    return AclBinding(
        resource_type, name, PatternType.LITERAL, "User:bob", "*", operation, Permission.ALLOW
    )


def access(*bindings: AclBinding, principal: str = "User:bob") -> SqlAccess:
    return SqlAccess(Authorizer(bindings, frozenset({"User:admin"})), principal, "127.0.0.1")


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("CREATE STREAM s (a BIGINT) WITH (topic = 't', format = 'json')", Op.ALTER),
        ("DROP TABLE IF EXISTS x", Op.ALTER),
        ("DROP QUERY q", Op.ALTER),
        ("DROP MATERIALIZED VIEW v", Op.ALTER),
        ("CREATE MATERIALIZED VIEW v AS SELECT count(*) FROM t", Op.ALTER),
        ("SHOW QUERIES", Op.DESCRIBE),
        ("SHOW STREAMS", Op.DESCRIBE),
        ("DESCRIBE t", Op.DESCRIBE),
    ],
)
def test_catalog_statements_need_the_cluster(statement: str, operation: AclOperation) -> None:
    needs = statement_needs(parse_statement(statement))
    assert [n.choices for n in needs] == [((operation, T.CLUSTER, CLUSTER_NAME),)]


def test_a_select_needs_nothing_before_its_plan() -> None:
    assert statement_needs(parse_statement("SELECT * FROM t")) == []


def test_reads_are_each_topic_once_in_name_order() -> None:
    needs = reads(["b", "a", "b"])
    assert [n.choices for n in needs] == [((Op.READ, T.TOPIC, "a"),), ((Op.READ, T.TOPIC, "b"),)]


def test_read_allowed_and_refused_naming_principal_operation_resource() -> None:
    call = access(allow(Op.READ, T.TOPIC, "a"))
    call.check(reads(["a"]))
    with pytest.raises(AccessDenied) as refused:
        call.check(reads(["a", "b"]))
    message = str(refused.value)
    assert "User:bob" in message and "READ TOPIC 'b'" in message and "127.0.0.1" in message


def test_create_topic_is_allowed_by_the_cluster_or_the_topic() -> None:
    access(allow(Op.CREATE, T.CLUSTER, CLUSTER_NAME)).check([create_topic("out")])
    access(allow(Op.CREATE, T.TOPIC, "out")).check([create_topic("out")])
    with pytest.raises(AccessDenied, match="CREATE TOPIC 'out'"):
        access(allow(Op.CREATE, T.TOPIC, "other")).check([create_topic("out")])


def test_alter_on_the_cluster_implies_describe_and_a_super_user_needs_no_acl() -> None:
    alter = access(allow(Op.ALTER, T.CLUSTER, CLUSTER_NAME))
    alter.check(statement_needs(parse_statement("SHOW QUERIES")))
    with pytest.raises(AccessDenied, match="WRITE TOPIC 'out'"):
        alter.check([writes("out")])
    access(principal="User:admin").check([writes("out"), *reads(["x"])])
