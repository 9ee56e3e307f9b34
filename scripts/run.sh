#!/usr/bin/env bash
# Sets up, builds and runs the main job: vqkv-server on 127.0.0.1:50051 with
# RocksDB under ./vqkv-data (arguments are passed on, e.g. --listen, --config;
# see docs/SERVICE.md). Stop it with Ctrl-C (SIGINT) or SIGTERM: it drains,
# flushes and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh >&2
exec "${BUILD_DIR:-build}/service/vqkv-server" "$@"
