#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (this is what CI runs), then
# the sanitizer pass: the base, client and storage unit tests (threads, buffers and
# wire bytes) under ASan + UBSan in build-asan/, then a short run of every
# fuzz target (scripts/fuzz.sh, clang + libFuzzer in build-fuzz/).
# scripts/sanitize.sh alone runs the whole suite sanitized.
# VQKV_SKIP_SANITIZE=1 / VQKV_SKIP_FUZZ=1 leave those passes out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/get-model.sh
bash scripts/build.sh
(cd "${BUILD_DIR:-build}" &&
  ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 900)

if [[ "${VQKV_SKIP_SANITIZE:-0}" != 1 ]]; then
  VQKV_SANITIZE_TARGETS="base_test storage_memory_tier_test
    storage_rocksdb_tier_test storage_tiered_store_test
    storage_rendezvous_table_test storage_namespace_ledger_test
    storage_codebook_registry_test storage_disk_catalog_test
    storage_fault_campaign_test client_hash_test
    cache_client_test kv_connector_test peer_test nccl_rendezvous_test c_api_test
    cluster_placement_test cluster_backend_test" \
  VQKV_SANITIZE_EXCLUDE="NOT_BUILT|install|python|gpu_bundle" \
    BUILD_DIR=build-asan bash scripts/sanitize.sh 'base|client|storage'
fi

# The short fuzz run covers every target in tests/fuzz/; the whole clang
# build behind it takes about 4 min on the 2-core VM (docs/RELIABILITY.md,
# "Fuzzing"). VQKV_FUZZ_TARGETS="..." picks the targets run here.
if [[ "${VQKV_SKIP_FUZZ:-0}" != 1 ]]; then
  FUZZ_TARGETS=${VQKV_FUZZ_TARGETS:-block codebook_set gguf tokenizer config grpc_service peer_message} \
    FUZZ_SECONDS=${FUZZ_SECONDS:-10} bash scripts/fuzz.sh
fi
