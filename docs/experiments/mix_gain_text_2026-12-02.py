#!/usr/bin/env python3
"""The mixed key-gain text of docs/FIDELITY.md "The key gain" (2026-12-02):
paragraphs of texts/python-tutorial.txt and texts/debian-reference.txt (from
a tenth of the way in, past its table of contents) taken in turn until 120 KB.

usage: python3 docs/experiments/mix_gain_text_2026-12-02.py OUT.txt
(run from the repository root after scripts/get-texts.sh)
"""
import sys

tutorial = open("texts/python-tutorial.txt").read().split("\n\n")
debian = open("texts/debian-reference.txt").read().split("\n\n")
debian = debian[len(debian) // 10:]
out, size, i = [], 0, 0
while size < 120000:
    for source in (tutorial, debian):
        p = source[i].strip()
        if p:
            out.append(p)
            size += len(p)
    i += 1
with open(sys.argv[1], "w") as f:
    f.write("\n\n".join(out) + "\n")
