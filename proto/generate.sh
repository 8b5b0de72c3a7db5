#!/bin/sh
# Regenerate the committed Python code for proto/logminer/v1/*.proto.
#
# Usage: proto/generate.sh [OUT_DIR]     (default: sidecar/_proto)
# Environment: PYTHON, the interpreter that has the pinned grpcio-tools
# (default: python3).
#
# The codegen is pinned: the output depends on the grpcio-tools version (its
# bundled protoc), so the script refuses any other version. grpcio-tools
# 1.81.1 (bundled protoc 33.5) writes code that needs protobuf >= 6.33.5, < 7 at
# run time.
# tests/test_proto_current.py runs this script into a temporary directory and
# compares the result with the committed files byte for byte.
set -eu

GRPCIO_TOOLS_VERSION=1.81.1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-"$ROOT/sidecar/_proto"}
PYTHON=${PYTHON:-python3}

found=$("$PYTHON" -c 'from grpc_tools import grpc_version; print(grpc_version.VERSION)')
if [ "$found" != "$GRPCIO_TOOLS_VERSION" ]; then
    echo "generate.sh: need grpcio-tools==$GRPCIO_TOOLS_VERSION, found $found" >&2
    exit 1
fi

mkdir -p "$OUT/logminer/v1"
cd "$ROOT/proto"
"$PYTHON" -m grpc_tools.protoc -I . \
    --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
    logminer/v1/*.proto

# protoc names imports after the -I root ("from logminer.v1 import ..."); make
# them absolute within the package so the code imports as sidecar._proto...
for grpc_file in "$OUT"/logminer/v1/*_pb2_grpc.py; do
    sed 's/^from logminer\.v1 import /from sidecar._proto.logminer.v1 import /' \
        "$grpc_file" > "$grpc_file.tmp"
    mv "$grpc_file.tmp" "$grpc_file"
done

printf '"""Generated protobuf and gRPC code (proto/generate.sh); do not edit."""\n' \
    > "$OUT/__init__.py"
printf '"""Generated code for the logminer protos."""\n' > "$OUT/logminer/__init__.py"
printf '"""Generated code for package logminer.v1 (proto/logminer/v1)."""\n' \
    > "$OUT/logminer/v1/__init__.py"
