#!/usr/bin/env bash
# Unpacks a bundle of full-build GPU tests (tests/gpu/bundle.sh) and runs
# each test in it through the bundle's own dynamic loader and libraries, so
# it runs on a machine without the Debian packages it was built against.
# The GPU driver (libcuda) still comes from this machine: the loader also
# searches $LD_LIBRARY_PATH and the system's library cache.
#
# usage: tests/gpu/run_bundle.sh BUNDLE RESULTS_DIR
# Writes RESULTS_DIR/<test>.log and <test>.xml per test and prints each
# test case's outcome. Exit status 0 only if every test binary exited 0
# (tests skip without a GPU unless VQKV_REQUIRE_GPU=1, which tests/gpu/run.sh
# sets, makes that a failure).
set -uo pipefail
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUNDLE RESULTS_DIR" >&2
  exit 2
fi
bundle=$1
results=$2
mkdir -p "$results"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# xz is not on every CUDA image; Python's tarfile reads the same archive
# (VQKV_UNPACK_WITH_PYTHON=1 picks it here too, for the test).
if command -v xz >/dev/null && [[ ${VQKV_UNPACK_WITH_PYTHON:-0} != 1 ]]; then
  tar -C "$dir" -xJf "$bundle" || exit 1
else
  python3 -c 'import sys, tarfile
f = tarfile.open(sys.argv[1])
kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
f.extractall(sys.argv[2], **kw)' "$bundle" "$dir" || exit 1
fi
sed -n '1,3p' "$dir/MANIFEST"
# A bundle made at another commit tests other code: say so, run it anyway.
made_at=$(sed -n 's/^commit: //p' "$dir/MANIFEST")
head=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $made_at != "$head" ]]; then
  echo "warning: the bundle was made at $made_at, this tree is at $head"
fi
status=0
for t in "$dir"/bin/*; do
  name=$(basename "$t")
  "$dir/lib/ld-linux-x86-64.so.2" \
    --library-path "$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$t" "--gtest_output=xml:$results/$name.xml" >"$results/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc"
  grep -E "^\[  (FAILED|SKIPPED|     OK) " "$results/$name.log"
  ((rc == 0)) || status=1
done
exit $status
