#!/usr/bin/env bash
# Installs the client package from a build tree into a temporary prefix and
# builds and runs tests/unit/client/install_consumer against it, as a user
# of the installed library would (find_package(vqkv), vqkv::client).
# Usage: install_test.sh CMAKE BUILD_DIR CONSUMER_DIR MAKE_PROGRAM CC CXX
#                        [FLAGS]
# FLAGS (e.g. -fsanitize=address,undefined) go to the consumer's compile
# and link lines.
set -euo pipefail
CMAKE=$1 BUILD_DIR=$2 CONSUMER=$3 MAKE_PROGRAM=$4 CC_BIN=$5 CXX_BIN=$6
FLAGS=${7:-}

work=$(mktemp -d "${TMPDIR:-/tmp}/vqkv-install-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

"$CMAKE" --install "$BUILD_DIR" --prefix "$prefix" --component client
for f in include/vqkv/vqkv.h include/vqkv/client/cache_client.h \
         include/vqkv/client/kv_connector.h include/vqkv/storage/keys.h; do
  [[ -f $prefix/$f ]] || { echo "install_test: $f was not installed" >&2; exit 1; }
done
config=$(find "$prefix" -name vqkvConfig.cmake -print -quit)
[[ -n $config ]] || { echo "install_test: no vqkvConfig.cmake" >&2; exit 1; }
find "$prefix" -name 'vqkvConfigVersion.cmake' | grep -q . || {
  echo "install_test: no vqkvConfigVersion.cmake" >&2; exit 1; }

# consumer BUILD_NAME WITH_CXX: configure, build and run the consumer.
consumer() {
  local build=$work/$1
  "$CMAKE" -S "$CONSUMER" -B "$build" -G Ninja \
    -DCMAKE_MAKE_PROGRAM="$MAKE_PROGRAM" \
    -DCMAKE_C_COMPILER="$CC_BIN" -DCMAKE_CXX_COMPILER="$CXX_BIN" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" -DWITH_CXX="$2" \
    -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" \
    -DCMAKE_EXE_LINKER_FLAGS="$FLAGS"
  "$CMAKE" --build "$build" -j 2
  "$build/consumer_c"
  if [[ $2 == ON ]]; then "$build/consumer_cxx"; fi
}
consumer build-c OFF    # a C-only project: the C API alone
consumer build-cxx ON   # C and C++: the C++ API too (Abseil found)
echo "install_test: OK"
