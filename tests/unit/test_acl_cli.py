"""`streamctl acl` on a SQLite metadata file (streamhouse/aclctl.py) and the authorizer
settings: kafka-acls.sh vocabulary, validation with a message saying what to do, list and
delete by filter; STREAMHOUSE_AUTHORIZER / SUPER_USERS / ALLOW_EVERYONE_IF_NO_ACL_FOUND."""

from __future__ import annotations

import json
import pathlib

import pytest

from metadata.interface import open_store
from streamhouse.config import ConfigError, load_settings
from streamhouse.streamctl import main


@pytest.fixture
def store(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "metadata.sqlite"
    open_store(path).close()
    return str(path)


def acl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["acl", *args])
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys: pytest.CaptureFixture[str], store: str, *args: str) -> list[dict[str, str]]:
    code, out, _ = acl(capsys, "list", "--metadata", store, "--json", *args)
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def test_add_list_delete(capsys: pytest.CaptureFixture[str], store: str) -> None:
    code, out, err = acl(
        capsys,
        "add",
        "--metadata",
        store,
        "--allow-principal",
        "User:alice",
        "--allow-principal",
        "User:bob",
        "--operation",
        "Read",
        "--operation",
        "describe_configs",
        "--topic",
        "orders-",
        "--resource-pattern-type",
        "prefixed",
    )
    assert code == 0, err
    assert out.count("added: ALLOW") == 4
    code, _, err = acl(
        capsys,
        "add",
        "--metadata",
        store,
        "--deny-principal",
        "User:mallory",
        "--deny-host",
        "10.0.0.9",
        "--operation",
        "All",
        "--cluster",
        "--group",
        "g",
    )
    assert code == 0, err
    assert len(listed(capsys, store)) == 6
    cluster = listed(capsys, store, "--cluster")
    assert cluster == [
        {
            "resource_type": "CLUSTER",
            "name": "kafka-cluster",
            "pattern_type": "LITERAL",
            "principal": "User:mallory",
            "host": "10.0.0.9",
            "operation": "ALL",
            "permission": "DENY",
        }
    ]
    assert len(listed(capsys, store, "--principal", "User:bob")) == 2
    # MATCH: what applies to topic orders-eu.
    assert (
        len(listed(capsys, store, "--topic", "orders-eu", "--resource-pattern-type", "match")) == 4
    )

    code, out, _ = acl(capsys, "delete", "--metadata", store, "--topic", "orders-")
    assert code == 0 and "no ACL matched" in out  # the default pattern type is literal
    code, out, _ = acl(
        capsys,
        "delete",
        "--metadata",
        store,
        "--topic",
        "orders-",
        "--resource-pattern-type",
        "prefixed",
        "--allow-principal",
        "User:bob",
    )
    assert code == 0 and out.count("deleted: ") == 2
    assert {r["principal"] for r in listed(capsys, store, "--topic", "orders-")} == {"User:alice"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--operation", "Read", "--topic", "t"], "--allow-principal"),
        (["--allow-principal", "User:a", "--topic", "t"], "--operation"),
        (["--allow-principal", "User:a", "--operation", "Read"], "name a resource"),
        (["--allow-principal", "alice", "--operation", "Read", "--topic", "t"], "TYPE:NAME"),
        (["--allow-principal", "User:a", "--operation", "Fly", "--topic", "t"], "IdempotentWrite"),
        (
            ["--allow-principal", "User:a", "--operation", "Read", "--topic", "t"]
            + ["--allow-host", "example.com"],
            "IP address",
        ),
        (
            ["--allow-principal", "User:a", "--operation", "IdempotentWrite", "--topic", "t"],
            "does not apply",
        ),
        (
            ["--allow-principal", "User:a", "--operation", "Read", "--topic", "t"]
            + ["--resource-pattern-type", "match"],
            "only a filter",
        ),
        (["--deny-host", "1.2.3.4", "--operation", "Read", "--topic", "t"], "--deny-principal"),
    ],
)
def test_bad_input_is_refused_with_what_to_do(
    capsys: pytest.CaptureFixture[str], store: str, args: list[str], message: str
) -> None:
    code, _, err = acl(capsys, "add", "--metadata", store, *args)
    assert code == 1 and message in err
    assert listed(capsys, store) == []


def test_delete_needs_a_resource_and_a_store(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, store: str
) -> None:
    code, _, err = acl(capsys, "delete", "--metadata", store)
    assert code == 1 and "name a resource" in err
    code, _, err = acl(capsys, "list", "--metadata", str(tmp_path / "nope.sqlite"))
    assert code == 1 and "no metadata store" in err


def test_authorizer_settings() -> None:
    settings = load_settings(
        {"STREAMHOUSE_AUTHORIZER": "acl", "STREAMHOUSE_SUPER_USERS": "User:a;User:b"}
    )
    assert settings.authorizer == "acl" and settings.allow_everyone_if_no_acl_found is False
    assert load_settings({}).authorizer == "none"
    for env, message in (
        ({"STREAMHOUSE_AUTHORIZER": "opa"}, "use none or acl"),
        ({"STREAMHOUSE_AUTHORIZER": "acl", "STREAMHOUSE_SUPER_USERS": "admin"}, "TYPE:NAME"),
        ({"STREAMHOUSE_SUPER_USERS": "User:admin"}, "STREAMHOUSE_AUTHORIZER=acl"),
        ({"STREAMHOUSE_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true"}, "STREAMHOUSE_AUTHORIZER=acl"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(env)


def test_bootstrap_server_input_errors(capsys: pytest.CaptureFixture[str], store: str) -> None:
    closed = "127.0.0.1:9"  # refused before any connection is tried
    for args, message in (
        (["--bootstrap-server", "nohostport"], "HOST:PORT"),
        (["--bootstrap-server", closed, "--metadata", store], "not both"),
        (["--bootstrap-server", closed, "--security-protocol", "SASL_PLAINTEXT"], "--user"),
    ):
        code, _, err = acl(capsys, "list", *args)
        assert code == 1 and message in err, (args, err)
