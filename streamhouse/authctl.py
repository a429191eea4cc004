"""`streamctl user ...` and `streamctl token ...`: SCRAM users and gRPC tokens.

Both work directly on the metadata store (what the agents read), so the first user and token
can be made before anyone can authenticate: ``--metadata`` names the SQLite file or the
PostgreSQL URL; without it, the store of the stack the ``STREAMHOUSE_*`` environment describes
(as ``streamhouse up``). Agents see a change at the next authentication (SCRAM/PLAIN) or
within 2 s (tokens). Once a user exists, Kafka admin clients can manage users too
(AlterUserScramCredentials / DescribeUserScramCredentials).

    streamctl user add NAME [--mechanism M]... [--iterations N] [--password-stdin]
    streamctl user list [--json]
    streamctl user delete NAME [--mechanism M]...
    streamctl token create USER          (prints the token once; only its hash is stored)
    streamctl token list [--json]
    streamctl token delete ID            (ID: the hash prefix `token list` shows)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from streamhouse import scram
from streamhouse.ctl_common import CtlError, open_metadata_store, read_password

PROG = "streamctl"


class AuthCtlError(CtlError):
    """Bad input or an unusable store; the message says what to do."""


def _password(args: argparse.Namespace) -> str:
    password = read_password(args.password_stdin, args.name, confirm=True)
    if not password:
        raise AuthCtlError("the password must not be empty")
    return password


def _mechanisms(args: argparse.Namespace) -> list[str]:
    return args.mechanism or list(scram.MECHANISMS)


def _user_add(args: argparse.Namespace) -> int:
    if not args.name:
        raise AuthCtlError("the user name must not be empty")
    if not scram.MIN_ITERATIONS <= args.iterations <= scram.MAX_ITERATIONS:
        raise AuthCtlError(
            f"--iterations must be {scram.MIN_ITERATIONS}..{scram.MAX_ITERATIONS} (Kafka's bounds)"
        )
    password = _password(args)
    store = open_metadata_store(args.metadata)
    try:
        now = int(time.time() * 1000)
        for mechanism in _mechanisms(args):
            credential = scram.make_credential(mechanism, password, args.iterations)
            name = scram.catalog_name(mechanism, args.name)
            try:
                store.put_catalog_entry(
                    scram.CATALOG_KIND, name, credential.to_bytes(), now, replace=True
                )
            except ValueError as exc:
                raise AuthCtlError(f"cannot store user {args.name!r}: {exc}") from None
            print(f"stored the {mechanism} credential of {args.name}")
    finally:
        store.close()
    return 0


def _user_rows(store: Any) -> dict[str, list[tuple[str, int]]]:
    users: dict[str, list[tuple[str, int]]] = {}
    for name, data in store.list_catalog_entries(scram.CATALOG_KIND):
        mechanism, _, user = name.partition("/")
        try:
            iterations = scram.ScramCredential.from_bytes(data).iterations
        except scram.ScramError:
            iterations = -1
        users.setdefault(user, []).append((mechanism, iterations))
    return users


def _user_list(args: argparse.Namespace) -> int:
    store = open_metadata_store(args.metadata)
    try:
        users = _user_rows(store)
    finally:
        store.close()
    for user in sorted(users):
        if args.json:
            mechs = [{"mechanism": m, "iterations": i} for m, i in users[user]]
            print(json.dumps({"user": user, "credentials": mechs}))
        else:
            print(f"{user}\t" + ", ".join(f"{m} ({i} iterations)" for m, i in users[user]))
    return 0


def _user_delete(args: argparse.Namespace) -> int:
    store = open_metadata_store(args.metadata)
    try:
        deleted = [
            m
            for m in _mechanisms(args)
            if store.delete_catalog_entry(scram.CATALOG_KIND, scram.catalog_name(m, args.name))
        ]
    finally:
        store.close()
    if not deleted:
        raise AuthCtlError(f"user {args.name!r} has no such credential (see `streamctl user list`)")
    print(f"deleted the {', '.join(deleted)} credential(s) of {args.name}")
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from streamhouse.grpc_auth import CATALOG_KIND, new_token, token_hash, token_record

    if not args.user:
        raise AuthCtlError("the user name must not be empty")
    token = new_token()
    store = open_metadata_store(args.metadata)
    try:
        store.put_catalog_entry(
            CATALOG_KIND,
            token_hash(token),
            token_record(args.user, int(time.time() * 1000)),
            int(time.time() * 1000),
        )
    finally:
        store.close()
    print(token)
    sys.stderr.write(
        f"token {token_hash(token)[:12]} for user {args.user}: shown once, store it safely\n"
    )
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from streamhouse.grpc_auth import CATALOG_KIND, parse_token_record

    store = open_metadata_store(args.metadata)
    try:
        entries = store.list_catalog_entries(CATALOG_KIND)
    finally:
        store.close()
    for digest, data in entries:
        try:
            user, created = parse_token_record(data)
        except ValueError:
            user, created = "?", 0
        if args.json:
            print(json.dumps({"id": digest[:12], "user": user, "created_ms": created}))
        else:
            print(f"{digest[:12]}\t{user}\t{created}")
    return 0


def _token_delete(args: argparse.Namespace) -> int:
    from streamhouse.grpc_auth import CATALOG_KIND

    if len(args.id) < 6:
        raise AuthCtlError("give at least 6 characters of the token id (`streamctl token list`)")
    store = open_metadata_store(args.metadata)
    try:
        matches = [d for d, _ in store.list_catalog_entries(CATALOG_KIND) if d.startswith(args.id)]
        if len(matches) != 1:
            raise AuthCtlError(
                f"{len(matches)} tokens have an id starting {args.id!r}: give one that matches "
                "exactly one (`streamctl token list`)"
            )
        store.delete_catalog_entry(CATALOG_KIND, matches[0])
    finally:
        store.close()
    print(f"deleted token {matches[0][:12]}")
    return 0


def build_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} {command}")
    metadata = argparse.ArgumentParser(add_help=False)
    metadata.add_argument(
        "--metadata",
        metavar="TARGET",
        help="SQLite file or postgresql:// URL of the metadata store (default: the "
        "STREAMHOUSE_* environment's)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def listing(what: str, run: Callable[[argparse.Namespace], int]) -> None:
        sub = actions.add_parser("list", parents=[metadata], help=f"list {what}")
        sub.add_argument("--json", action="store_true")
        sub.set_defaults(func=run)

    if command == "user":
        add = actions.add_parser("add", parents=[metadata], help="create or replace a user")
        add.add_argument("name", metavar="NAME")
        add.add_argument(
            "--mechanism",
            action="append",
            choices=list(scram.MECHANISMS),
            help="store a credential for this mechanism (repeatable; default: both)",
        )
        add.add_argument("--iterations", type=int, default=scram.DEFAULT_ITERATIONS)
        add.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
        add.set_defaults(func=_user_add)
        listing("users", _user_list)
        delete = actions.add_parser("delete", parents=[metadata], help="delete a user")
        delete.add_argument("name", metavar="NAME")
        delete.add_argument(
            "--mechanism", action="append", choices=list(scram.MECHANISMS), help="(default: all)"
        )
        delete.set_defaults(func=_user_delete)
    else:
        create = actions.add_parser("create", parents=[metadata], help="make a gRPC token")
        create.add_argument("user", metavar="USER")
        create.set_defaults(func=_token_create)
        listing("tokens", _token_list)
        delete = actions.add_parser("delete", parents=[metadata], help="delete a token")
        delete.add_argument("id", metavar="ID")
        delete.set_defaults(func=_token_delete)
    return parser


def main(command: str, argv: list[str]) -> int:
    """``streamctl user|token ...``; returns the exit status (2 for usage errors)."""
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return int(args.func(args))
    except CtlError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
