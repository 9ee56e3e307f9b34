#!/usr/bin/env bash
# Regenerates the measured tables and the plot of docs/FIDELITY.md: fits the
# codebooks, runs the calibration-size study, perplexity/top-1/KL and the
# retrieval tasks, then rewrites the part of docs/FIDELITY.md between the
# "fidelity.sh" markers and docs/fidelity_tradeoff.png (scripts/fidelity_report.py).
#
# usage: scripts/fidelity.sh [--quick] [--results DIR] [--no-docs]
#   --quick      a small sample (one window per text at ctx 2048, retrieval
#                at 1024 tokens with 4 trials, the study on one layer).
#   (default)    the issue's sample: 4 windows per text at ctx 2048 and one
#                at 8192, retrieval at 1k-8k with 20 trials per length,
#                study sizes 4k-64k. Many CPU hours on 2 cores.
#   --results    where the JSON lines go (default fidelity-results/, or
#                fidelity-results-quick/ with --quick). Steps whose file
#                exists are skipped, so an interrupted run resumes.
#   --no-docs    measure only; leave docs/ alone.
# Environment: VQKV (the vqkv binary, default build/tools/vqkv, built by
# scripts/build.sh when missing), TEXT_DIR (default ../shared/data/text),
# TRIALS (retrieval trials per length; default 4 with --quick, else 20).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
results=""
docs=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --results) results="$2"; shift ;;
    --no-docs) docs=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "fidelity.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ $quick == 1 ]]; then
  results=${results:-fidelity-results-quick}
  ppl_runs=("2048 256 1" "2048 1024 1")      # ctx window max-windows
  lengths=1024; trials=${TRIALS:-4}
  study_layers=(--study-layers 15)
  study=(--study-sizes 4096 16384 65536 "${study_layers[@]}")
else
  results=${results:-fidelity-results}
  ppl_runs=("2048 256 4" "2048 1024 4" "8192 256 1" "8192 1024 1")
  lengths=1024,2048,4096,8192; trials=${TRIALS:-20}
  study_layers=(--study-layers 0 15 29)
  study=(--study-sizes 4096 8192 16384 32768 65536 "${study_layers[@]}")
fi

VQKV=${VQKV:-build/tools/vqkv}
[[ -x $VQKV ]] || bash scripts/build.sh
bash scripts/get-model.sh >/dev/null
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
T=${TEXT_DIR:-../shared/data/text}
CAL=$T/pride_and_prejudice.txt          # calibration, never evaluated on
EVAL_TEXTS=(frankenstein sherlock_holmes)
mkdir -p "$results/codebooks"
cb=$results/codebooks
echo "fidelity.sh: results in $results/ ($(nproc) cores, $(date -u +%FT%TZ))"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -s $results/machine.txt ]]; then
  # A resumed run: the rows already there keep the first run's line, and
  # the report names this one too.
  echo "resumed: $(date -u +%FT%TZ) at $commit" >>"$results/machine.txt"
else
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $commit"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc)"
    echo "quick: $quick"
  } >"$results/machine.txt"
fi

# step NAME CMD...: runs CMD once, its stdout into $results/NAME.jsonl.
step() {
  local name=$1 out="$results/$1.jsonl"
  shift
  if [[ -s $out ]]; then echo "  have $name"; return; fi
  echo "  run  $name: $*"
  local t0=$SECONDS
  "$@" >"$out.tmp"
  mv "$out.tmp" "$out"
  echo "  done $name in $((SECONDS - t0)) s"
}

# Codebooks: the default options (keys 20 and values 16 stages on
# SmolLM2's 64 dims plus layer 18's key refinement, 2.74 bits/element), the
# same with the paper's SimVQ fit instead of k-means, the paper's split of
# the same rate (keys 28, values 8: the default before 2026-12-04), ~2 bits,
# and 20 key stages with the paper's 8 value stages, which with a 64-bit key
# sketch is again 2.75 bits/element. Each fit's wall time goes to
# calibrate_NAME.jsonl (the k-means / SimVQ table).
calibrate() {
  local name=$1 fit=kmeans
  shift
  if [[ -s $cb/$name.vqcb ]]; then echo "  have $name.vqcb"; return; fi
  [[ " $* " == *" --fit simvq "* ]] && fit=simvq
  echo "  fit  $name.vqcb $*"
  local t0=$SECONDS
  "$VQKV" calibrate --model "$M" --text "$CAL" --out "$cb/$name.vqcb" "$@"
  printf '{"task":"calibrate","codebooks":"%s","fit":"%s","seconds":%d,"cores":%d}\n' \
    "$name" "$fit" $((SECONDS - t0)) "$(nproc)" >"$results/calibrate_$name.jsonl"
}
echo "codebooks"
calibrate default
calibrate simvq --fit simvq
calibrate paper-split --key-stages 28 --value-stages 8
calibrate k20v6 --key-stages 20 --value-stages 6
calibrate k20v8 --key-stages 20 --value-stages 8

# The codecs compared: label, then eval flags.
codecs=(
  "kivi:--codec kivi2,kivi4"
  "vq-default:--codec vq --codebooks $cb/default.vqcb"
  "vq-simvq:--codec vq --codebooks $cb/simvq.vqcb"
  "vq-paper-split:--codec vq --codebooks $cb/paper-split.vqcb"
  "vq-k20v8-ks64:--codec vq --codebooks $cb/k20v8.vqcb --key-sketch-bits 64"
  "vq-k20v6:--codec vq --codebooks $cb/k20v6.vqcb"
  # The sketch where retrieval needs it, layers 16-29 (+0.29 bits/element).
  "vq-default-ks64-from16:--codec vq --codebooks $cb/default.vqcb --key-sketch-bits 64 --key-sketch-from-layer 16"
)
# The sketch on the default codebooks (3.375 bits/element): full runs only.
[[ $quick == 1 ]] || codecs+=(
  "vq-default-ks64:--codec vq --codebooks $cb/default.vqcb --key-sketch-bits 64")

# ppl CTX WINDOW WINDOWS: perplexity of every codec on every text.
ppl() {
  local ctx=$1 window=$2 windows=$3 text c label
  echo "perplexity, ctx $ctx, window $window"
  for text in "${EVAL_TEXTS[@]}"; do
    for c in "${codecs[@]}"; do
      label=${c%%:*}
      # shellcheck disable=SC2086
      step "ppl_${text}_ctx${ctx}_w${window}_${label}" "$VQKV" eval \
        --model "$M" --text "$T/$text.txt" ${c#*:} --ctx "$ctx" \
        --window "$window" --max-windows "$windows" --json
    done
  done
}

retrieval() {
  local task c label
  echo "retrieval"
  for task in passkey mkniah vartrack; do
    for c in "${codecs[@]}"; do
      label=${c%%:*}
      # Every run also scores fp16 on the same prompts (its fp16_* fields).
      # shellcheck disable=SC2086
      step "${task}_${label}" "$VQKV" eval --task "$task" --model "$M" \
        ${c#*:} --lengths "$lengths" --trials "$trials" --window 256 \
        --seed 5 --json
    done
  done
}

# The tighter window first, then retrieval, then the rest, so a partial
# run has the headline numbers.
# shellcheck disable=SC2086
ppl ${ppl_runs[0]}
retrieval
for run in "${ppl_runs[@]:1}"; do
  # shellcheck disable=SC2086
  ppl $run
done

# Last: the longest step (all-point k-means on up to 64k tokens).
echo "calibration size"
step study "$VQKV" calibrate --model "$M" --text "$CAL" \
  --holdout "$T/frankenstein.txt" "${study[@]}" --study-all-points --json
# The SimVQ fit's held-out error at the default size, on the same layers.
step study_simvq "$VQKV" calibrate --model "$M" --text "$CAL" \
  --holdout "$T/frankenstein.txt" --study-sizes 16384 "${study_layers[@]}" \
  --study-all-points --fit simvq --json

if [[ $docs == 1 ]]; then
  /usr/bin/python3 scripts/fidelity_report.py "$results" docs/FIDELITY.md \
    docs/fidelity_tradeoff.png
  echo "fidelity.sh: rewrote docs/FIDELITY.md (generated section) and" \
    "docs/fidelity_tradeoff.png"
fi
