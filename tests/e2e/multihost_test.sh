#!/usr/bin/env bash
# Three vqkv-server hosts and a client, each in its own network namespace,
# joined by a bridge in a fifth ("switch") namespace; the client finds the
# hosts through one name that resolves to their three addresses
# (/etc/netns/<client>/hosts, which `ip netns exec` mounts over /etc/hosts).
# With R=2 the client stores a document's blocks, then:
#   1. loads them with every host up;
#   2. loads them with one host's link cut (set down: packets vanish, no
#      refusal), which must cost at most a timeout, not a hang;
#   3. stores and loads a second document with one host killed (SIGKILL);
#   4. loads both after that host restarts on its data directory.
# Every load must give exactly the tokens of a run without any cache
# (fp16 blocks: a hit is bit-identical, a miss recomputes), so a wrong block
# can never pass. Everything is torn down at the end, even on failure. All
# traffic stays inside these namespaces (10.77.0.0/24 exists only there).
#
#   tests/e2e/multihost_test.sh BUILD_DIR MODEL
#
# Needs root, iproute2 and network namespaces; exits 77 (skipped, with the
# reason) without them, or without the model.
set -uo pipefail
BUILD=${1:?usage: multihost_test.sh BUILD_DIR MODEL}
MODEL=${2:?usage: multihost_test.sh BUILD_DIR MODEL}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VQKV=$BUILD/tools/vqkv
SERVER=$BUILD/service/vqkv-server
PORT=50051
NAME=vqkv-nodes
TAG=vqkv$$  # namespace names unique to this run
CLIENT_NS=${TAG}c
SWITCH_NS=${TAG}s
# The longest one generate run may take, link cut or not (model load,
# prefill of ~1500 tokens on 1 thread, timeouts of a black-holed node).
RUN_LIMIT=${RUN_LIMIT:-180}

skip() { echo "SKIPPED: $*"; exit 77; }
[[ $(id -u) == 0 ]] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "needs iproute2 (ip)"
[[ -f "$MODEL" ]] || skip "model not fetched (scripts/get-model.sh)"
[[ -x "$VQKV" && -x "$SERVER" ]] || { echo "FAIL: $VQKV or $SERVER not built"; exit 1; }
ip netns add "${TAG}probe" 2>/dev/null || skip "cannot create network namespaces here"
ip netns del "${TAG}probe"

WORK=$(mktemp -d /tmp/vqkv_e2e_XXXXXX)
declare -A PIDS
failures=0
log() { echo "[e2e $(date +%T)] $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

cleanup() {
  for h in "${!PIDS[@]}"; do kill -9 "${PIDS[$h]}" 2>/dev/null; done
  # And any server of this run that outlived its pid (by its data dir).
  pkill -9 -f -- "--data-dir $WORK/data" 2>/dev/null
  wait 2>/dev/null
  for ns in $(ip netns list | awk '{print $1}' | grep "^$TAG"); do
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "/etc/netns/$CLIENT_NS" "$WORK"
}
trap cleanup EXIT

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# --- the network -------------------------------------------------------
ip netns add "$SWITCH_NS"
in_ns "$SWITCH_NS" ip link add br0 type bridge
in_ns "$SWITCH_NS" ip link set br0 up
attach() {  # attach NS INDEX ADDR
  local ns=$1 i=$2 addr=$3
  ip netns add "$ns"
  ip link add "${TAG}v$i" type veth peer name "${TAG}p$i"
  ip link set "${TAG}v$i" netns "$ns"
  ip link set "${TAG}p$i" netns "$SWITCH_NS"
  in_ns "$SWITCH_NS" ip link set "${TAG}p$i" master br0 up
  in_ns "$ns" ip addr add "$addr/24" dev "${TAG}v$i"
  in_ns "$ns" ip link set "${TAG}v$i" up
  in_ns "$ns" ip link set lo up
}
HOSTS=(1 2 3)
addr_of() { echo "10.77.0.1$1"; }
for h in "${HOSTS[@]}"; do attach "${TAG}h$h" "$h" "$(addr_of "$h")"; done
attach "$CLIENT_NS" 9 10.77.0.100
mkdir -p "/etc/netns/$CLIENT_NS"
{
  echo "127.0.0.1 localhost"
  for h in "${HOSTS[@]}"; do echo "$(addr_of "$h") $NAME"; done
} >"/etc/netns/$CLIENT_NS/hosts"
log "network up: hosts $(for h in "${HOSTS[@]}"; do printf '%s ' "$(addr_of "$h")"; done)client 10.77.0.100"
in_ns "$CLIENT_NS" getent ahostsv4 "$NAME" | awk '/STREAM/ {print "  resolves:", $1}'

# --- the servers -------------------------------------------------------
start_server() {
  local h=$1
  mkdir -p "$WORK/data$h"
  # Auth off on the namespaces' private network: allowed explicitly.
  # `ip netns exec` (not the in_ns function, which would run in a forked
  # subshell) execs the server, so $! is the server and SIGKILL reaches it.
  ip netns exec "${TAG}h$h" "$SERVER" --listen "$(addr_of "$h"):$PORT" \
    --allow-insecure-public --data-dir "$WORK/data$h" --memory-bytes 256MiB \
    >>"$WORK/server$h.log" 2>&1 &
  PIDS[$h]=$!
  for _ in $(seq 100); do
    if in_ns "$CLIENT_NS" bash -c "exec 3<>/dev/tcp/$(addr_of "$h")/$PORT" 2>/dev/null; then
      log "host $h serving (pid ${PIDS[$h]})"
      return 0
    fi
    sleep 0.2
  done
  fail "host $h did not start: $(tail -5 "$WORK/server$h.log")"
  return 1
}
for h in "${HOSTS[@]}"; do start_server "$h" || exit 1; done

# --- the client --------------------------------------------------------
DOC="$WORK/doc.txt"
head -c 5000 "$ROOT/docs/DESIGN.md" >"$DOC"
DOC2="$WORK/doc2.txt"
head -c 5000 "$ROOT/docs/CLIENT.md" >"$DOC2"
prompt() {  # prompt FILE DOC QUESTION
  { cat "$2"; echo; echo "Question: $3 Answer:"; } >"$1"
}
prompt "$WORK/q1.txt" "$DOC" "What is a namespace?"
prompt "$WORK/q2.txt" "$DOC" "Who verifies a block?"
prompt "$WORK/q3.txt" "$DOC2" "What does Lookup return?"
COMMON=(--model "$MODEL" --codec fp16 --max-new-tokens 8 --ignore-eos --json)

json_field() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -1 | cut -d: -f2; }
json_tokens() { grep -o '"tokens":\[[0-9,]*\]' <<<"$1"; }

declare -A REFERENCE
for q in q1 q2 q3; do
  REFERENCE[$q]=$(json_tokens "$(OPENBLAS_NUM_THREADS=1 "$VQKV" generate \
    "${COMMON[@]}" --prompt-file "$WORK/$q.txt" --no-cache)")
  [[ -n "${REFERENCE[$q]}" ]] || fail "no reference tokens for $q"
done

# run LABEL PROMPT MIN_REUSED: one generate through the cluster; checks the
# tokens against the reference, the time against RUN_LIMIT and the reuse.
run() {
  local label=$1 q=$2 min_reused=$3 out start ms reused
  start=$(date +%s%N)
  out=$(OPENBLAS_NUM_THREADS=1 timeout "$RUN_LIMIT" ip netns exec "$CLIENT_NS" \
    "$VQKV" generate "${COMMON[@]}" --prompt-file "$WORK/$q.txt" \
    --server "dns:///$NAME:$PORT" --replicas 2 2>"$WORK/client.err")
  local rc=$?
  ms=$((($(date +%s%N) - start) / 1000000))
  reused=$(json_field "$out" tokens_reused)
  log "$label: exit $rc, $ms ms, reused ${reused:-?} tokens, stored $(json_field "$out" blocks_stored) blocks"
  if [[ $rc -ne 0 ]]; then
    fail "$label: generate exited $rc: $(tail -3 "$WORK/client.err")"
    return
  fi
  [[ "$(json_tokens "$out")" == "${REFERENCE[$q]}" ]] ||
    fail "$label: tokens differ from the run without cache"
  [[ "${reused:-0}" -ge "$min_reused" ]] ||
    fail "$label: reused ${reused:-0} tokens, expected at least $min_reused"
}

run "store document 1, all hosts up" q1 0
run "load document 1, all hosts up" q2 512
log "cutting host 1's link"
in_ns "$SWITCH_NS" ip link set "${TAG}p1" down
run "load document 1, host 1 cut off" q2 512
in_ns "$SWITCH_NS" ip link set "${TAG}p1" up
log "host 1's link restored; killing host 2 (SIGKILL)"
kill -9 "${PIDS[2]}"
wait "${PIDS[2]}" 2>/dev/null
unset 'PIDS[2]'
run "store document 2, host 2 dead" q3 0
run "load document 1, host 2 dead" q2 512
log "restarting host 2 on its data directory"
start_server 2
run "load document 1, host 2 back" q2 512
run "load document 2, host 2 back" q3 512

if [[ $failures -eq 0 ]]; then
  echo "PASSED: multi-host test, 7 cluster runs, every output identical to the run without cache"
  exit 0
fi
echo "FAILED: $failures check(s)"
exit 1
