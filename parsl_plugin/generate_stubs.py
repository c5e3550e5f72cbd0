#!/usr/bin/env python3
"""Generates the Python gRPC stubs of the wire contract (../proto/*.proto).

Output goes to dragon_parsl/_proto/ (the generated files are not committed).
protoc writes top-level imports such as ``import common_pb2 as common__pb2``;
they are rewritten to package-relative imports (``from . import common_pb2 ...``)
so that the stubs work inside the ``dragon_parsl._proto`` package without
touching sys.path.

Usage: python parsl_plugin/generate_stubs.py   (``make python`` runs it)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parent / "proto"
OUT_DIR = HERE / "dragon_parsl" / "_proto"

# "import common_pb2 as common__pb2" / "import head_pb2 as head__pb2"
_IMPORT_RE = re.compile(r"^import (\w+_pb2(?:_grpc)?) as (\w+)$", re.MULTILINE)


def make_relative(source: str) -> str:
    return _IMPORT_RE.sub(r"from . import \1 as \2", source)


def main() -> int:
    try:
        from grpc_tools import protoc
        import grpc_tools
    except ImportError:
        print("generate_stubs: grpcio-tools is not installed (pip install grpcio-tools)", file=sys.stderr)
        return 1
    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        print(f"generate_stubs: no .proto files in {PROTO_DIR}", file=sys.stderr)
        return 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for old in OUT_DIR.glob("*_pb2*.py"):
        old.unlink()
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}",
            f"--python_out={OUT_DIR}", f"--grpc_python_out={OUT_DIR}",
            *[str(p) for p in protos]]
    rc = protoc.main(args)
    if rc != 0:
        print(f"generate_stubs: protoc failed (exit {rc}): {' '.join(args)}", file=sys.stderr)
        return rc
    generated = sorted(OUT_DIR.glob("*_pb2*.py"))
    for path in generated:
        text = path.read_text()
        fixed = make_relative(text)
        if fixed != text:
            path.write_text(fixed)
    init = OUT_DIR / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC stubs of proto/*.proto (run \'make python\')."""\n')
    print(f"generate_stubs: wrote {', '.join(p.name for p in generated)} to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
