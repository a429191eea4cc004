"""Plumbing shared by the streamctl commands that administer the metadata store directly
(``streamctl acl``: streamhouse/aclctl.py; ``streamctl user|token``: streamhouse/authctl.py):
opening the store a ``--metadata`` target (or the ``STREAMHOUSE_*`` environment) names, and
reading a password from stdin or a prompt."""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any


class CtlError(Exception):
    """Bad input or an unusable store; the message says what to do."""


def open_metadata_store(target: str | None) -> Any:
    """The metadata store at ``target`` (a SQLite path or a postgresql:// URL); without one,
    the store of the stack the ``STREAMHOUSE_*`` environment describes. A SQLite file that does
    not exist yet is refused (the stack makes it), with what to do."""
    from metadata.interface import is_postgres_target, open_store

    if target is None:
        from streamhouse.config import load_settings

        target = str(load_settings().metadata_target)
    if not is_postgres_target(target) and not os.path.exists(target):
        raise CtlError(
            f"no metadata store at {target}: start the stack once (streamhouse up), or give "
            "--metadata PATH-or-postgresql-URL"
        )
    return open_store(target)


def read_password(from_stdin: bool, user: str, confirm: bool = False) -> str:
    """One line of stdin (without its line ending) with ``from_stdin``; else a prompt for
    ``user``'s password (asked twice with ``confirm``, refused when the two differ)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass(f"password for {user}: ")
    if confirm and getpass.getpass("again: ") != password:
        raise CtlError("the passwords differ")
    return password
