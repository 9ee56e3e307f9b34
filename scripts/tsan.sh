#!/usr/bin/env bash
# Runs vqkv's concurrency tests under ThreadSanitizer, in build-tsan/.
#
# Why it builds Abseil: TSan only sees synchronization done by instrumented
# code, and Debian's libabsl is not instrumented, so every absl::Mutex would
# look like no lock at all and every guarded field like a race. This script
# fetches the Abseil source of the exact version installed (apt-get source,
# from Debian's deb-src; it adds a deb-src entry for bookworm when none is
# configured), builds it with -fsanitize=thread into build-tsan/_deps/, and
# links the tests against it. RocksDB stays uninstrumented: its internal
# locking is pthread's, which TSan intercepts, and races inside it are not
# ours to report (tests/tsan.supp).
#
# gRPC stays uninstrumented (Debian's build): its own hand-offs between
# threads are invisible to TSan, so tests/tsan.supp drops what it does with
# its own memory and with the absl::Status objects of its core (each entry
# explained there); our handlers, reactors and the store they call are
# instrumented and checked. The list below is the base, storage, client and
# service unit tests and the integration tests (the real vqkv-server, built
# with TSan too, under concurrent clients, streams, restarts, TLS), all but
# generate_server_test (a model forward pass per request: too slow under
# TSan). Extra ctest arguments pass through, e.g.
#   scripts/tsan.sh -R tiered_store
#
# Takes ~10 min the first time on 2 cores (Abseil), then only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build-tsan}
JOBS=${JOBS:-$(nproc)}
DEPS="$PWD/$BUILD_DIR/_deps"
ABSL_PREFIX="$DEPS/absl-install"
TSAN_FLAGS="-fsanitize=thread -fno-omit-frame-pointer -g -O1"

absl_version=$(dpkg-query -W -f='${Version}' libabsl-dev)
if [[ ! -f "$ABSL_PREFIX/.version" ||
      "$(cat "$ABSL_PREFIX/.version")" != "$absl_version" ]]; then
  if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list \
      /etc/apt/sources.list.d/; then
    echo "tsan: adding a deb-src entry for bookworm (to fetch Abseil's source)"
    cat >/etc/apt/sources.list.d/vqkv-deb-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq
  fi
  rm -rf "$DEPS/absl-src" "$DEPS/absl-build" "$ABSL_PREFIX"
  mkdir -p "$DEPS/absl-src"
  (cd "$DEPS/absl-src" && apt-get source -qq "abseil=$absl_version" 2>&1 |
    grep -v "unsandboxed" || true)
  src=$(find "$DEPS/absl-src" -mindepth 1 -maxdepth 1 -type d | head -1)
  [[ -f "$src/CMakeLists.txt" ]] || { echo "tsan: no Abseil source" >&2; exit 1; }
  echo "tsan: building Abseil $absl_version with -fsanitize=thread"
  cmake -S "$src" -B "$DEPS/absl-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_STANDARD=17 -DABSL_PROPAGATE_CXX_STD=ON \
    -DBUILD_TESTING=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
    -DCMAKE_CXX_FLAGS="$TSAN_FLAGS" -DCMAKE_C_FLAGS="$TSAN_FLAGS" \
    -DCMAKE_INSTALL_PREFIX="$ABSL_PREFIX" >/dev/null
  cmake --build "$DEPS/absl-build" -j "$JOBS" --target install >/dev/null
  echo "$absl_version" >"$ABSL_PREFIX/.version"
fi

TARGETS=(base_test storage_memory_tier_test storage_rocksdb_tier_test
  storage_tiered_store_test storage_rendezvous_table_test
  storage_namespace_ledger_test storage_codebook_registry_test
  storage_disk_catalog_test storage_fault_campaign_test client_hash_test
  cache_client_test kv_connector_test nccl_rendezvous_test
  cluster_placement_test cluster_backend_test service_unit_test
  kv_service_integration_test server_inprocess_test client_server_test
  rendezvous_server_test codebook_stream_test cluster_test
  service_hardening_test tls_test reflection_test grpc_backend_test)
cmake -S . -B "$BUILD_DIR" -G Ninja -DVQKV_SANITIZE=thread \
  -DCMAKE_PREFIX_PATH="$ABSL_PREFIX" -DVQKV_BUILD_BENCH=OFF \
  -DVQKV_ENABLE_CUDA=OFF >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${TARGETS[@]}"

cd "$BUILD_DIR"
# detect_deadlocks=0: TSan's lock-order checker tracks at most 64 locks held
# at once, and DeleteNamespace holds every stripe lock of the store.
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1 detect_deadlocks=0 suppressions=$PWD/../tests/tsan.supp}
# The labels' other tests are not built here (NOT_BUILT entries).
ctest --output-on-failure -j "$JOBS" --timeout 1800 \
  -L 'base|storage|client|service|integration' \
  -E 'NOT_BUILT|install|python|c_api_test|GenerateServer' "$@"
