"""Nexmark on StreamHouse: ``python3 bench/nexmark.py generate --events N ...``.

The code is the package ``bench/nexmark/`` (generator, model, CLI; see its docstrings).
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.nexmark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
