#!/usr/bin/env bash
# Builds the benchmarks (Release, in ${BUILD_DIR:-build}), runs each one and
# writes docs/PERFORMANCE.md (scripts/bench_report.py): per benchmark what it
# measures and its peer, the exact command, the machine, the date, the load
# average at its start, and the table it printed.
#
# usage: scripts/bench.sh [--quick] [--results DIR] [--force] [--no-build]
#                         [--no-docs] [BENCH...]
#   BENCH        benchmarks to run (default all): codec_bench vq_fit_bench
#                code_attention_bench kv_service_bench store_scale_bench
#                cluster_bench client_bench cuda_codec_bench. The report covers every
#                result in the results directory, so runs can be split.
#   --quick      small sizes (a few minutes on 2 cores); the numbers are
#                indicative only. Default: each benchmark's documented
#                default (tens of minutes on 2 cores).
#   --results    where the outputs go (default bench-results/, or
#                bench-results-quick/ with --quick). A benchmark whose
#                result exists is not rerun, so an interrupted run resumes;
#                --force reruns the selected ones.
#   --no-build   use the binaries already in the build directory.
#   --no-docs    measure only; leave docs/ alone.
# Environment: BUILD_DIR (default build), JOBS (build jobs, default nproc),
# CODEBOOKS (a .vqcb file: client_bench adds its vq rows), BENCH_MACHINE (a
# label for the machine in the report, e.g. "2-core dev VM").
# client_bench also gets its server rows: this script starts a vqkv-server
# (memory tier, data in a temporary directory) on a free loopback port for
# it and stops it afterwards.
# Progress goes to stderr. Exits 1 when a benchmark failed (the report
# still says so), 0 otherwise; a skip (exit 77, e.g. no GPU) is not a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(codec_bench vq_fit_bench code_attention_bench kv_service_bench
     store_scale_bench cluster_bench client_bench cuda_codec_bench)
quick=0
results=""
force=0
build=1
docs=1
selected=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --results) results="$2"; shift ;;
    --force) force=1 ;;
    --no-build) build=0 ;;
    --no-docs) docs=0 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    -*) echo "bench.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *)
      if [[ " ${all[*]} " != *" $1 "* ]]; then
        echo "bench.sh: unknown benchmark '$1' (one of: ${all[*]})" >&2
        exit 2
      fi
      selected+=("$1") ;;
  esac
  shift
done
[[ ${#selected[@]} -gt 0 ]] || selected=("${all[@]}")
if [[ $quick == 1 ]]; then
  results=${results:-bench-results-quick}
else
  results=${results:-bench-results}
fi
BUILD_DIR=${BUILD_DIR:-build}
TEXT=texts/python-tutorial.txt
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf

# args NAME: the benchmark's arguments in this mode, one per line.
args() {
  local q=$quick
  case "$1" in
    codec_bench)
      [[ $q == 1 ]] && printf '%s\n' --dims 64 --train 4096 --test 2048 ;;
    vq_fit_bench)
      [[ $q == 1 ]] && printf '%s\n' --train 4096 --test 1024 ;;
    code_attention_bench)
      [[ $q == 1 ]] && printf '%s\n' --lengths 1024,4096 --repeats 5 \
        --warmup 1 ;;
    kv_service_bench)
      # The clients' malloc tuned as docs/CLIENT.md tells engines to (both
      # servers' clients live in this process, so both get it).
      printf '%s\n' --tune-allocator
      if [[ $q == 1 ]]; then
        printf '%s\n' --quick --seconds 0.5
      else
        printf '%s\n' --clients 1,4,16,64
      fi ;;
    store_scale_bench)
      [[ $q == 1 ]] && printf '%s\n' --ops 5000 ;;
    cluster_bench)
      [[ $q == 1 ]] && printf '%s\n' --ops 16 ;;
    client_bench)
      # The README's command, with the allocator tuned as above; --quick:
      # one prefix, no block-size rows.
      printf '%s\n' --model "$MODEL" --text "$TEXT" --tune-allocator
      if [[ $q == 1 ]]; then
        printf '%s\n' --lengths 512 --block-length 0 --repeats 3
      else
        printf '%s\n' --lengths 512,2048
      fi
      [[ -z ${CODEBOOKS:-} ]] || printf '%s\n' --codebooks "$CODEBOOKS"
      [[ -z $server_addr ]] || printf '%s\n' --server "$server_addr" ;;
    cuda_codec_bench)
      [[ $q == 1 ]] && printf '%s\n' --vectors 8192 --reps 2 ;;
  esac
  return 0
}

log() { echo "bench.sh: $*" >&2; }

# A vqkv-server for client_bench's server rows: start_server sets
# server_addr (empty when it cannot start; the rows are then skipped, and
# client_bench says so); stop_server stops it.
server_pid=""
server_addr=""
server_dir=""
start_server() {
  local bin=$BUILD_DIR/service/vqkv-server
  [[ -x $bin ]] || { log "no $bin: client_bench without server rows"; return 0; }
  server_dir=$(mktemp -d /tmp/vqkv-bench-server-XXXXXX)
  "$bin" --listen 127.0.0.1:0 --data-dir "$server_dir/data" \
    --memory-bytes 2GiB >"$server_dir/log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    server_addr=$(sed -n 's/^vqkv-server listening on //p' "$server_dir/log")
    [[ -z $server_addr ]] || { log "vqkv-server on $server_addr"; return 0; }
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  log "vqkv-server did not start ($server_dir/log): no server rows"
  stop_server
}
stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  [[ -z $server_dir ]] || rm -rf "$server_dir"
  server_pid=""
  server_addr=""
  server_dir=""
}
trap stop_server EXIT

if [[ $build == 1 ]]; then
  log "configuring $BUILD_DIR (Release)"
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
  # Only the targets this configuration has (codec_bench and vq_fit_bench
  # need faiss, cuda_codec_bench CUDA).
  have=$(ninja -C "$BUILD_DIR" -t targets all 2>/dev/null | sed 's/:.*//')
  targets=()
  for b in "${selected[@]}"; do
    grep -qx "bench/$b\|$b" <<<"$have" && targets+=("$b")
  done
  # client_bench's server rows need the server.
  [[ " ${targets[*]} " != *" client_bench "* ]] || targets+=(vqkv-server)
  if [[ ${#targets[@]} -gt 0 ]]; then
    log "building ${targets[*]}"
    cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}" --target "${targets[@]}" >&2
  fi
fi

if [[ " ${selected[*]} " == *" client_bench "* ]]; then
  [[ -s $MODEL ]] || bash scripts/get-model.sh >&2 || true
  [[ -s $TEXT ]] || bash scripts/get-texts.sh >&2 || true
fi

mkdir -p "$results"
cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -1)
gpu=none
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null |
        paste -sd, - || true)
  [[ -n $gpu ]] || gpu=none
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

failed=0
for b in "${selected[@]}"; do
  meta="$results/$b.meta"
  if [[ -s $meta && $force == 0 ]]; then
    log "have $b ($meta; --force reruns it)"
    continue
  fi
  [[ $b != client_bench ]] || start_server
  mapfile -t a < <(args "$b")
  bin="$BUILD_DIR/bench/$b"
  cmd="$bin${a[*]:+ ${a[*]}}"
  rm -f "$meta"
  {
    echo "command: $cmd"
    echo "date: $(date -u +%FT%TZ)"
    echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "machine: ${BENCH_MACHINE:-}"
    echo "cpu: ${cpu:-unknown}"
    echo "cores: $(nproc)"
    echo "gpu: $gpu"
    echo "commit: $commit"
    echo "quick: $quick"
  } >"$meta.tmp"
  if [[ ! -x $bin ]]; then
    case $b in
      cuda_codec_bench) why="needs nvcc and VQKV_ENABLE_CUDA=ON" ;;
      codec_bench|vq_fit_bench) why="needs faiss (libfaiss-dev)" ;;
      *) why="VQKV_BUILD_BENCH=OFF, or the build failed" ;;
    esac
    log "skip $b: $bin is not built ($why)"
    { echo "exit: not built"; echo "seconds: 0"; } >>"$meta.tmp"
    : >"$results/$b.txt"
    echo "$bin is not built in this configuration ($why)" >"$results/$b.err"
    mv "$meta.tmp" "$meta"
    stop_server
    continue
  fi
  log "run  $b: $cmd (load $(cut -d' ' -f1-3 /proc/loadavg))"
  t0=$SECONDS
  # stdout (the table) to a file; stderr (progress) to ours and a file.
  set +e
  "$bin" "${a[@]}" 2>&1 >"$results/$b.txt" | tee "$results/$b.err" >&2
  rc=${PIPESTATUS[0]}
  set -e
  [[ $b != client_bench ]] || stop_server
  { echo "exit: $rc"; echo "seconds: $((SECONDS - t0))"; } >>"$meta.tmp"
  mv "$meta.tmp" "$meta"
  case $rc in
    0) log "done $b in $((SECONDS - t0)) s" ;;
    77) log "skipped $b: $(tail -1 "$results/$b.err")" ;;
    *) log "FAILED $b: exit $rc (see $results/$b.err)"; failed=1 ;;
  esac
done

if [[ $docs == 1 ]]; then
  report_args=()
  [[ $quick == 1 ]] && report_args+=(--quick)
  /usr/bin/python3 scripts/bench_report.py "${report_args[@]}" "$results" \
    docs/PERFORMANCE.md
  log "wrote docs/PERFORMANCE.md from $results/"
fi
exit $failed
