#!/usr/bin/env bash
# Installs everything vqkv needs to build, test and benchmark, from Debian's
# packages. Idempotent: when every package is already present it only checks.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git clang-format
  libabsl-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev
  libxxhash-dev libyaml-cpp-dev libcpp-httplib-dev libcli11-dev
  libfaiss-dev
  redis-server libhiredis-dev
  openssl  # the TLS integration test makes a self-signed certificate
  python3 python3-grpcio python3-protobuf python3-numpy python3-matplotlib
  # the Python module `vqkv` (client/python/) and its tests
  python3-dev pybind11-dev python3-pybind11 python3-xxhash
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} package(s): ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} packages present"
fi
