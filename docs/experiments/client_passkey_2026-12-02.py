#!/usr/bin/env python3
"""Passkey through the client library: `vqkv generate --roundtrip` sends every
full block of the prompt through CacheClient's encode and decode (what a cache
hit would load), then answers. Prompts as tools/passkey.cc builds them (same
intro, filler, needle and question), of about --words filler repetitions,
needle depths spread over the prompt.

  python3 docs/experiments/client_passkey_2026-12-02.py --model M \
      --codebooks A.vqcb B.vqcb --trials 6 --reps 140
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile

INTRO = ("There is an important piece of information hidden inside a lot of "
         "irrelevant text. Find it and memorize it. I will ask you about it.")
FILLER = (" The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again.")
NEEDLE = " The pass key is {k}. Remember it. {k} is the pass key."
QUESTION = " What is the pass key? The pass key is"


def run(vqkv, model, prompt_file, extra):
    out = subprocess.run([vqkv, "generate", "--model", model, "--prompt-file",
                          prompt_file, "--max-new-tokens", "8", "--json"] +
                         extra, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vqkv", default="build/tools/vqkv")
    ap.add_argument("--model", required=True)
    ap.add_argument("--codebooks", nargs="+", required=True)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--reps", type=int, default=140)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    configs = [("fp16 (no cache)", ["--no-cache"])] + [
        (cb, ["--roundtrip", "--codec", "vq", "--codebooks", cb])
        for cb in a.codebooks]
    right = {name: 0 for name, _ in configs}
    for t in range(a.trials):
        key = str(rng.randrange(10000, 100000))
        at = int(a.reps * (t + 0.5) / a.trials)
        text = (INTRO + FILLER * at + NEEDLE.format(k=key) +
                FILLER * (a.reps - at) + QUESTION)
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(text)
            f.flush()
            for name, extra in configs:
                r = run(a.vqkv, a.model, f.name, extra)
                ok = key in r["text"]
                right[name] += ok
                print(json.dumps({"trial": t, "key": key, "config": name,
                                  "prompt_tokens": r["prompt_tokens"],
                                  "tokens_reused": r["tokens_reused"],
                                  "answer": r["text"], "right": ok}),
                      flush=True)
    for name, _ in configs:
        print(f"{name}: {right[name]}/{a.trials}", file=sys.stderr)


if __name__ == "__main__":
    main()
