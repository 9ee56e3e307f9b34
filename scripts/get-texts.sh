#!/usr/bin/env bash
# Assembles a default set of English texts into texts/ for the examples
# (calibration, perplexity, generate): prose that Debian ships under free
# licences, so every example works from a fresh clone with no other data.
#
#   texts/debian-reference.txt  The Debian Reference (debian-reference-en),
#                               GPL-2+, ~880 KB of plain text
#   texts/python-tutorial.txt   The Python tutorial (python3.11-doc, the
#                               reStructuredText sources), PSF License 2.0
#   texts/python-howto.txt      The Python HOWTOs (same package and licence)
#   texts/SOURCES.md            package, version and licence of each file
#
# Calibrating on your own text is better still: any plain UTF-8 file works
# (vqkv calibrate --text FILE, repeatable). The packages are downloaded with
# `apt-get download` and unpacked here; nothing is installed. A no-op when
# texts/ is complete.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=texts
PYDOC=${PYDOC:-python3.11-doc}
FILES=(debian-reference.txt python-tutorial.txt python-howto.txt SOURCES.md)

complete=1
for f in "${FILES[@]}"; do [[ -s "$OUT/$f" ]] || complete=0; done
if [[ $complete == 1 ]]; then
  echo "get-texts: $OUT/ is complete"
  exit 0
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
chmod 777 "$TMP"  # apt-get download as root fetches as user _apt
(cd "$TMP" && apt-get download debian-reference-en "$PYDOC" >/dev/null) || {
  echo "get-texts: apt-get download debian-reference-en $PYDOC failed" \
    "(run 'apt-get update' first?)" >&2
  exit 1
}
for deb in "$TMP"/*.deb; do dpkg-deb -x "$deb" "$TMP/root"; done
version() { dpkg-deb -f "$TMP/$1"_*.deb Version; }

mkdir -p "$OUT"
zcat "$TMP/root/usr/share/debian-reference/debian-reference.en.txt.gz" \
  >"$OUT/debian-reference.txt"
PYSRC=$(find "$TMP/root/usr/share/doc" -type d -path '*/html/_sources' | head -1)
# Sphinx sources: keep the prose, drop directive lines (".. note::") so the
# text reads like text.
for part in tutorial howto; do
  find "$PYSRC/$part" -name '*.rst.txt' | sort | xargs cat |
    grep -v '^\.\. ' >"$OUT/python-$part.txt"
done

cat >"$OUT/SOURCES.md" <<SOURCES
# Texts for the examples (made by scripts/get-texts.sh on $(date -u +%F))

| file | Debian package | version | licence |
|---|---|---|---|
| debian-reference.txt | debian-reference-en | $(version debian-reference-en) | GPL-2+ (/usr/share/doc/debian-reference-en/copyright in the package) |
| python-tutorial.txt | $PYDOC | $(version "$PYDOC") | PSF License Version 2 (/usr/share/doc/$PYDOC/copyright in the package) |
| python-howto.txt | $PYDOC | $(version "$PYDOC") | PSF License Version 2 |
SOURCES

for f in "${FILES[@]}"; do
  printf 'get-texts: %-24s %8d bytes\n' "$OUT/$f" "$(stat -c %s "$OUT/$f")"
done
