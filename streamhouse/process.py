"""Start-up shared by the StreamHouse processes: settings, logging, uvloop, signals.

Each process logs to stderr; supervisord writes that to `<data_dir>/logs/<program>.log` and
rotates it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

from streamhouse.config import ConfigError, Settings, load_settings


def run_process(name: str, main: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> None:
    """Runs `main(settings, stop)` on uvloop until it returns; SIGTERM/SIGINT set `stop`."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger(name)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("starting (data dir %s)", settings.data_path)
        try:
            await main(settings, stop)
        except Exception:
            log.exception("%s failed; supervisord will restart it", name)
            raise
        log.info("stopped")

    try:
        uvloop.run(runner())
    except Exception:
        raise SystemExit(1) from None
