"""`streamctl acl ...`: Kafka ACLs, in the vocabulary of Kafka's kafka-acls.sh.

It works directly on the metadata store the agents read (catalog kind ``acl``,
streamhouse/acl.py), so the first ACLs can be made before anyone is allowed anything:
``--metadata`` names the SQLite file or the PostgreSQL URL; without it, the store of the stack
the ``STREAMHOUSE_*`` environment describes (as ``streamhouse up``). Whoever can write that
store is an administrator; nothing here asks the authorizer. Every agent applies a change
within its ACL refresh (1 s, README "Security"). With ``--bootstrap-server HOST:PORT`` it goes
through a broker's CreateAcls/DescribeAcls/DeleteAcls instead (as Kafka admin clients do),
logged in as ``--user`` with ``--security-protocol``/``--sasl-mechanism`` (password from
``--password-stdin`` or a prompt; ``--ca-file`` for TLS): then the broker checks that user's
rights (ALTER on the cluster to add and delete, DESCRIBE to list, or a super user).

    streamctl acl add (--allow-principal P | --deny-principal P)... [--allow-host H]...
        [--deny-host H]... --operation OP... RESOURCE... [--resource-pattern-type literal|prefixed]
    streamctl acl list [RESOURCE...] [--principal P] [--resource-pattern-type any|match|...]
    streamctl acl delete RESOURCE... [--allow-principal P | --deny-principal P]...
        [--operation OP]... [--resource-pattern-type literal|prefixed|any|match]

Every action also takes --metadata TARGET or --bootstrap-server HOST:PORT
[--security-protocol P] [--sasl-mechanism M] [--user U] [--password-stdin] [--ca-file PEM].
RESOURCE is --topic NAME, --group NAME, --transactional-id NAME or --cluster (each may
repeat). OP is Kafka's operation name (Read, Write, Create, Delete, Alter, Describe,
ClusterAction, DescribeConfigs, AlterConfigs, IdempotentWrite, All). Exit status: 0 success,
1 bad input, store or broker error (a refusal names Kafka's error), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from streamhouse.acl import (
    CATALOG_KIND,
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    AclOperation,
    PatternType,
    Permission,
    ResourceType,
    binding_error,
    decode_binding,
    encode_binding,
)
from streamhouse.acl_wire import binding_from_wire, creation_fields, filter_fields, strict_code
from streamhouse.ctl_common import CtlError, open_metadata_store, read_password
from streamhouse.kafka import messages as m
from streamhouse.kafka_connection import BlockingKafkaConnection, KafkaConnectionError

PROG = "streamctl acl"
T = TypeVar("T")


class AclCtlError(CtlError):
    """Bad input or an unusable store; the message says what to do."""


def _operation(text: str) -> AclOperation:
    wanted = text.replace("_", "").replace("-", "").upper()
    for op in AclOperation:
        if op.name.replace("_", "") == wanted and op not in (
            AclOperation.UNKNOWN,
            AclOperation.ANY,
        ):
            return op
    names = ", ".join(
        "".join(w.capitalize() for w in op.name.split("_"))
        for op in AclOperation
        if op not in (AclOperation.UNKNOWN, AclOperation.ANY)
    )
    raise AclCtlError(f"unknown operation {text!r}: use one of {names}")


def _pattern(text: str) -> PatternType:
    try:
        return PatternType[text.upper()]
    except KeyError:
        raise AclCtlError(
            f"unknown --resource-pattern-type {text!r}: use literal, prefixed, any or match"
        ) from None


def _resources(args: argparse.Namespace) -> list[tuple[ResourceType, str]]:
    chosen = [(ResourceType.TOPIC, n) for n in args.topic or []]
    chosen += [(ResourceType.GROUP, n) for n in args.group or []]
    chosen += [(ResourceType.TRANSACTIONAL_ID, n) for n in args.transactional_id or []]
    if args.cluster:
        chosen.append((ResourceType.CLUSTER, CLUSTER_NAME))
    for kind, name in chosen:
        if not name:
            raise AclCtlError(f"the {kind.name.lower()} name must not be empty")
    return chosen


def _entries(args: argparse.Namespace) -> list[tuple[str, str, Permission]]:
    """(principal, host, permission) of every --allow/--deny-principal and host."""
    entries = []
    for principals, hosts, permission in (
        (args.allow_principal, args.allow_host, Permission.ALLOW),
        (args.deny_principal, args.deny_host, Permission.DENY),
    ):
        if hosts and not principals:
            raise AclCtlError(
                f"--{permission.name.lower()}-host needs --{permission.name.lower()}-principal"
            )
        for principal in principals or []:
            entries += [(principal, host, permission) for host in hosts or ["*"]]
    return entries


def _bindings(store: Any) -> Iterator[AclBinding]:
    for name, definition in store.list_catalog_entries(CATALOG_KIND):
        try:
            yield decode_binding(definition)
        except ValueError as exc:
            sys.stderr.write(f"{PROG}: warning: ignoring catalog entry acl/{name}: {exc}\n")


def _row(b: AclBinding) -> dict[str, str]:
    return {
        "resource_type": b.resource_type.name,
        "name": b.name,
        "pattern_type": b.pattern_type.name,
        "principal": b.principal,
        "host": b.host,
        "operation": b.operation.name,
        "permission": b.permission.name,
    }


def _print(bindings: list[AclBinding], as_json: bool, verb: str = "") -> None:
    for b in sorted(bindings, key=lambda b: tuple(_row(b).values())):
        if as_json:
            print(json.dumps(_row(b)))
        else:
            print(
                f"{verb}{b.permission.name} {b.principal} {b.operation.name} on "
                f"{b.resource_type.name} {b.name} ({b.pattern_type.name}) from host {b.host}"
            )


class _MetadataAcls:
    """The bindings in the metadata store itself (``--metadata``, or the environment's)."""

    def __init__(self, target: str | None) -> None:
        self._store = open_metadata_store(target)

    def close(self) -> None:
        self._store.close()

    def add(self, bindings: list[AclBinding]) -> None:
        now = int(time.time() * 1000)
        for b in bindings:
            name, definition = encode_binding(b)
            self._store.put_catalog_entry(CATALOG_KIND, name, definition, now, replace=True)

    def select(self, filters: list[AclFilter]) -> list[AclBinding]:
        return [b for b in _bindings(self._store) if any(f.matches(b) for f in filters)]

    def remove(self, filters: list[AclFilter]) -> list[AclBinding]:
        chosen = self.select(filters)
        for b in chosen:
            self._store.delete_catalog_entry(CATALOG_KIND, encode_binding(b)[0])
        return chosen


class _KafkaAcls:
    """The bindings through a broker's CreateAcls/DescribeAcls/DeleteAcls (v1), as the
    authenticated user (``--bootstrap-server``): the broker checks the user's rights."""

    VERSION = 1

    def __init__(self, args: argparse.Namespace) -> None:
        protocol = args.security_protocol
        password = ""
        if protocol.startswith("SASL"):
            if not args.user:
                raise AclCtlError(f"--security-protocol {protocol} needs --user NAME")
            password = read_password(args.password_stdin, args.user)
        try:
            self._connection = BlockingKafkaConnection(
                args.bootstrap_server,
                protocol,
                args.sasl_mechanism,
                args.user or "",
                password,
                args.ca_file,
            )
        except KafkaConnectionError as exc:
            raise AclCtlError(str(exc)) from None

    def close(self) -> None:
        self._connection.close()

    def add(self, bindings: list[AclBinding]) -> None:
        C = m.CreateAclsRequest
        response = self._connection.call(
            30,
            self.VERSION,
            C(creations=[C.AclCreation(**creation_fields(b)) for b in bindings]),
        )
        failed = [r for r in response.results if r.error_code]
        if failed:
            raise AclCtlError(_refusal(failed[0].error_code, failed[0].error_message))

    def select(self, filters: list[AclFilter]) -> list[AclBinding]:
        found: dict[AclBinding, None] = {}
        for f in filters:
            response = self._connection.call(
                29, self.VERSION, m.DescribeAclsRequest(**filter_fields(f))
            )
            if response.error_code:
                raise AclCtlError(_refusal(response.error_code, response.error_message))
            for r in response.resources:
                for a in r.acls:
                    found[_binding(r.resource_type, r.resource_name, r.pattern_type, a)] = None
        return list(found)

    def remove(self, filters: list[AclFilter]) -> list[AclBinding]:
        D = m.DeleteAclsRequest
        response = self._connection.call(
            31, self.VERSION, D(filters=[D.DeleteAclsFilter(**filter_fields(f)) for f in filters])
        )
        removed: dict[AclBinding, None] = {}
        for result in response.filter_results:
            if result.error_code:
                raise AclCtlError(_refusal(result.error_code, result.error_message))
            for a in result.matching_acls:
                removed[_binding(a.resource_type, a.resource_name, a.pattern_type, a)] = None
        return list(removed)


def _binding(resource_type: int, name: str, pattern_type: int, entry: Any) -> AclBinding:
    """A binding the broker answered (an unknown code is an error, not UNKNOWN)."""
    return binding_from_wire(resource_type, name, pattern_type, entry, strict_code)


def _refusal(code: int, message: str | None) -> str:
    from streamhouse.errors import ErrorCode

    return f"the broker refused: {ErrorCode.from_kafka_code(code).name}: {message or ''}".rstrip(
        ": "
    )


def _acls(args: argparse.Namespace) -> _MetadataAcls | _KafkaAcls:
    if args.bootstrap_server:
        if args.metadata:
            raise AclCtlError("give --metadata or --bootstrap-server, not both")
        return _KafkaAcls(args)
    return _MetadataAcls(args.metadata)


def _on_acls(args: argparse.Namespace, action: Callable[[_MetadataAcls | _KafkaAcls], T]) -> T:
    """``action`` on the ACLs ``args`` names (the store or a broker), closed afterwards."""
    acls = _acls(args)
    try:
        return action(acls)
    finally:
        acls.close()


def _add(args: argparse.Namespace) -> int:
    resources = _resources(args)
    entries = _entries(args)
    if not resources:
        raise AclCtlError("name a resource: --topic, --group, --transactional-id or --cluster")
    if not entries:
        raise AclCtlError("name who: --allow-principal User:NAME or --deny-principal User:NAME")
    if not args.operation:
        raise AclCtlError("name what: --operation Read (repeat for more)")
    pattern = _pattern(args.resource_pattern_type or "literal")
    bindings = [
        AclBinding(kind, name, pattern, principal, host, _operation(op), permission)
        for kind, name in resources
        for principal, host, permission in entries
        for op in args.operation
    ]
    for b in bindings:
        problem = binding_error(b)
        if problem is not None:
            raise AclCtlError(problem)
    _on_acls(args, lambda acls: acls.add(bindings))
    _print(bindings, args.json, "added: ")
    return 0


def _filters(args: argparse.Namespace, default_pattern: str) -> list[AclFilter]:
    pattern = _pattern(args.resource_pattern_type or default_pattern)
    resources: list[tuple[ResourceType, str | None]] = list(_resources(args)) or [
        (ResourceType.ANY, None)
    ]
    who: list[tuple[str | None, Permission]] = [
        (p, Permission.ALLOW) for p in getattr(args, "allow_principal", None) or []
    ]
    who += [(p, Permission.DENY) for p in getattr(args, "deny_principal", None) or []]
    if getattr(args, "principal", None):
        who += [(p, Permission.ANY) for p in args.principal]
    if not who:
        who = [(None, Permission.ANY)]
    ops = [_operation(op) for op in getattr(args, "operation", None) or []] or [AclOperation.ANY]
    return [
        AclFilter(kind, name, pattern, principal, None, op, permission)
        for kind, name in resources
        for principal, permission in who
        for op in ops
    ]


def _list(args: argparse.Namespace) -> int:
    filters = _filters(args, "any")
    chosen = _on_acls(args, lambda acls: acls.select(filters))
    _print(chosen, args.json)
    return 0


def _delete(args: argparse.Namespace) -> int:
    if not _resources(args):
        raise AclCtlError("name a resource: --topic, --group, --transactional-id or --cluster")
    filters = _filters(args, "literal")
    chosen = _on_acls(args, lambda acls: acls.remove(filters))
    if not chosen and not args.json:
        print("no ACL matched; nothing deleted")
    _print(chosen, args.json, "deleted: ")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Kafka ACLs (kafka-acls.sh style).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--metadata",
            metavar="TARGET",
            help="the SQLite file or postgresql:// URL (default: the STREAMHOUSE_* "
            "environment's metadata store)",
        )
        sub.add_argument(
            "--bootstrap-server",
            metavar="HOST:PORT",
            help="through this broker's ACL APIs instead, as --user (its rights apply)",
        )
        sub.add_argument(
            "--security-protocol",
            default="PLAINTEXT",
            choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
            help="of the broker's listener (default PLAINTEXT)",
        )
        sub.add_argument(
            "--sasl-mechanism",
            default="SCRAM-SHA-256",
            choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
            help="default SCRAM-SHA-256",
        )
        sub.add_argument("--user", metavar="NAME", help="the SASL user")
        sub.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
        sub.add_argument("--ca-file", metavar="PEM", help="CA bundle for SSL/SASL_SSL")
        sub.add_argument("--topic", action="append", metavar="NAME", help="a topic (repeatable)")
        sub.add_argument("--group", action="append", metavar="NAME", help="a consumer group")
        sub.add_argument(
            "--transactional-id", action="append", metavar="ID", help="a transactional id"
        )
        sub.add_argument("--cluster", action="store_true", help="the cluster")
        sub.add_argument(
            "--resource-pattern-type",
            metavar="TYPE",
            help="literal (default for add/delete), prefixed, any or match (default for list)",
        )
        sub.add_argument("--json", action="store_true", help="one JSON object per line")

    def who(sub: argparse.ArgumentParser, hosts: bool) -> None:
        sub.add_argument("--allow-principal", action="append", metavar="P", help="User:NAME")
        sub.add_argument("--deny-principal", action="append", metavar="P", help="User:NAME")
        if hosts:
            sub.add_argument("--allow-host", action="append", metavar="IP", help="default *")
            sub.add_argument("--deny-host", action="append", metavar="IP", help="default *")
        sub.add_argument("--operation", action="append", metavar="OP", help="e.g. Read")

    add = actions.add_parser("add", help="add ACLs (every principal x operation x resource)")
    common(add)
    who(add, hosts=True)
    add.set_defaults(run=_add)

    listing = actions.add_parser("list", help="list ACLs (all, or those of the resources)")
    common(listing)
    listing.add_argument("--principal", action="append", metavar="P", help="only this principal")
    listing.set_defaults(run=_list)

    delete = actions.add_parser("delete", help="delete the ACLs of the resources that match")
    common(delete)
    who(delete, hosts=False)
    delete.set_defaults(run=_delete)
    return parser


def main(argv: list[str]) -> int:
    """Runs ``streamctl acl ARGV`` and returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        return int(args.run(args))
    except (CtlError, KafkaConnectionError) as error:
        sys.stderr.write(f"streamctl: error: {error}\n")
        return 1
    except (OSError, ValueError) as error:
        sys.stderr.write(f"streamctl: error: {error}\n")
        return 1
