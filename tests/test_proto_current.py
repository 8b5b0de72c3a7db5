"""The committed sidecar/_proto is exactly what proto/generate.sh makes from proto/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "sidecar" / "_proto"


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts}


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(["sh", str(ROOT / "proto" / "generate.sh"), str(tmp_path)], check=True,
                   capture_output=True, env={**os.environ, "PYTHON": sys.executable})
    fresh, committed = _files(tmp_path), _files(COMMITTED)
    assert sorted(fresh) == sorted(committed), "run proto/generate.sh: file set differs"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run proto/generate.sh: stale {stale}"


def test_generated_code_imports_as_part_of_the_package() -> None:
    from sidecar._proto.logminer.v1 import logminer_pb2, logminer_pb2_grpc

    assert logminer_pb2_grpc.logminer_dot_v1_dot_logminer__pb2 is logminer_pb2
    assert logminer_pb2.DESCRIPTOR.package == "logminer.v1"
