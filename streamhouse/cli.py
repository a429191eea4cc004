"""`streamhouse` command: `streamhouse up` runs the whole stack in the foreground.

It runs supervisord with the repo's supervisord.conf, with STREAMHOUSE_DATA_DIR made absolute
and every other STREAMHOUSE_* variable passed through. Ctrl-C or SIGTERM stops every process.
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


def up(settings: Settings) -> int:
    prepare_data_dir(settings)
    cmd = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(SUPERVISORD_CONF)]
    proc = subprocess.Popen(cmd, env=stack_environment(settings))

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    print(
        f"streamhouse: up on gRPC {settings.grpc_listen}, data in {settings.data_path} "
        f"(logs in {settings.log_dir}); Ctrl-C stops",
        file=sys.stderr,
    )
    rc = proc.wait()
    rings.unlink_all(settings)
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamhouse", description="Run a StreamHouse stack.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start every process in the foreground under supervisord")
    sub.add_parser("config", help="print the effective settings as JSON")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"streamhouse: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        import msgspec

        print(msgspec.json.encode(settings).decode())
        return 0
    return up(settings)


if __name__ == "__main__":
    raise SystemExit(main())
