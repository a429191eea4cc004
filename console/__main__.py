"""`python3 -m console`: the web console (supervisord program `console`)."""

from __future__ import annotations

from console.server import main
from streamhouse.process import run_process

if __name__ == "__main__":
    run_process("console", main)
