"""Build of the one C extension; everything else is configured in pyproject.toml.

``pip install -e .`` (and a wheel build) compiles ``streamhouse/_batchcheck.c``, the record
walk of the ingest edge's batch validation.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "streamhouse._batchcheck",
            ["streamhouse/_batchcheck.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        )
    ]
)
