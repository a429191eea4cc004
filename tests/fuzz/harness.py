"""Driver shared by the fuzz targets: atheris (coverage-guided) when installed, else a plain
random-mutation loop with the same command line.

    python tests/fuzz/fuzz_batch.py -max_total_time=60            # atheris / libFuzzer
    python tests/fuzz/fuzz_batch.py -max_total_time=60 CORPUS_DIR # keep what it finds

With atheris, every argument is libFuzzer's (``-runs``, ``-max_len``, ``-jobs``,
``-rss_limit_mb``, corpus directories...). Without a corpus directory, the target's seeds (valid
inputs built in code) are written to a fresh temporary directory which is used as the
corpus, so the fuzzer starts from well-formed inputs instead of from nothing. A crash (an
exception the target does not allow) stops the run, prints the traceback and leaves the input
in ``crash-<sha1>`` in the current directory; reproduce it with
``python tests/fuzz/fuzz_batch.py crash-<sha1>``.

Without atheris (``pip install -e '.[fuzz]'`` installs it), the fallback reads
``-max_total_time=S`` and ``-runs=N`` (default: 60 s), mutates the seeds at random (bit flips,
truncations, splices, lying length prefixes) and reports crashes the same way; it is not
coverage-guided. Files given as arguments are run once each (reproduction).
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable

try:
    import atheris
except ImportError:  # the fallback below
    atheris = None

Target = Callable[[bytes], None]

# Length prefixes that lie, in the encodings the targets parse.
LIES = [
    struct.pack(">i", 0x7FFFFFFF),
    struct.pack(">i", -2),
    struct.pack(">h", 0x7FFF),
    b"\xff\xff\xff\xff\x0f",  # unsigned varint 2**32 - 1
    b"\xdd\xff\xff\xff\xff",  # msgpack array32
    struct.pack("<I", 0xFFFFFFFF),
]


def instrumented() -> object:
    """Context manager that instruments the imports inside it for coverage (atheris only, and
    only when a fuzz target runs as the program: not when a test imports it)."""
    if atheris is not None and os.path.basename(sys.argv[0]).startswith("fuzz_"):
        return atheris.instrument_imports()
    import contextlib

    return contextlib.nullcontext()


def mutate(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(out))
        kind = rng.randrange(6)
        if kind == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del out[pos:]
        elif kind == 2:
            lie = rng.choice(LIES)
            out[pos : pos + len(lie)] = lie
        elif kind == 3:
            out[pos : pos + rng.randint(0, 8)] = rng.randbytes(rng.randint(0, 8))
        elif kind == 4 and seeds:
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            out[pos:pos] = other[start : start + rng.randint(1, 64)]
        elif kind == 5 and out:
            out[min(pos, len(out) - 1)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
    return bytes(out)


def _save_crash(data: bytes) -> str:
    name = f"crash-{hashlib.sha1(data).hexdigest()}"
    with open(name, "wb") as f:
        f.write(data)
    return name


def _fallback(target: Target, seeds: list[bytes], argv: list[str]) -> None:
    options = dict(a[1:].split("=", 1) for a in argv[1:] if a.startswith("-") and "=" in a)
    files = [a for a in argv[1:] if not a.startswith("-")]
    if files and all(os.path.isfile(f) for f in files):
        for path in files:
            with open(path, "rb") as f:
                target(f.read())
            print(f"{path}: ok")
        return
    seconds = float(options.get("max_total_time", 60))
    runs = int(options.get("runs", -1))
    rng = random.Random(int(options.get("seed", time.time_ns())))
    print(f"atheris is not installed: random mutation for {seconds:g} s (not coverage-guided)")
    deadline = time.monotonic() + seconds
    done = 0
    corpus = list(seeds) or [b""]
    while time.monotonic() < deadline and done != runs:
        data = mutate(rng.choice(corpus), rng, corpus)
        try:
            target(data)
        except Exception:
            traceback.print_exc()
            print(f"crash after {done} runs; input saved to {_save_crash(data)}")
            raise SystemExit(1) from None
        done += 1
        if done % 10000 == 0:
            print(f"#{done} runs")
    print(f"done: {done} runs, no crash")


def main(target: Target, seeds: Iterable[bytes]) -> None:
    """Fuzz `target` (raises only on a bug) from `seeds`, as the command line says."""
    seed_list = list(seeds)
    for seed in seed_list:  # the seeds themselves must pass
        target(seed)
    argv = list(sys.argv)
    if atheris is None:
        _fallback(target, seed_list, argv)
        return
    if not any(os.path.exists(a) for a in argv[1:] if not a.startswith("-")):
        corpus = tempfile.mkdtemp(prefix=f"{os.path.basename(argv[0]).removesuffix('.py')}-")
        for seed in seed_list:
            with open(os.path.join(corpus, hashlib.sha1(seed).hexdigest()), "wb") as f:
                f.write(seed)
        argv.append(corpus)
        print(f"seed corpus of {len(seed_list)} inputs in {corpus}", flush=True)
    atheris.Setup(argv, target)
    atheris.Fuzz()
