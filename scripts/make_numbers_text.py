#!/usr/bin/env python3
"""Writes the digit-rich calibration text used in docs/FIDELITY.md.

The first 600 lines of tinyshakespeare.txt, with " The number is NNNNN."
(a random 5-digit number, fixed seed) appended to every non-empty line.
Prose calibration text has too few digit tokens for the codebooks to
reconstruct a pass key; this text gives them some.

usage: make_numbers_text.py SHARED_TEXT_DIR OUT
"""
import os
import random
import sys


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    src = os.path.join(sys.argv[1], "tinyshakespeare.txt")
    with open(src, encoding="utf-8") as f:
        lines = f.read().split("\n")[:600]
    rng = random.Random(7)
    out = []
    for line in lines:
        if line.strip():
            line = f"{line} The number is {rng.randint(10000, 99999)}."
        out.append(line)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
