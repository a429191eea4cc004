"""`streamhouse` command: `streamhouse up` runs the whole stack (one agent) in the foreground;
`streamhouse status [--json]` shows it (streamhouse/status.py); `streamhouse clean` removes the
shared-memory rings a killed stack left (the next start does too).

It runs supervisord with the repo's supervisord.conf, with STREAMHOUSE_DATA_DIR made absolute
and every other STREAMHOUSE_* variable passed through. Ctrl-C or SIGTERM stops every process.

The flags of `up` and `config` (`--data-dir`, `--metadata`, `--object-store`, `--kafka-listen`,
`--kafka-advertised`, `--grpc-listen`, `--grpc-advertised`, `--sql-listen`, `--agent-id`,
`--zone`) set the setting of the same name (`--zone` is `agent_zone`), overriding STREAMHOUSE_*
variables and the TOML file, so one agent of a cluster starts as::

    streamhouse up --metadata postgresql://sh@db:5432/streamhouse --object-store s3://bucket \
        --kafka-listen 127.0.0.1:9192 --grpc-listen 127.0.0.1:50151 --data-dir /var/lib/sh-a2
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys

from streamhouse import rings
from streamhouse.config import ConfigError, Settings, load_settings

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SUPERVISORD_CONF = REPO_ROOT / "supervisord.conf"


def stack_environment(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment supervisord and its programs run with."""
    env = dict(os.environ if base is None else base)
    env["STREAMHOUSE_DATA_DIR"] = str(settings.data_path)
    bin_dir = str(pathlib.Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def prepare_data_dir(settings: Settings) -> None:
    """Creates the data dir layout and removes rings left by a stack that is no longer running.

    The data dir and its run/ and logs/ dirs are private to this user (0700; tightened if they
    exist open to others; refused if another user owns them)."""
    for path in (settings.data_path, settings.run_dir, settings.log_dir):
        rings.make_private_dir(path)
    pid_file = settings.run_dir / "supervisord.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            pid_file.unlink(missing_ok=True)
        else:
            raise SystemExit(
                f"streamhouse: error: a stack is already running on {settings.data_path} "
                f"(supervisord pid {pid}); stop it or use another STREAMHOUSE_DATA_DIR"
            )
    rings.unlink_all(settings)


class _PreparedDataDir:
    """The `streamhouse` XML-RPC namespace of supervisord: the data dir it prepared."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    def getDataDir(self) -> str:  # noqa: N802 (XML-RPC method names are camelCase)
        return self.data_dir


def prepare_rpcinterface(supervisord: object, **config: str) -> _PreparedDataDir:
    """supervisord's [rpcinterface:streamhouse] factory: called once supervisord holds its
    socket (so no other supervisord runs on this data dir) and before any program starts.
    Makes run/ and logs/ private and removes the rings a killed stack left, so a direct
    `supervisord -c supervisord.conf` start reclaims them as `streamhouse up` does."""
    settings = load_settings()
    for path in (settings.data_path, settings.run_dir, settings.log_dir):
        rings.make_private_dir(path)
    rings.unlink_all(settings)
    return _PreparedDataDir(str(settings.data_path))


def clean(settings: Settings) -> int:
    """`streamhouse clean`: removes the rings of the stack on this data dir, refused while its
    supervisord runs."""
    pid_file = settings.run_dir / "supervisord.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            pass
        else:
            print(
                f"streamhouse: error: the stack on {settings.data_path} is running (supervisord "
                f"pid {pid}); stop it first",
                file=sys.stderr,
            )
            return 1
    from streamhouse.status import existing_rings

    removed = existing_rings(settings)
    rings.unlink_all(settings)
    print(f"streamhouse: removed {len(removed)} ring(s) of {settings.data_path}", file=sys.stderr)
    return 0


def up(settings: Settings, env: dict[str, str] | None = None) -> int:
    """Runs the stack in the foreground; `env` (default os.environ) carries its settings."""
    prepare_data_dir(settings)
    cmd = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(SUPERVISORD_CONF)]
    proc = subprocess.Popen(cmd, env=stack_environment(settings, env))

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    host, port = settings.kafka_advertised_address
    print(
        f"streamhouse: agent {settings.agent_name} up on gRPC {settings.grpc_listen}, Kafka "
        f"{settings.kafka_listen} (advertised {host}:{port}), SQL {settings.sql_listen}, web "
        f"console http://{settings.console_listen}/, metadata "
        f"{'PostgreSQL' if settings.metadata else 'SQLite'}, data in {settings.data_path} "
        f"(logs in {settings.log_dir}); Ctrl-C stops",
        file=sys.stderr,
    )
    rc = proc.wait()
    rings.unlink_all(settings)
    return rc


# Flag -> setting (field of Settings) for `up` and `config`.
FLAGS: dict[str, tuple[str, str]] = {
    "--data-dir": ("data_dir", "directory of this agent's rings, logs (and SQLite metadata)"),
    "--metadata": ("metadata", "postgresql:// URL of a cluster's metadata (default: SQLite)"),
    "--object-store": ("object_store", "file:///path, s3://bucket[/prefix] or memory://"),
    "--kafka-listen": ("kafka_listen", "HOST:PORT the Kafka listener binds"),
    "--kafka-advertised": ("kafka_advertised", "HOST:PORT Kafka clients are told to use"),
    "--grpc-listen": ("grpc_listen", "HOST:PORT the gRPC server binds"),
    "--grpc-advertised": ("grpc_advertised", "HOST:PORT shown for this agent's gRPC"),
    "--sql-listen": ("sql_listen", "HOST:PORT the sql service (statements, queries) binds"),
    "--agent-id": ("agent_id", "this agent's stable id (default: Kafka advertised host:port)"),
    "--zone": ("agent_zone", "this agent's zone (clients announce theirs in client.id)"),
}


def settings_environment(
    overrides: dict[str, str | None], base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment with each given flag's setting as its STREAMHOUSE_* variable."""
    env = dict(os.environ if base is None else base)
    for field, value in overrides.items():
        if value is not None:
            env[f"STREAMHOUSE_{field.upper()}"] = value
    return env


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (field, help_text) in FLAGS.items():
        parser.add_argument(flag, dest=field, metavar="VALUE", default=None, help=help_text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamhouse", description="Run a StreamHouse stack.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_setting_flags(
        sub.add_parser("up", help="start every process in the foreground under supervisord")
    )
    _add_setting_flags(sub.add_parser("config", help="print the effective settings as JSON"))
    status_parser = sub.add_parser(
        "status", help="programs, rings, object store and metadata health of the stack"
    )
    _add_setting_flags(status_parser)
    status_parser.add_argument("--json", action="store_true", help="one JSON object")
    _add_setting_flags(
        sub.add_parser("clean", help="remove the shared-memory rings a killed stack left")
    )
    args = parser.parse_args(argv)
    overrides = {field: getattr(args, field) for field, _ in FLAGS.values()}
    for flag, (field, _) in FLAGS.items():
        if overrides[field] == "" and field not in ("metadata", "object_store", "agent_zone"):
            print(f"streamhouse: error: {flag} must not be empty", file=sys.stderr)
            return 2
    env = settings_environment(overrides)
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        print(f"streamhouse: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        import msgspec

        print(msgspec.json.encode(settings).decode())
        return 0
    if args.command == "status":
        from streamhouse import status

        return status.main(settings, args.json)
    if args.command == "clean":
        return clean(settings)
    return up(settings, env)


if __name__ == "__main__":
    raise SystemExit(main())
