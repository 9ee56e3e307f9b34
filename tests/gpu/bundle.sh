#!/usr/bin/env bash
# Packs GPU tests of the full build for the bare GPU machine. The full build
# needs absl, RocksDB, OpenBLAS and the rest of the Debian -dev packages,
# which that machine lacks, so the tests that exercise client/ on a GPU
# (default: kv_connector_cuda_test, cuda_rvq_encoder_test) cannot be built
# there. This copies them, every shared library they load (the CUDA runtime too; not the driver,
# libcuda, which is the GPU machine's own) and this machine's dynamic loader
# into one archive; tests/gpu/run.sh unpacks it and runs each binary through
# the packed loader, so neither the GPU machine's libraries nor its glibc
# version matter.
#
#   scripts/build.sh && tests/gpu/bundle.sh      # here, after the full build
#   run: tests/gpu/run.sh, carry ["build-gpu-bundle/bundle.tar.xz"]
#
# usage: tests/gpu/bundle.sh [--out DIR] [--no-archive] [TARGET...]
#   --out DIR      where to write (default build-gpu-bundle)
#   --no-archive   leave DIR/bin and DIR/lib unpacked, skip the archive
# Environment: BUILD_DIR (the full build, default build).
# Writes DIR/bundle.tar.xz holding bin/<target>, lib/, MANIFEST (commit,
# targets, each file's size). Fails when a target is missing or a library
# cannot be found.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=build-gpu-bundle
archive=1
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=$2; shift ;;
    --no-archive) archive=0 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "bundle.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
((${#targets[@]})) || targets=(kv_connector_cuda_test cuda_rvq_encoder_test)
BUILD_DIR=${BUILD_DIR:-build}

rm -rf "$out/bin" "$out/lib" "$out/bundle.tar.xz"
mkdir -p "$out/bin" "$out/lib"
for t in "${targets[@]}"; do
  bin=$(find "$BUILD_DIR" -type f -name "$t" -perm -u+x | head -1)
  if [[ -z $bin ]]; then
    echo "bundle.sh: no executable '$t' under $BUILD_DIR (build it first;" \
      "CUDA tests exist only in a build that found the CUDA toolkit)" >&2
    exit 1
  fi
  strip -o "$out/bin/$t" "$bin"
  # ldd: "name => path (addr)", the loader as "/lib64/ld-linux... (addr)".
  while read -r name arrow path _; do
    if [[ $arrow == "=>" && $path == "not" ]]; then
      echo "bundle.sh: $t needs $name, which is not found here" >&2
      exit 1
    fi
    [[ $arrow == "=>" && -f $path ]] || continue
    [[ $name == libcuda.so* ]] && continue  # the driver: the GPU machine's
    cp -L "$path" "$out/lib/$name"
  done < <(ldd "$bin")
done
loader=$(ldd "$out/bin/${targets[0]}" | awk '$1 ~ /ld-linux/ {print $1}')
cp -L "$loader" "$out/lib/ld-linux-x86-64.so.2"
strip --strip-unneeded "$out"/lib/*.so* 2>/dev/null || true

{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "made: $(date -u +%FT%TZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "targets: ${targets[*]}"
  (cd "$out" && find bin lib -type f -printf '%s %p\n' | sort -k2)
} >"$out/MANIFEST"

if ((archive)); then
  tar -C "$out" -cf - MANIFEST bin lib | xz -T0 -6 >"$out/bundle.tar.xz"
  rm -rf "$out/bin" "$out/lib"
  bytes=$(stat -c %s "$out/bundle.tar.xz")
  echo "bundle.sh: $out/bundle.tar.xz, $((bytes >> 20)) MiB," \
    "${targets[*]}"
  # The device tool carries at most 64 MiB, the working tree included.
  if ((bytes > 48 << 20)); then
    echo "bundle.sh: warning: over 48 MiB; the carry limit is 64 MiB with" \
      "the working tree" >&2
  fi
else
  echo "bundle.sh: $out/bin and $out/lib, ${targets[*]}"
fi
