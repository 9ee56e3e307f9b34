#!/usr/bin/env bash
# Smoke test of one benchmark program (tests/bench/CMakeLists.txt): runs it
# on tiny sizes and checks that it exits 0 and prints its table. It asserts
# nothing about time; the numbers of a tiny run mean nothing.
#
# usage: smoke_test.sh [--need FILE]... [--expect REGEX]... -- PROGRAM [ARG]...
#   --need FILE     skip (exit 77) with the reason when FILE does not exist
#                   (the model and texts are fetched by scripts/, not built)
#   --expect REGEX  an extended regular expression (grep -E) that some line
#                   of the program's stdout must match: the table's header,
#                   a row
# Exits 0 when the program exits 0 and every REGEX matches; 77 when a --need
# file is missing or the program exits 77 (its own skip, e.g. no GPU); 1
# otherwise. The program's stdout is echoed, its stderr passes through.
set -uo pipefail

needs=()
expects=()
while [[ $# -gt 0 && $1 != -- ]]; do
  case "$1" in
    --need) needs+=("$2"); shift 2 ;;
    --expect) expects+=("$2"); shift 2 ;;
    *) echo "smoke_test.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [[ $# -lt 2 ]]; then
  echo "usage: smoke_test.sh [--need F]... [--expect RE]... -- PROGRAM [ARG]..." >&2
  exit 2
fi
shift  # --

for f in "${needs[@]}"; do
  if [[ ! -e $f ]]; then
    echo "SKIPPED: $f is missing" >&2
    exit 77
  fi
done

out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$@" >"$out"
rc=$?
cat "$out"
if [[ $rc == 77 ]]; then
  echo "SKIPPED: $1 skipped itself (exit 77)" >&2
  exit 77
fi
if [[ $rc != 0 ]]; then
  echo "FAILED: $* exited $rc" >&2
  exit 1
fi
status=0
for re in "${expects[@]}"; do
  if ! grep -Eq -- "$re" "$out"; then
    echo "FAILED: no line of the output matches '$re'" >&2
    status=1
  fi
done
exit $status
