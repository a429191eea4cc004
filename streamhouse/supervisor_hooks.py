"""What supervisord runs of ours while it starts a stack (supervisord.conf), so that a bare
`STREAMHOUSE_DATA_DIR=$PWD/data supervisord -c supervisord.conf` works on a data dir that
does not exist yet.

supervisord refuses to start when the folder of a file its configuration names does not
exist, and it checks that while it reads the file, in this order: the [supervisord] section
(its own log and pid file), then it imports the [rpcinterface:*] factories, then it reads the
[program:*] sections (their logs in `logs/`) and the [unix_http_server] socket (in `run/`).
So:

1. Importing this module (supervisord does, for [rpcinterface:streamhouse], while it reads
   the file) makes the data dir, `run/` and `logs/` private (0700; `rings.make_private_dir`:
   created, tightened if open to others, refused if another user owns them). The programs'
   logs and the socket then pass the check. Outside supervisord (no `supervisor.options`
   module loaded) the import does nothing.
2. supervisord's own log and pid file are checked before that import, so [supervisord] names
   stand-ins in folders that always exist and are never written (`logfile=/dev/null` with
   rotation off; the pid file under `%(here)s`), and `prepare_rpcinterface` (called once
   supervisord holds its socket, before it writes its pid file or starts a program) points
   them at `run/supervisord.pid` and `logs/supervisord.log` (rotated at 10 MB, 3 backups).
   It also does what `streamhouse.cli.prepare_rpcinterface` does: removes the rings a killed
   stack left.
"""

from __future__ import annotations

import sys
from typing import Any

from streamhouse import rings
from streamhouse.cli import prepare_rpcinterface as _prepare_data_dir
from streamhouse.config import ConfigError, Settings, load_settings

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
_FORMAT = "%(asctime)s %(levelname)s %(message)s\n"  # supervisord's own line format


def make_dirs(settings: Settings) -> None:
    """The data dir, run/ and logs/, private to this user."""
    for path in (settings.data_path, settings.run_dir, settings.log_dir):
        rings.make_private_dir(path)


def _at_import() -> None:
    if "supervisor.options" not in sys.modules:
        return  # imported by a test or a tool, not by supervisord reading its configuration
    # supervisord reports a ValueError raised while it reads its file as one "Error: ..." line
    # and exits 2 (anything else would be a traceback).
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise ValueError(f"streamhouse: configuration error: {exc}") from None
    try:
        make_dirs(settings)
    except OSError as exc:
        raise ValueError(
            f"streamhouse: cannot make the data dir {settings.data_path} with its run/ and "
            f"logs/ private to this user: {exc}; set STREAMHOUSE_DATA_DIR to a folder this "
            "user owns or can create"
        ) from None


def prepare_rpcinterface(supervisord: object, **config: str) -> object:
    """supervisord's [rpcinterface:streamhouse] factory (see the module docstring, 2.)."""
    from supervisor import loggers

    prepared = _prepare_data_dir(supervisord, **config)
    settings = load_settings()
    options = supervisord.options  # type: ignore[attr-defined]
    options.pidfile = str(settings.run_dir / "supervisord.pid")
    loggers.handle_file(
        options.logger,
        str(settings.log_dir / "supervisord.log"),
        _FORMAT,
        rotating=True,
        maxbytes=LOG_MAX_BYTES,
        backups=LOG_BACKUPS,
    )
    options.logger.info(f"streamhouse: supervisord's log and pid file are in {settings.data_path}")
    _shorten_poll(options)
    return prepared


#: Longest wait of supervisord's main loop (seconds).
POLL_TIMEOUT_S = 0.1


def _shorten_poll(options: Any) -> None:
    """Caps the wait of supervisord's main loop at POLL_TIMEOUT_S (its own is 1 s).

    supervisord stops programs one priority after the other and starts the next only on a
    later turn of its loop; a child's exit does not end the wait (Python retries a poll a
    signal interrupted), so each of our seven programs cost a whole second to stop: ~7 s per
    stop of a stack, and as long again for a `streamctl`/supervisorctl restart. Ten turns a
    second cost nothing measurable. Tick events are computed from the clock, so they are
    unaffected. Left alone when the poller is not the one this was written against."""
    poller = getattr(options, "poller", None)
    poll = getattr(poller, "poll", None)
    if poll is None:
        return

    def capped_poll(timeout: float) -> Any:
        return poll(min(timeout, POLL_TIMEOUT_S))

    poller.poll = capped_poll


_at_import()
