"""The sans-I/O authorizer (streamhouse/acl.py): Kafka's matching, deny-over-allow, implied
operations, super users, the no-ACL default, filters, validation and the catalog encoding."""

from __future__ import annotations

import itertools

import pytest

from streamhouse.acl import (
    CLUSTER_NAME,
    OPERATIONS,
    AclBinding,
    AclFilter,
    AclOperation,
    Authorizer,
    PatternType,
    Permission,
    ResourceType,
    binding_error,
    decode_binding,
    encode_binding,
    filter_error,
    parse_super_users,
)

Op = AclOperation
T = ResourceType
ALICE = "User:alice"
BOB = "User:bob"
HOST = "10.0.0.1"


def acl(
    name: str = "orders",
    operation: AclOperation = Op.READ,
    permission: Permission = Permission.ALLOW,
    principal: str = ALICE,
    host: str = "*",
    resource_type: ResourceType = T.TOPIC,
    pattern_type: PatternType = PatternType.LITERAL,
) -> AclBinding:
    return AclBinding(resource_type, name, pattern_type, principal, host, operation, permission)


def may(authorizer: Authorizer, operation: AclOperation, name: str = "orders", **kw: str) -> bool:
    return authorizer.authorize(
        kw.get("principal", ALICE), kw.get("host", HOST), operation, T.TOPIC, name
    )


def test_literal_allow_applies_to_its_name_only() -> None:
    a = Authorizer([acl()])
    assert may(a, Op.READ)
    assert not may(a, Op.READ, "orders2")
    assert not may(a, Op.READ, "order")
    assert not may(a, Op.WRITE)


def test_wildcard_name_prefix_principal_and_host() -> None:
    a = Authorizer([acl(name="*")])
    assert may(a, Op.READ, "anything")
    a = Authorizer([acl(name="ord", pattern_type=PatternType.PREFIXED)])
    assert may(a, Op.READ, "orders") and may(a, Op.READ, "ord")
    assert not may(a, Op.READ, "or")
    a = Authorizer([acl(principal="User:*")])
    assert may(a, Op.READ, principal=BOB)
    a = Authorizer([acl(host="10.0.0.1")])
    assert may(a, Op.READ, host="10.0.0.1")
    assert not may(a, Op.READ, host="10.0.0.2")


def test_other_principal_gets_nothing() -> None:
    a = Authorizer([acl()])
    assert not may(a, Op.READ, principal=BOB)


def test_resource_types_are_apart() -> None:
    a = Authorizer([acl(resource_type=T.GROUP)])
    assert a.authorize(ALICE, HOST, Op.READ, T.GROUP, "orders")
    assert not a.authorize(ALICE, HOST, Op.READ, T.TOPIC, "orders")


def test_deny_beats_allow_wherever_either_comes_from() -> None:
    allow_all = acl(name="*", operation=Op.ALL)
    for deny in (
        acl(permission=Permission.DENY),
        acl(name="ord", pattern_type=PatternType.PREFIXED, permission=Permission.DENY),
        acl(principal="User:*", permission=Permission.DENY),
        acl(operation=Op.ALL, permission=Permission.DENY),
    ):
        for order in ([allow_all, deny], [deny, allow_all]):
            a = Authorizer(order)
            assert not may(a, Op.READ), deny
            if deny.operation == Op.READ:
                assert may(a, Op.WRITE)  # a deny applies to its own operation only


def test_deny_of_read_does_not_deny_the_implied_describe() -> None:
    a = Authorizer([acl(operation=Op.WRITE), acl(permission=Permission.DENY)])
    assert may(a, Op.DESCRIBE)
    assert not may(a, Op.READ)


def test_deny_from_another_host_does_not_apply() -> None:
    a = Authorizer([acl(), acl(host="10.9.9.9", permission=Permission.DENY)])
    assert may(a, Op.READ)
    assert not may(a, Op.READ, host="10.9.9.9")


@pytest.mark.parametrize("granted", [Op.READ, Op.WRITE, Op.DELETE, Op.ALTER])
def test_describe_is_implied(granted: AclOperation) -> None:
    a = Authorizer([acl(operation=granted)])
    assert may(a, Op.DESCRIBE)
    assert not may(a, Op.DESCRIBE_CONFIGS)


def test_describe_configs_is_implied_by_alter_configs_only() -> None:
    a = Authorizer([acl(operation=Op.ALTER_CONFIGS)])
    assert may(a, Op.DESCRIBE_CONFIGS)
    assert not may(a, Op.DESCRIBE)
    a = Authorizer([acl(operation=Op.DESCRIBE)])
    assert not may(a, Op.READ)  # implication goes one way


def test_all_allows_every_operation() -> None:
    a = Authorizer([acl(operation=Op.ALL)])
    assert all(may(a, op) for op in OPERATIONS[T.TOPIC])


def test_every_implication_pair_exhaustively() -> None:
    implied = {
        Op.DESCRIBE: {Op.READ, Op.WRITE, Op.DELETE, Op.ALTER},
        Op.DESCRIBE_CONFIGS: {Op.ALTER_CONFIGS},
    }
    for granted, asked in itertools.product(OPERATIONS[T.TOPIC], repeat=2):
        a = Authorizer([acl(operation=granted)])
        expected = granted == asked or granted in implied.get(asked, set())
        assert may(a, asked) == expected, (granted, asked)


def test_super_users_bypass_denies() -> None:
    a = Authorizer(
        [acl(operation=Op.ALL, permission=Permission.DENY, principal="User:*")],
        frozenset({"User:admin"}),
    )
    assert may(a, Op.DELETE, principal="User:admin")
    assert not may(a, Op.READ)
    assert a.authorize_any("User:admin", HOST, Op.WRITE, T.TOPIC)


def test_no_acl_found() -> None:
    assert not may(Authorizer([]), Op.READ)
    a = Authorizer([acl(name="other", principal=BOB)], allow_everyone_if_no_acl_found=True)
    assert may(a, Op.READ)  # no ACL on "orders" at all
    assert not may(a, Op.READ, "other")  # there is one, for someone else


def test_authorized_operations_bits() -> None:
    a = Authorizer([acl(operation=Op.WRITE)])
    bits = a.authorized_operations(ALICE, HOST, T.TOPIC, "orders")
    assert bits == (1 << Op.WRITE) | (1 << Op.DESCRIBE)
    a = Authorizer([], frozenset({ALICE}))
    cluster = a.authorized_operations(ALICE, HOST, T.CLUSTER, CLUSTER_NAME)
    assert cluster == sum(1 << op for op in OPERATIONS[T.CLUSTER])


def test_authorize_any() -> None:
    assert Authorizer([acl(operation=Op.WRITE)]).authorize_any(ALICE, HOST, Op.WRITE, T.TOPIC)
    assert not Authorizer([acl(operation=Op.READ)]).authorize_any(ALICE, HOST, Op.WRITE, T.TOPIC)
    covered = Authorizer(
        [
            acl(name="orders-eu", operation=Op.WRITE),
            acl(
                name="orders",
                operation=Op.WRITE,
                pattern_type=PatternType.PREFIXED,
                permission=Permission.DENY,
            ),
        ]
    )
    assert not covered.authorize_any(ALICE, HOST, Op.WRITE, T.TOPIC)
    wildcard_deny = Authorizer(
        [acl(operation=Op.WRITE), acl(name="*", operation=Op.ALL, permission=Permission.DENY)]
    )
    assert not wildcard_deny.authorize_any(ALICE, HOST, Op.WRITE, T.TOPIC)
    assert Authorizer([], allow_everyone_if_no_acl_found=True).authorize_any(
        ALICE, HOST, Op.WRITE, T.TOPIC
    )


def test_filters() -> None:
    literal = acl()
    prefixed = acl(name="ord", pattern_type=PatternType.PREFIXED, operation=Op.WRITE)
    wildcard = acl(name="*", principal=BOB, permission=Permission.DENY)
    group = acl(resource_type=T.GROUP)
    every = [literal, prefixed, wildcard, group]

    def chosen(f: AclFilter) -> list[AclBinding]:
        return [b for b in every if f.matches(b)]

    assert chosen(AclFilter()) == every
    assert chosen(AclFilter(resource_type=T.GROUP)) == [group]
    assert chosen(AclFilter(name="orders")) == [literal, group]
    assert chosen(AclFilter(name="orders", pattern_type=PatternType.LITERAL)) == [literal, group]
    assert chosen(AclFilter(pattern_type=PatternType.PREFIXED)) == [prefixed]
    assert chosen(
        AclFilter(resource_type=T.TOPIC, name="orders", pattern_type=PatternType.MATCH)
    ) == [
        literal,
        prefixed,
        wildcard,
    ]
    assert chosen(AclFilter(name="x", pattern_type=PatternType.MATCH)) == [wildcard]
    assert chosen(AclFilter(principal=BOB)) == [wildcard]
    assert chosen(AclFilter(operation=Op.WRITE)) == [prefixed]
    assert chosen(AclFilter(permission=Permission.DENY)) == [wildcard]
    assert chosen(AclFilter(host="10.0.0.1")) == []


@pytest.mark.parametrize(
    ("binding", "fragment"),
    [
        (acl(resource_type=T.ANY), "not a resource"),
        (acl(pattern_type=PatternType.MATCH), "only a filter"),
        (acl(name=""), "empty"),
        (acl(resource_type=T.CLUSTER, name="c", operation=Op.ALTER), CLUSTER_NAME),
        (acl(operation=Op.ANY), "only a filter"),
        (acl(operation=Op.IDEMPOTENT_WRITE), "does not apply"),
        (acl(permission=Permission.ANY), "only a filter"),
        (acl(principal="alice"), "TYPE:NAME"),
        (acl(host="example.com"), "IP address"),
    ],
)
def test_bad_bindings_are_refused(binding: AclBinding, fragment: str) -> None:
    error = binding_error(binding)
    assert error is not None and fragment in error


def test_good_bindings_pass() -> None:
    assert binding_error(acl()) is None
    assert binding_error(acl(host="::1", operation=Op.ALL)) is None
    assert (
        binding_error(acl(resource_type=T.CLUSTER, name=CLUSTER_NAME, operation=Op.ALTER)) is None
    )


def test_filter_errors() -> None:
    assert filter_error(AclFilter()) is None
    assert filter_error(AclFilter(resource_type=T.UNKNOWN)) is not None
    assert filter_error(AclFilter(pattern_type=PatternType.UNKNOWN)) is not None
    assert filter_error(AclFilter(operation=Op.UNKNOWN)) is not None
    assert filter_error(AclFilter(permission=Permission.UNKNOWN)) is not None


def test_catalog_encoding_round_trips_and_is_stable() -> None:
    b = acl(pattern_type=PatternType.PREFIXED, permission=Permission.DENY, host="::1")
    name, definition = encode_binding(b)
    assert decode_binding(definition) == b
    assert (
        encode_binding(
            acl(pattern_type=PatternType.PREFIXED, permission=Permission.DENY, host="::1")
        )[0]
        == name
    )
    assert encode_binding(acl())[0] != name
    assert b'"permission":"DENY"' in definition
    with pytest.raises(ValueError):
        decode_binding(b'{"resource_type": "NOPE"}')


def test_super_users_setting() -> None:
    assert parse_super_users(" User:admin ; User:ops;") == {"User:admin", "User:ops"}
    assert parse_super_users("") == frozenset()
    with pytest.raises(ValueError, match="TYPE:NAME"):
        parse_super_users("admin")


def test_duplicate_bindings_count_once_and_decisions_are_cached() -> None:
    a = Authorizer([acl(), acl()])
    assert len(a.bindings) == 1
    assert may(a, Op.READ) and may(a, Op.READ)
