#!/usr/bin/python3
"""Plots perplexity change vs bits/element from `vqkv eval --json` lines.

usage: scripts/plot_fidelity.py [--main NAME,NAME] OUT.png RESULTS.jsonl [...]

--main: the vq codebook files (base names without .vqcb) joined by a line;
other vq points (ablations) are drawn as hollow markers.

Also prints every ppl line as a Markdown table row on stdout (the tables in
docs/FIDELITY.md).

Every {"task":"ppl",...} line is one point; points of the same codec and
window are averaged over texts (weighted by tokens scored) and drawn as one
series per (codec family, window). Labels name the codebook file for vq.
"""
import json
import math
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    args = sys.argv[1:]
    main_names = None
    if args[:1] == ["--main"]:
        main_names = set(args[1].split(","))
        args = args[2:]
    if len(args) < 2:
        sys.exit(__doc__)
    out = args[0]
    groups = defaultdict(lambda: [0.0, 0.0, 0, None, None])
    rows = []
    for path in args[1:]:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                if r.get("task") != "ppl":
                    continue
                rows.append(r)
                cb = r.get("codebooks", "")
                if r.get("beam_width", 1) > 1:
                    cb += f" beam {r['beam_width']}"
                key = (r["codec"], cb, r["window"])
                g = groups[key]
                n = r["tokens_scored"]
                # Mean log-ppl ratio over texts, weighted by tokens.
                g[0] += n * math.log(r["ppl"])
                g[1] += n * math.log(r["ppl_fp16"])
                g[2] += n
                g[3] = r["bits_per_element"]
                g[4] = r.get("codebooks", "")
    print("| codec | codebooks | text | window | bits/elt | ratio | ppl | "
          "ppl fp16 | change | top-1 | KL (nats) | tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cb = r.get("codebooks", "").split("/")[-1] or "-"
        text = r["text"].split("/")[-1].replace(".txt", "")
        print(f"| {r['codec']} | {cb} | {text} | {r['window']} | "
              f"{r['bits_per_element']:.4f} | "
              f"{100 * r['compression_ratio']:.1f}% | {r['ppl']:.3f} | "
              f"{r['ppl_fp16']:.3f} | {r['ppl_change_pct']:+.2f}% | "
              f"{r['top1_agreement']:.4f} | {r['kl']:.5f} | "
              f"{r['tokens_scored']} |")
    print()
    print("| codec | codebooks | window | bits/elt | ppl change "
          "(token-weighted over texts) |")
    print("|---|---|---|---|---|")
    for (codec, cb, window), (lt, lr, n, bits, _) in sorted(
            groups.items(), key=lambda kv: (kv[0][2], kv[1][3])):
        change = 100.0 * (math.exp((lt - lr) / n) - 1.0)
        print(f"| {codec} | {cb.split('/')[-1] or '-'} | {window} | "
              f"{bits:.4f} | {change:+.2f}% |")
    series = defaultdict(list)
    for (codec, cb, window), (lt, lr, n, bits, _) in groups.items():
        change = 100.0 * (math.exp((lt - lr) / n) - 1.0)
        family = "vq" if codec == "vq" else "kivi"
        series[(family, window)].append((bits, change, codec, cb))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"vq": "o-", "kivi": "s--"}
    colors = {}
    for (family, window), pts in sorted(series.items()):
        pts.sort()

        def base(cb):
            return cb.split("/")[-1].replace(".vqcb", "")

        line = [p for p in pts if family != "vq" or main_names is None or
                base(p[3]) in main_names]
        rest = [p for p in pts if p not in line]
        h = ax.plot([p[0] for p in line], [p[1] for p in line],
                    styles[family], label=f"{family}, fp16 window {window}")
        colors[(family, window)] = h[0].get_color()
        if rest:
            ax.plot([p[0] for p in rest], [p[1] for p in rest], "o",
                    mfc="none", color=h[0].get_color(),
                    label=f"vq ablations, window {window}")
        for bits, change, codec, cb in pts:
            name = codec if codec != "vq" else (
                cb.split("/")[-1].replace(".vqcb", "") or "vq")
            ax.annotate(name, (bits, change), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.axhline(3.0, color="grey", lw=0.8, ls=":")
    ax.text(ax.get_xlim()[0], 3.0, " +3% target", va="bottom", fontsize=7,
            color="grey")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xlabel("bits per element (payload; fp16 = 16)")
    ax.set_ylabel("perplexity change vs fp16 KV (%)")
    ax.set_title("SmolLM2-135M, ctx 2048, held-out texts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
