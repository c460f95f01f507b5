#!/usr/bin/env sh
# Regenerates the gRPC stubs fleet_envbridge/fleet_pb2*.py from
# ../proto/fleet.proto (needs grpcio-tools: pip install grpcio-tools).
# The stubs are committed so that installing the package needs no compiler;
# rerun this after changing the proto, and raise the grpcio and protobuf
# lower bounds in pyproject.toml to the versions the new stubs check for.
set -eu
cd "$(dirname "$0")"
python -m grpc_tools.protoc \
    --proto_path=../proto \
    --python_out=fleet_envbridge \
    --pyi_out=fleet_envbridge \
    --grpc_python_out=fleet_envbridge \
    ../proto/fleet.proto
# protoc writes a top-level import; the stubs live inside the package.
sed -i 's/^import fleet_pb2 as fleet__pb2$/from . import fleet_pb2 as fleet__pb2/' \
    fleet_envbridge/fleet_pb2_grpc.py
