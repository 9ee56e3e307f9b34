#!/usr/bin/env python3
"""Writes docs/PERFORMANCE.md from the outputs of scripts/bench.sh.

usage: bench_report.py [--quick] RESULTS_DIR OUT.md

RESULTS_DIR holds, per benchmark NAME that ran: NAME.meta ("key: value"
lines: command, date, load, cpu, cores, gpu, machine, commit, exit,
seconds), NAME.txt (its stdout: the table) and NAME.err (its stderr). The
whole of OUT.md is rewritten: an introduction (with a warning when a
benchmark started on a machine whose load average exceeded its cores), a
summary, then one section per benchmark in a fixed order; benchmarks with no
result say how to run them. Next to OUT.md it draws the curves the tables
hold as PNG files (performance_NAME.png: attention cost against context
length, store latency against store size, service throughput against
clients), where a table has two or more points and matplotlib is there.
Nothing is measured here.
"""
import argparse
import os
import re
import sys

# name -> (what it measures, its peer), in the report's order.
BENCHMARKS = {
    "codec_bench": (
        "Encode and decode throughput (vectors/s and GB/s of fp16 KV) and "
        "reconstruction error (relative MSE of keys and values) of the VQ "
        "codec at the paper rate (2.75 bits/element): greedy and beam "
        "encode, SimVQ fits, with the fit time, on synthetic KV-like "
        "vectors.",
        "faiss `ResidualQuantizer` at the same stages and bits, fitted on "
        "the same vectors in the same run; KIVI-2/4 and fp16 as baselines."),
    "vq_fit_bench": (
        "Fit time (wall and CPU seconds) and held-out relative MSE of the "
        "VQ codec's fitting recipes for one D=64 layer at the paper rate "
        "(keys 28 x 10 bits, or split 14 + 14; values 8 x 9 bits).",
        "faiss `ResidualQuantizer` (plain k-means per stage) fitted on the "
        "same vectors."),
    "code_attention_bench": (
        "One decode step's attention for one layer over N past tokens "
        "computed directly on the VQ codes (`kernels/code_attention.h`), "
        "SmolLM2-135M shape, one thread; ms per layer per step, wall and "
        "thread CPU time.",
        "decode-then-attend, and exact fp32 attention over fp16-rounded "
        "K/V (what the runtime's exact cache does)."),
    "kv_service_bench": (
        "Put/get throughput (blocks/s, MB/s, KV tokens/s) and per-request "
        "p50/p99 latency of vqkv-server over loopback gRPC, one block per "
        "request and batched, with 1 and 16 clients (the full run: 1, 4, 16 "
        "and 64); gets twice: unary GetBlocks calls (`get`) and the same "
        "requests over one GetBlocksSession stream per client (`sget`), "
        "and through the client library's gRPC backend, one shared by all "
        "client threads with its default 16 connections, as an engine's "
        "`CacheClient` uses it (`lget`); the benchmark starts and stops "
        "both servers.",
        "redis-server (no persistence) with the same payloads over hiredis: "
        "SET/GET and MSET/MGET."),
    "store_scale_bench": (
        "Put, get and 16-block lookup latency (p50/p99, microseconds) of "
        "the in-process `TieredStore` (memory tier) as it grows from 10^3 "
        "to 10^6 blocks of 1 KiB, one thread, and the heap it holds per "
        "block.",
        "a mutex-guarded `absl::flat_hash_map` from key to shared bytes "
        "with the same blocks and calls."),
    "cluster_bench": (
        "Store and load throughput and latency of a `CacheClient` over a "
        "`ClusterBackend` of 1, 2 and 3 loopback vqkv-server processes, "
        "with 1 and 2 replicas.",
        "the 1-node, R=1 row: a single server through the same client."),
    "client_bench": (
        "Time to first token on SmolLM2-135M on the CPU when a shared "
        "prefix is loaded from the cache through the client library, "
        "the client's encode+put and get+decode throughput, and the "
        "connector's layer-by-layer load.",
        "recompute: the prefill of the whole prompt from an empty cache; "
        "for the connector, the wait for every layer."),
    "cuda_codec_bench": (
        "Device-time throughput of the CUDA RVQ encode and float32/fp16 "
        "decode kernels at the paper configuration (D=64 and D=128); the "
        "first vectors' GPU codes are checked against the CPU encoder.",
        "the CPU kernels (codec_bench's vq greedy rows)."),
}


def read_meta(path):
    meta = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition(": ")
            if sep:
                meta[key] = value
    return meta


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def load_results(results):
    """name -> {"meta", "table", "err"} for every benchmark that has a meta."""
    out = {}
    for name in BENCHMARKS:
        meta_path = os.path.join(results, name + ".meta")
        if not os.path.exists(meta_path):
            continue
        out[name] = {
            "meta": read_meta(meta_path),
            "table": read_text(os.path.join(results, name + ".txt")),
            "err": read_text(os.path.join(results, name + ".err")),
        }
    return out


def loaded(meta):
    """Whether the 1-minute load average at the start exceeded the cores
    (only for a benchmark that ran: a skip measured nothing)."""
    if meta.get("exit") in ("77", "not built"):
        return False
    try:
        return float(meta["load"].split()[0]) > int(meta["cores"])
    except (KeyError, ValueError, IndexError):
        return False


def status(r):
    code = r["meta"].get("exit", "?")
    if code == "0":
        return "ok"
    if code == "77":
        return "skipped"
    if code == "not built":
        return "not built"
    return f"failed (exit {code})"


def last_lines(text, n):
    lines = [l for l in text.replace("\r", "\n").splitlines() if l.strip()]
    return "\n".join(lines[-n:])


def fence(text):
    return "```text\n" + text.rstrip("\n") + "\n```\n"


def load_str(meta):
    parts = meta.get("load", "").split()
    if len(parts) != 3:
        return meta.get("load", "unknown")
    return ", ".join(parts) + " (1, 5, 15 min)"


def parse_code_attention(table):
    """[(tokens, codes ms, decode+attend ms, exact ms)] from the markdown
    table (each ms cell is "wall (thread CPU)")."""
    pts = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].isdigit():
            continue
        try:
            pts.append((int(cells[0]),
                        *[float(c.split()[0]) for c in cells[1:4]]))
        except (ValueError, IndexError):
            continue
    return pts


STORE_ROW = re.compile(r"^(hash map|TieredStore)\s+(\d+)\s+([\d.\s]+)$")


def parse_store_scale(table):
    """{store: [(blocks, put p50, get p50, lookup p50, heap B/block)]}."""
    out = {}
    for line in table.splitlines():
        m = STORE_ROW.match(line.strip())
        if not m:
            continue
        v = [float(x) for x in m.group(3).split()]
        if len(v) < 9:
            continue
        # put/s, put p50, put p99, get p50, get p99, look p50, look p99,
        # heap B/block, over
        out.setdefault(m.group(1), []).append(
            (int(m.group(2)), v[1], v[3], v[5], v[7]))
    return out


def parse_kv_service(table):
    """{(model, format, tokens, batch, server, op): [(clients, blocks/s)]}."""
    out = {}
    for line in table.splitlines():
        f = line.split()
        if len(f) < 9 or f[5] not in ("vqkv", "redis"):
            continue
        try:
            key = (f[0], f[1], int(f[2]), int(f[4]), f[5], f[6])
            out.setdefault(key, []).append((int(f[7]), float(f[8])))
        except ValueError:
            continue
    return out


def save(fig, path, plt):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def labels(ax, x, y, title, fontsize=8):
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.legend(fontsize=fontsize)


def plot_code_attention(table, path, plt):
    pts = sorted(parse_code_attention(table))
    if len(pts) < 2:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = [p[0] for p in pts]
    for i, label in enumerate(("attention over codes", "decode, then attend",
                               "exact fp32 (fp16-rounded K/V)")):
        ax.plot(x, [p[i + 1] for p in pts], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    labels(ax, "past tokens", "ms per layer per decode step (median wall)",
           "code_attention_bench: cost against context length")
    return save(fig, path, plt)


def plot_store_scale(table, path, plt):
    rows = parse_store_scale(table)
    if not rows or max(len(v) for v in rows.values()) < 2:
        return False
    fig, (lat, mem) = plt.subplots(1, 2, figsize=(9.5, 4))
    for store, pts in sorted(rows.items()):
        pts.sort()
        x = [p[0] for p in pts]
        for j, op in enumerate(("put", "get", "16-block lookup")):
            lat.plot(x, [p[j + 1] for p in pts],
                     ("o-" if store == "TieredStore" else "s--"),
                     label=f"{store} {op}")
        mem.plot(x, [p[4] for p in pts],
                 ("o-" if store == "TieredStore" else "s--"), label=store)
    lat.set_xscale("log")
    mem.set_xscale("log")
    labels(lat, "blocks stored", "p50 latency (us)",
           "latency against store size", 7)
    labels(mem, "blocks stored", "heap bytes per 1 KiB block",
           "memory per block", 7)
    return save(fig, path, plt)


def plot_kv_service(table, path, plt):
    rows = parse_kv_service(table)
    if not rows or max(len(v) for v in rows.values()) < 2:
        return False
    # The first model, format and block size the table has: one panel per
    # operation, a line per server and batch.
    first = next(iter(rows))
    sel = {k: v for k, v in rows.items() if k[:3] == first[:3]}
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4), sharey=True)
    # "sget" (GetBlocksSession) and "lget" (the client library): vqkv's
    # other gets, drawn with the gets.
    kinds = {"sget": " session", "lget": " library"}
    for ax, op in zip(axes, ("get", "put")):
        for (_, _, _, batch, server, o), pts in sorted(sel.items()):
            if o != op and not (op == "get" and o in kinds):
                continue
            pts.sort()
            how = kinds.get(o, "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts],
                    ("o:" if how else "o-") if server == "vqkv" else "s--",
                    label=f"{server}{how}, {batch} block(s)/request")
        ax.set_xscale("log", base=2)
        labels(ax, "client threads", "blocks/s" if op == "get" else "",
               f"{op}s", 7)
    fig.suptitle(f"kv_service_bench: {first[0]} {first[1]}, "
                 f"{first[2]}-token blocks")
    return save(fig, path, plt)


PLOTS = {
    "code_attention_bench": plot_code_attention,
    "store_scale_bench": plot_store_scale,
    "kv_service_bench": plot_kv_service,
}


def draw_plots(res, out_dir):
    """name -> PNG file name, for each plot drawn (none without
    matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_report.py: no matplotlib: no plots", file=sys.stderr)
        return {}
    drawn = {}
    for name, fn in PLOTS.items():
        r = res.get(name)
        if r is None or status(r) != "ok":
            continue
        png = f"performance_{name}.png"
        if fn(r["table"], os.path.join(out_dir, png), plt):
            drawn[name] = png
    return drawn


def section(name, r, quick, png=None):
    what, peer = BENCHMARKS[name]
    out = [f"## {name}\n", f"{what}\n", f"Peer: {peer}\n"]
    if r is None:
        flag = " --quick" if quick else ""
        out.append(f"Not run in this report: `scripts/bench.sh{flag} {name}` "
                   "runs it and regenerates this file.\n")
        return "\n".join(out)
    m = r["meta"]
    machine = f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores"
    if m.get("machine"):
        machine = f"{m['machine']}: {machine}"
    out.append(
        f"- command: `{m.get('command', '?')}`\n"
        f"- machine: {machine}; GPU: {m.get('gpu', 'none')}\n"
        f"- date: {m.get('date', '?')} (commit {m.get('commit', '?')}); "
        f"load average at the start: {load_str(m)}"
        + (" — **above the core count: a noisy run**" if loaded(m) else "")
        + "\n"
        f"- status: {status(r)}, {m.get('seconds', '?')} s\n")
    st = status(r)
    if st == "ok":
        out.append(fence(r["table"]))
        if png:
            out.append(f"![{name}]({png})\n")
    elif st in ("skipped", "not built"):
        out.append(f"Why: {last_lines(r['err'], 1) or 'no reason printed'}\n")
    else:
        if r["table"].strip():
            out.append("What it printed before failing:\n")
            out.append(fence(r["table"]))
        out.append("The end of its stderr:\n")
        out.append(fence(last_lines(r["err"], 15) or "(empty)"))
    return "\n".join(out)


def render(results, quick, out_dir=None):
    res = load_results(results)
    pngs = draw_plots(res, out_dir) if out_dir is not None else {}
    noisy = [n for n, r in res.items() if loaded(r["meta"])]
    mode = ("`scripts/bench.sh --quick` (small sizes: the numbers are "
            "indicative only)" if quick else
            "`scripts/bench.sh` (each benchmark's documented default)")
    out = [
        "# Performance\n",
        "<!-- Generated by scripts/bench.sh (scripts/bench_report.py) from "
        "the benchmarks' own output; rerun it rather than editing. -->\n",
        "What each benchmark in [bench/](../bench/) measures, against which "
        f"peer, and the table it printed when run by {mode}. Every section "
        "gives the exact command, the machine, the date and the load "
        "average when it started. Tests never assert speed; "
        "`ctest -L bench` only checks that each benchmark runs on tiny "
        "sizes and prints its table.\n",
    ]
    if noisy:
        out.append(
            f"**These numbers were taken on a loaded machine**: "
            f"{len(noisy)} of {len(res)} benchmarks started with a 1-minute "
            "load average above the number of cores "
            f"({', '.join(noisy)}), so they may have got a fraction of the "
            "CPU and their throughputs may be low and noisy (the load "
            "average trails by a minute: part of it can be the previous "
            "benchmark's own threads). To regenerate on an idle "
            "machine: `scripts/bench.sh` (full sizes) or "
            "`scripts/bench.sh --quick`, optionally naming benchmarks "
            "(`scripts/bench.sh --quick codec_bench`).\n")
    else:
        out.append("To regenerate: `scripts/bench.sh` (full sizes) or "
                   "`scripts/bench.sh --quick`, optionally naming benchmarks "
                   "(`scripts/bench.sh --quick codec_bench`).\n")
    out.append("| benchmark | status | date | load average at start | "
               "seconds |\n|---|---|---|---|---:|")
    for name in BENCHMARKS:
        r = res.get(name)
        if r is None:
            out.append(f"| [{name}](#{name}) | not run | - | - | - |")
        else:
            m = r["meta"]
            out.append(f"| [{name}](#{name}) | {status(r)} | "
                       f"{m.get('date', '?')} | {load_str(m)} | "
                       f"{m.get('seconds', '?')} |")
    out.append("")
    for name in BENCHMARKS:
        out.append(section(name, res.get(name), quick, pngs.get(name)))
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="the results come from bench.sh --quick")
    p.add_argument("results")
    p.add_argument("out")
    a = p.parse_args(argv)
    if not os.path.isdir(a.results):
        print(f"bench_report.py: no directory {a.results}", file=sys.stderr)
        return 2
    text = render(a.results, a.quick,
                  os.path.dirname(os.path.abspath(a.out)))
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
