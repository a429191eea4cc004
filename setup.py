"""Build of the C extensions; everything else is configured in pyproject.toml.

``pip install -e .`` (and a wheel build) compiles ``streamhouse/_batchcheck.c``, the record
walk of the ingest edge's batch validation, ``streamhouse/_keycompact.c``, the key map
and record filter of key compaction, ``sql/_arrowdecode.c``, the record walk of the SQL
scan into Arrow buffers, ``streamhouse/_recordwire.c``, the rendering of stored batches as
gRPC ConsumeResponse records, ``ingest/_grpcproduce.c``, gRPC ProduceBatch request bytes
transcoded into Kafka record batches, and ``streamhouse/_memory.c``, buffers that I/O fills
without zeroing them first.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "streamhouse._batchcheck",
            ["streamhouse/_batchcheck.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        ),
        Extension(
            "streamhouse._keycompact",
            ["streamhouse/_keycompact.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        ),
        Extension(
            "streamhouse._recordwire",
            ["streamhouse/_recordwire.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
        ),
        Extension(
            "streamhouse._memory",
            ["streamhouse/_memory.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        ),
        Extension(
            "ingest._grpcproduce",
            ["ingest/_grpcproduce.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        ),
        Extension(
            "sql._arrowdecode",
            ["sql/_arrowdecode.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        ),
    ]
)
