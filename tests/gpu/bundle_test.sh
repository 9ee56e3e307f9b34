#!/usr/bin/env bash
# tests/gpu/bundle.sh and run_bundle.sh on a machine without a GPU: the
# bundle resolves every library inside itself, its tests run with an empty
# environment through its own loader and skip (exit 0), and fail when
# VQKV_REQUIRE_GPU=1; both ways of unpacking work.
# usage: bundle_test.sh BUILD_DIR
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "bundle_test: FAILED: $*" >&2; exit 1; }

BUILD_DIR=$build bash "$src/tests/gpu/bundle.sh" --out "$work/b" \
  kv_connector_cuda_test
[[ -f $work/b/bundle.tar.xz ]] || fail "no archive"

mkdir "$work/u"
tar -C "$work/u" -xJf "$work/b/bundle.tar.xz"
listing=$(env -i "$work/u/lib/ld-linux-x86-64.so.2" --library-path \
  "$work/u/lib" --list "$work/u/bin/kv_connector_cuda_test")
outside=$(awk '$2 == "=>" && index($3, "'"$work/u/lib/"'") != 1' <<<"$listing")
[[ -z $outside ]] || fail "libraries resolved outside the bundle: $outside"

for python in 0 1; do
  out=$(env -i PATH=/usr/bin:/bin VQKV_UNPACK_WITH_PYTHON=$python \
    bash "$src/tests/gpu/run_bundle.sh" "$work/b/bundle.tar.xz" \
    "$work/r$python") || fail "run_bundle.sh (python $python) exited $?: $out"
  grep -q "kv_connector_cuda_test: exit 0" <<<"$out" || fail "no exit line: $out"
  grep -q "SKIPPED .*DevicePagesSaveAndLoadAsHostPagesDo" <<<"$out" ||
    fail "the test did not run and skip: $out"
  [[ -s $work/r$python/kv_connector_cuda_test.xml ]] || fail "no XML report"
done
if out=$(env -i PATH=/usr/bin:/bin VQKV_REQUIRE_GPU=1 \
  bash "$src/tests/gpu/run_bundle.sh" "$work/b/bundle.tar.xz" "$work/rr"); then
  fail "VQKV_REQUIRE_GPU=1 without a GPU passed: $out"
fi
grep -q "FAILED .*DevicePagesSaveAndLoadAsHostPagesDo" <<<"$out" ||
  fail "VQKV_REQUIRE_GPU=1 did not fail the test: $out"
echo "bundle_test: ok"
