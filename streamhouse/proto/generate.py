"""Regenerates the protobuf and gRPC modules next to this file from streamhouse.proto and
sql.proto (the sql process's service).

Run `python -m streamhouse.proto.generate` after editing a .proto (needs grpcio-tools).
"""

from __future__ import annotations

import pathlib
import re

from grpc_tools import protoc

PROTOS = ("streamhouse", "sql")


def main() -> None:
    here = pathlib.Path(__file__).resolve().parent
    include = pathlib.Path(protoc.__file__).resolve().parent / "_proto"
    for name in PROTOS:
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{here}",
                f"-I{include}",
                f"--python_out={here}",
                f"--pyi_out={here}",
                f"--grpc_python_out={here}",
                str(here / f"{name}.proto"),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed on {name}.proto with exit code {rc}")
        grpc_module = here / f"{name}_pb2_grpc.py"
        text = grpc_module.read_text()
        # protoc emits an absolute import; make it package-relative.
        text = re.sub(rf"^import {name}_pb2 as", f"from . import {name}_pb2 as", text, flags=re.M)
        grpc_module.write_text(text)


if __name__ == "__main__":
    main()
