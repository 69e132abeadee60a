#!/usr/bin/env python3
"""The serial-versus-parallel benchmark report: figures (PNG) and their data (JSON).

  python3 bench/report.py merge RAWDIR --out bundle.json   # raw JSONs of one machine -> one file
  python3 bench/report.py draw --from DIR [--from DIR2] --out docs/report

`merge` reads RAWDIR/*.json (Google Benchmark --benchmark_out files, pytorch_peer.py
files), RAWDIR/machine.txt (its first line names the machine) and RAWDIR/commands.tsv
(one "file<TAB>command" per run) and writes one compact bundle: the rows that the
figures and compare.py need, with the machine and the commands. It needs only the
standard library, so it runs where matplotlib is missing.

  python3 bench/report.py tables [--from docs/report] [--out docs/results.md] [--readme README.md]
  python3 bench/report.py tables --check       # regenerate into a temp dir, compare byte for byte

`tables` (the default command) writes docs/results.md, every table of the results, from the
JSON runs in docs/report/ (see RUNS below), the README's results table and the real-time
table of docs/realtime.md (bench_realtime's rows) and docs/distributed.md's tables
(docs/report/distributed_char_lm.json), each between its markers. Standard
library only. `--check` writes them into a temporary folder and fails unless they equal
the committed files byte for byte: the test suite runs it.

`draw` reads every *.json in the given folders (raw files, bundles, or the per-figure
files it wrote before: all three load the same way) and writes into --out:

  serial_vs_parallel.png  GRU/LSTM vs minGRU/minLSTM, time and speedup vs T, forward and training
  complexity.png          RNN, minGRU and Transformer time vs T, log-log, fitted slopes
  thread_scaling.png      scan, minGRU, GRU, LSTM, attention, GEMM and bandwidth at 1..N threads
  accuracy.png            fp32 relative error of the linear and log-space scans vs T
  ceilings.png            each layer's FLOP/s and bytes/s as a fraction of BM_Gemm / BM_Bandwidth
  ratios.md, ratios.json  seqnn/PyTorch table (bench/compare.py) and its rows
  all_results.json        every row loaded, with the machine and the commands

and beside each figure a .json with the rows it was drawn from, the machine and the
commands. Figures whose benchmarks are missing are skipped with a message.
"""
import argparse
import glob
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (bench/compare.py: the loaders and the ratio table)

LAYER_SHAPE = "B:16/T:{T}/D:256"
KIND_LABEL = {"GRU": "GRU", "LSTM": "LSTM", "MinGRU": "minGRU", "MinLSTM": "minLSTM", "RNN": "RNN (tanh)",
              "Transformer": "Transformer block"}
COLOURS = {"GRU": "tab:red", "LSTM": "tab:orange", "MinGRU": "tab:blue", "MinLSTM": "tab:cyan",
           "RNN": "tab:purple", "Transformer": "tab:green"}


# ---------------------------------------------------------------------------------------------
# Loading

def read_meta_files(folder):
    meta = {}
    machine = os.path.join(folder, "machine.txt")
    if os.path.exists(machine):
        with open(machine) as f:
            text = f.read().strip()
        if text:
            meta["machine"] = text.splitlines()[0]
            meta["machine_details"] = text
    commands = os.path.join(folder, "commands.tsv")
    if os.path.exists(commands):
        meta["commands"] = {}
        with open(commands) as f:
            for line in f:
                if "\t" in line:
                    source, command = line.rstrip("\n").split("\t", 1)
                    meta["commands"][source] = command
    return meta


class Results:
    """All seqnn and PyTorch rows, keyed by (name, threads), with the metadata."""

    def __init__(self, folders, files=(), meta_from=None):
        paths = list(files)
        self.meta = dict(read_meta_files(meta_from)) if meta_from else {}
        for folder in folders:
            found = sorted(glob.glob(os.path.join(folder, "*.json")))
            if not found:
                sys.exit(f"report.py: no *.json in {folder}")
            paths += found
            for k, v in read_meta_files(folder).items():
                self.meta.setdefault(k, v)
        ours, peer, meta = compare.load(paths)
        for k, v in meta.items():
            if k == "commands":
                self.meta.setdefault("commands", {}).update(v)
            else:
                self.meta.setdefault(k, v)
        self.ours = {(r["name"], r["threads"]): r for r in ours}
        self.peer = {(r["name"], r["threads"]): r for r in peer}

    def get(self, name, threads):
        return self.ours.get((name, threads))

    def threads_of(self, pattern):
        return sorted({t for (n, t) in self.ours if re.search(pattern, n)})

    def machine(self):
        if "machine" in self.meta:
            return self.meta["machine"]
        for ctx in self.meta.get("contexts", {}).values():
            return f"{ctx.get('num_cpus', '?')} CPUs, host {ctx.get('host_name', '?')}"
        return "unknown machine"


def t_of(name):
    m = re.search(r"/T:(\d+)", name)
    return int(m.group(1)) if m else None


def series(res, prefix, threads, shape=LAYER_SHAPE):
    """[(T, row)] of prefix/shape over every T present, sorted."""
    pattern = re.compile("^" + re.escape(prefix + "/" + shape).replace(r"\{T\}", r"(\d+)") + "$")
    out = []
    for (name, th), row in res.ours.items():
        m = pattern.match(name)
        if m and th == threads:
            out.append((int(m.group(1)), row))
    return sorted(out, key=lambda x: x[0])


def pick_threads(available):
    """1 and the largest thread count, when present."""
    if not available:
        return []
    return sorted({available[0], available[-1]})


def fit_slope(xs, ys):
    """Least-squares slope of log y against log x."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx if sxx > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Figures. Each returns (figure, rows drawn, caption) or None when its data is missing.

def fig_serial_vs_parallel(res, plt):
    threads = pick_threads(res.threads_of(r"^BM_(GRU|MinGRU)_Forward/B:16/"))
    if not threads:
        return None
    used = []
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    styles = {threads[0]: "--", threads[-1]: "-"}
    headline = []
    for col, mode in enumerate(("Forward", "Train")):
        ax_t, ax_s = axes[0][col], axes[1][col]
        for th in threads:
            data = {}
            for kind in ("GRU", "LSTM", "MinGRU", "MinLSTM"):
                s = series(res, f"BM_{kind}_{mode}", th)
                if not s:
                    continue
                data[kind] = dict((T, r["time_ms"]) for T, r in s)
                used += [r for _, r in s]
                ax_t.plot(list(data[kind]), list(data[kind].values()), styles[th], marker="o", ms=4,
                          color=COLOURS[kind], label=f"{KIND_LABEL[kind]}, {th} thr")
            for seq, par in (("GRU", "MinGRU"), ("LSTM", "MinLSTM")):
                if seq in data and par in data:
                    Ts = sorted(set(data[seq]) & set(data[par]))
                    sp = [data[seq][T] / data[par][T] for T in Ts]
                    ax_s.plot(Ts, sp, styles[th], marker="o", ms=4, color=COLOURS[par],
                              label=f"{KIND_LABEL[par]} over {KIND_LABEL[seq]}, {th} thr")
                    ax_s.annotate(f"{sp[-1]:.1f}x", (Ts[-1], sp[-1]), textcoords="offset points",
                                  xytext=(6, 2 if par == "MinGRU" else -9), fontsize=8, color=COLOURS[par])
                    headline.append(f"{mode.lower()}, {th} thread(s): {KIND_LABEL[par]} is {sp[-1]:.1f}x "
                                    f"faster than {KIND_LABEL[seq]} at T={Ts[-1]}")
        ax_t.set(xscale="log", yscale="log", ylabel="time per batch (ms)",
                 title=f"{'Forward' if mode == 'Forward' else 'Training (forward + backward)'}: time")
        ax_s.set(xscale="log", yscale="log", xlabel="sequence length T (steps)",
                 ylabel="speedup (sequential cell time / min* time)", title=f"{mode}: speedup of the parallel scan")
        ax_s.axhline(1, color="grey", lw=0.8)
        for ax in (ax_t, ax_s):
            ax.set_xticks([64, 256, 1024, 4096])
            ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    thr_text = " and ".join(str(t) for t in threads)
    fig.suptitle(f"Serial vs parallel: GRU/LSTM (a loop over T) vs minGRU/minLSTM (one GEMM + parallel scan)\n"
                 f"{res.machine()}; B=16, D=256, fp32; {thr_text} threads "
                 f"(dashed: {threads[0]}, solid: {threads[-1]})", fontsize=10)
    fig.text(0.5, 0.005, "For scale, the paper's runtime figure (T4 GPU, minGRU over GRU): 175x at T=512, over 1300x at "
             "T=4096; not measured here. On a CPU the parallel layer has only the cores to spread over.",
             ha="center", va="bottom", fontsize=8, color="dimgrey")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    caption = ("seqnn time per call (median of repetitions) for a batch of 16 sequences, hidden size 256, "
               "and the ratio sequential-cell / min* layer at the same thread count. " + "; ".join(headline))
    return fig, used, caption


def fig_complexity(res, plt):
    threads = pick_threads(res.threads_of(r"^BM_(RNN|MinGRU|Transformer)_Forward/B:16/"))
    if not threads:
        return None
    used, notes = [], []
    fig, axes = plt.subplots(1, len(threads), figsize=(6.2 * len(threads), 5.2), squeeze=False)
    D = 256
    for ax, th in zip(axes[0], threads):
        for kind in ("RNN", "MinGRU", "Transformer"):
            s = series(res, f"BM_{kind}_Forward", th)
            if len(s) < 2:
                continue
            used += [r for _, r in s]
            Ts, ys = [T for T, _ in s], [r["time_ms"] for _, r in s]
            slope = fit_slope(Ts, ys)
            tail = fit_slope(Ts[-2:], ys[-2:])
            label = f"{KIND_LABEL[kind]}: slope {slope:.2f} (last octaves {tail:.2f})"
            notes.append(f"{th} thread(s): {KIND_LABEL[kind]} fitted slope {slope:.2f} over T={Ts[0]}..{Ts[-1]}, "
                         f"{tail:.2f} from T={Ts[-2]} to {Ts[-1]}")
            ax.plot(Ts, ys, "o-", color=COLOURS[kind], label=label)
            # Reference: the FLOP formula, scaled to the measured time at the smallest T.
            if kind == "RNN":
                ref = [T * D * D for T in Ts]
                ax.plot(Ts, [ys[0] * r / ref[0] for r in ref], ":", color="grey", label="∝ T·D² (slope 1), through RNN")
            if kind == "Transformer":
                ref = [24 * T * D * D + 2 * T * T * D for T in Ts]
                ax.plot(Ts, [ys[0] * r / ref[0] for r in ref], "-.", color="black",
                        label="∝ 24·T·D² + 2·T²·D (block FLOPs), through Transformer")
        ax.set(xscale="log", yscale="log", xlabel="sequence length T (steps)", ylabel="forward time per batch (ms)",
               title=f"{th} thread{'s' if th > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle(f"Complexity in T: RNN and minGRU are T·D², the Transformer block T·D² + T²·D\n"
                 f"{res.machine()}; B=16, D=256 (8 heads, MLP 4D, causal), fp32, forward", fontsize=10)
    fig.tight_layout()
    caption = ("Forward time vs T on log-log axes; slopes are least-squares fits of log time on log T over all T, "
               "and between the last two T. Reference curves are the FLOP counts, scaled through the first "
               "measured point. " + "; ".join(notes))
    return fig, used, caption


SCALING = [
    ("BM_ScanParallelThreads/B:1/T:65536/D:256/threads:{n}", "scan, B=1 T=65536 D=256 (time split)", "tab:blue"),
    ("BM_MinGRU_Forward/B:16/T:1024/D:256", "minGRU forward, B=16 T=1024 D=256", "tab:cyan"),
    ("BM_GRU_Forward/B:16/T:1024/D:256", "GRU forward, B=16 T=1024 D=256", "tab:red"),
    ("BM_LSTM_Forward/B:16/T:1024/D:256", "LSTM forward, B=16 T=1024 D=256", "tab:purple"),
    ("BM_GRU_Step/B:1/D:1024", "GRU step, B=1 D=1024", "tab:orange"),
    ("BM_Attention_Forward/B:1/T:4096/H:8/Dh:64", "attention forward, B=1 T=4096 8x64", "tab:green"),
    ("BM_Attention_Forward/B:16/T:1024/H:8/Dh:32", "attention forward, B=16 T=1024 8x32", "tab:olive"),
    ("BM_Gemm/M:16384/K:256/N:512", "GEMM 16384x256x512 (ceiling)", "black"),
    ("BM_Bandwidth/N:16777216", "stream c=a+b, 192 MiB (ceiling)", "grey"),
]


def fig_thread_scaling(res, plt):
    lines = []
    for pattern, label, colour in SCALING:
        pts = []
        for (name, th), row in res.ours.items():
            if "{n}" in pattern:
                if name == pattern.format(n=th):
                    pts.append((th, row))
            elif name == pattern:
                pts.append((th, row))
        pts.sort(key=lambda x: x[0])
        if len(pts) >= 2 and pts[0][0] == 1:
            lines.append((label, colour, pts))
    if not lines:
        return None
    used, notes = [], []
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(13, 5.2))
    max_t = max(p[-1][0] for _, _, p in lines)
    for label, colour, pts in lines:
        used += [r for _, r in pts]
        ths, ts = [t for t, _ in pts], [r["time_ms"] for _, r in pts]
        sp = [ts[0] / t for t in ts]
        style = "--" if "ceiling" in label else "-"
        ax_s.plot(ths, sp, style, marker="o", color=colour, label=label)
        ax_t.plot(ths, ts, style, marker="o", color=colour, label=label)
        notes.append(f"{label}: {sp[-1]:.1f}x at {ths[-1]} threads ({ts[0]:.3g} -> {ts[-1]:.3g} ms)")
    ideal = [2 ** i for i in range(int(math.log2(max_t)) + 1)]
    ax_s.plot(ideal, ideal, ":", color="grey", label="ideal (linear)")
    ax_s.set(xscale="log", yscale="log", xlabel="threads (OMP_NUM_THREADS)", ylabel="speedup over 1 thread",
             title="Speedup")
    ax_t.set(xscale="log", yscale="log", xlabel="threads (OMP_NUM_THREADS)", ylabel="time per call (ms)",
             title="Time")
    for ax in (ax_s, ax_t):
        ax.set_xticks(ideal)
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle(f"Thread scaling: scan, minGRU, GRU, LSTM and attention against the GEMM and streaming ceilings\n"
                 f"{res.machine()}; fp32; 1 to {max_t} threads", fontsize=10)
    fig.tight_layout()
    caption = "Time and speedup over one thread. " + "; ".join(notes)
    return fig, used, caption


def fig_accuracy(res, plt):
    variants = [("LinearSequential", "linear space, sequential", "tab:blue", "o-"),
                ("LinearParallel", "linear space, parallel (auto split)", "tab:cyan", "s--"),
                ("LogSpace", "log space (paper: cumsum + logcumsumexp)", "tab:red", "^-")]
    rows = [(n, th, r) for (n, th), r in res.ours.items() if n.startswith("BM_ScanAccuracy_")]
    if not rows:
        return None
    th = max(t for _, t, _ in rows)
    a_values = sorted({int(re.search(r"/a:(\d+)", n).group(1)) for n, t, _ in rows if t == th})
    fig, axes = plt.subplots(1, len(a_values), figsize=(6.2 * len(a_values), 5), squeeze=False, sharey=True)
    used, notes = [], []
    for ax, a in zip(axes[0], a_values):
        for key, label, colour, style in variants:
            s = sorted(((t_of(n), r) for n, t, r in rows
                        if t == th and n.startswith(f"BM_ScanAccuracy_{key}/") and f"/a:{a}" in n), key=lambda x: x[0])
            if not s:
                continue
            used += [r for _, r in s]
            ax.plot([T for T, _ in s], [r["counters"]["rel_error"] for _, r in s], style, color=colour, label=label)
            notes.append(f"a~U({a / 1000:g},1), {label}: {s[-1][1]['counters']['rel_error']:.2g} at T={s[-1][0]}")
        ax.axhline(2.0 ** -24, color="grey", ls=":", label="fp32 unit roundoff 2⁻²⁴")
        ax.set(xscale="log", yscale="log", xlabel="sequence length T (steps)",
               ylabel="relative error  max|h − h₆₄| / max|h₆₄|", title=f"a ~ U({a / 1000:g}, 1), b ~ U(0.01, 1), D=64")
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"fp32 scan h_t = a_t·h_(t−1) + b_t against an fp64 sequential reference\n"
                 f"{res.machine()}; {th} threads (parallel variants)", fontsize=10)
    fig.tight_layout()
    caption = ("Maximum absolute error over the whole (T, 64) output divided by the maximum |h| of the fp64 "
               "reference, one stream. " + "; ".join(notes))
    return fig, used, caption


CEILING_LAYERS = [
    ("BM_RNN_Forward/B:16/T:1024/D:256", "RNN forward"),
    ("BM_GRU_Forward/B:16/T:1024/D:256", "GRU forward"),
    ("BM_GRU_Train/B:16/T:1024/D:256", "GRU train"),
    ("BM_LSTM_Forward/B:16/T:1024/D:256", "LSTM forward"),
    ("BM_LSTM_Train/B:16/T:1024/D:256", "LSTM train"),
    ("BM_MinGRU_Forward/B:16/T:1024/D:256", "minGRU forward"),
    ("BM_MinGRU_Train/B:16/T:1024/D:256", "minGRU train"),
    ("BM_MinLSTM_Forward/B:16/T:1024/D:256", "minLSTM forward"),
    ("BM_MinLSTM_Train/B:16/T:1024/D:256", "minLSTM train"),
    ("BM_Transformer_Forward/B:16/T:1024/D:256", "Transformer forward"),
    ("BM_Transformer_Train/B:16/T:1024/D:256", "Transformer train"),
    ("BM_Attention_Forward/B:1/T:4096/H:8/Dh:64", "attention fwd, B=1 T=4096 8x64"),
    ("BM_Attention_Train/B:1/T:4096/H:8/Dh:64", "attention train, B=1 T=4096 8x64"),
    ("BM_ScanSequential/B:16/T:4096/D:256", "scan sequential, T=4096"),
    ("BM_ScanParallel/B:16/T:4096/D:256", "scan parallel, T=4096"),
]


def ceilings(res, th):
    gemm = [r for (n, t), r in res.ours.items() if t == th and n.startswith("BM_Gemm/")]
    bw = res.get("BM_Bandwidth/N:16777216", th)
    if not gemm or bw is None:
        return None
    best = max(gemm, key=lambda r: r["counters"]["FLOPS"])
    return best, bw


def fig_ceilings(res, plt):
    threads = [t for t in pick_threads(res.threads_of(r"^BM_Gemm/")) if ceilings(res, t)]
    if not threads:
        return None
    used, notes = [], []
    fig, (ax_f, ax_b) = plt.subplots(1, 2, figsize=(13, 6.5), sharey=True)
    labels = [label for _, label in CEILING_LAYERS]
    height = 0.8 / len(threads)
    colours = {threads[0]: "tab:gray", threads[-1]: "tab:blue"}
    for i, th in enumerate(threads):
        gemm, bw = ceilings(res, th)
        used += [gemm, bw]
        fl, by = [], []
        for name, label in CEILING_LAYERS:
            r = res.get(name, th)
            if r is not None:
                used.append(r)
            fl.append(r["counters"]["FLOPS"] / gemm["counters"]["FLOPS"] if r else float("nan"))
            by.append(r["counters"]["bytes_per_second"] / bw["counters"]["bytes_per_second"] if r else float("nan"))
        ys = [k + (i - (len(threads) - 1) / 2) * height for k in range(len(labels))]
        g, b = gemm["counters"]["FLOPS"] / 1e9, bw["counters"]["bytes_per_second"] / 1e9
        ax_f.barh(ys, [100 * v for v in fl], height, color=colours[th],
                  label=f"{th} thread{'s' if th > 1 else ''}: GEMM {g:.0f} GFLOP/s")
        ax_b.barh(ys, [100 * v for v in by], height, color=colours[th],
                  label=f"{th} thread{'s' if th > 1 else ''}: stream {b:.0f} GB/s")
        for y, v, w in zip(ys, fl, by):
            if not math.isnan(v):
                ax_f.text(100 * v, y, f" {100 * v:.0f}%", va="center", fontsize=6.5)
                ax_b.text(100 * w, y, f" {100 * w:.0f}%", va="center", fontsize=6.5)
        notes.append(f"{th} thread(s): ceilings {gemm['name']} {g:.1f} GFLOP/s, BM_Bandwidth/N:16777216 {b:.1f} GB/s")
    ax_f.set_yticks(range(len(labels)))
    ax_f.set_yticklabels(labels, fontsize=8)
    ax_f.invert_yaxis()
    ax_f.set(xlabel="useful FLOP/s as % of BM_Gemm's FLOP/s", title="Compute: fraction of the GEMM ceiling")
    ax_b.set(xlabel="minimum bytes/s as % of BM_Bandwidth's bytes/s", title="Memory: fraction of the streaming ceiling")
    for ax in (ax_f, ax_b):
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Each layer's throughput against the machine's ceilings (B=16, D=256, T=1024 unless noted)\n"
                 f"{res.machine()}; fp32", fontsize=10)
    fig.tight_layout()
    ax_f.text(0.99, 0.01, "Ceilings are measured kernels, not the hardware's peak: over 100% means\n"
              "the layer beats that GEMM shape or that stream (e.g. data held in cache).",
              transform=ax_f.transAxes, fontsize=7, color="dimgrey", ha="right", va="bottom")
    caption = ("FLOPS and bytes_per_second counters of each benchmark (useful FLOPs and the minimum bytes a call must "
               "move, as defined in the bench sources) divided by the fastest BM_Gemm and by BM_Bandwidth/N:16777216 "
               "at the same thread count. The ceilings are measured kernels, not the hardware's peak: a layer can "
               "exceed them (attention's GEMM tiles run faster than the K=256 GEMM; a 192 MiB working set partly "
               "fits a large L3). " + "; ".join(notes))
    return fig, used, caption


FIGURES = [("serial_vs_parallel", fig_serial_vs_parallel), ("complexity", fig_complexity),
           ("thread_scaling", fig_thread_scaling), ("accuracy", fig_accuracy), ("ceilings", fig_ceilings)]


# ---------------------------------------------------------------------------------------------
# Output

def bundle(res, rows, peer_rows=(), extra=None):
    """A JSON-ready dict that compare.load / Results read back: the rows, the machine and the
    commands of the runs they came from."""
    sources = sorted({r.get("source", "") for r in list(rows) + list(peer_rows)})
    commands = res.meta.get("commands", {})
    report = {"machine": res.machine()}
    if "machine_details" in res.meta:
        report["machine_details"] = res.meta["machine_details"]
    # Per-file commands of the rows' sources, and "_invocation" (how the whole collection was run).
    report["commands"] = {s: c for s, c in commands.items() if s in sources or s.startswith("_")}
    report.update(extra or {})
    seen, unique = set(), []
    for r in rows:
        if id(r) not in seen:
            seen.add(id(r))
            unique.append(r)
    return {"report": report, "benchmarks": sorted(unique, key=lambda r: (r["name"], r["threads"])),
            "peer": sorted(peer_rows, key=lambda r: (r["name"], r["threads"]))}


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=0, sort_keys=False)
        f.write("\n")


def cmd_merge(args):
    res = Results([args.rawdir])
    data = bundle(res, list(res.ours.values()), list(res.peer.values()),
                  {"merged_from": sorted(os.path.basename(p) for p in glob.glob(os.path.join(args.rawdir, "*.json")))})
    contexts = res.meta.get("contexts", {})
    if contexts:
        ctx = next(iter(contexts.values()))
        data["context"] = {k: ctx[k] for k in ("date", "host_name", "num_cpus", "mhz_per_cpu", "caches",
                                                "library_build_type") if k in ctx}
    write_json(args.out, data)
    print(f"report.py: {len(data['benchmarks'])} seqnn rows and {len(data['peer'])} PyTorch rows -> {args.out}")


def cmd_draw(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.matplotlib = matplotlib
    res = Results(args.from_dirs)
    os.makedirs(args.out, exist_ok=True)
    print(f"machine: {res.machine()}; {len(res.ours)} seqnn rows, {len(res.peer)} PyTorch rows")
    for stem, draw in FIGURES:
        made = draw(res, plt)
        if made is None:
            print(f"  {stem}: skipped (its benchmarks are not in the data)")
            for ext in (".png", ".json"):  # no stale figure from other data
                if os.path.exists(os.path.join(args.out, stem + ext)):
                    os.remove(os.path.join(args.out, stem + ext))
            continue
        fig, used, caption = made
        fig.savefig(os.path.join(args.out, stem + ".png"), dpi=args.dpi)
        plt.close(fig)
        write_json(os.path.join(args.out, stem + ".json"), bundle(res, used, (), {"figure": stem + ".png",
                                                                                  "caption": caption}))
        print(f"  {stem}.png: {caption}")
    write_json(os.path.join(args.out, "all_results.json"),
               bundle(res, list(res.ours.values()), list(res.peer.values()), {"content": "every row loaded"}))
    rows = compare.ratio_rows(list(res.ours.values()), list(res.peer.values()))
    if rows:
        table = compare.format_table(rows, markdown=True)
        with open(os.path.join(args.out, "ratios.md"), "w") as f:
            f.write(f"seqnn vs PyTorch, {res.machine()}; PyTorch / seqnn time, above 1x: seqnn is faster\n\n")
            f.write(table + "\n")
        names = {(n, t) for n, t, *_ in rows}
        write_json(os.path.join(args.out, "ratios.json"),
                   bundle(res, [res.ours[k] for k in names], [res.peer[k] for k in names], {"table": "ratios.md"}))
        print(compare.format_table(rows))
    else:
        print("  ratios: no PyTorch results with matching names and threads")
        for stale in ("ratios.md", "ratios.json"):
            if os.path.exists(os.path.join(args.out, stale)):
                os.remove(os.path.join(args.out, stale))


# ---------------------------------------------------------------------------------------------
# Tables: docs/results.md and the README's results table, standard library only.
#
# RUNS: every *.json under the report folder is a run, or part of one, except the files `draw`
# writes beside a figure or table (their report names a "figure" or a "table": their rows are in
# the run they were drawn from). A run is one bundle (`merge`'s output, or `draw`'s
# all_results.json), or the raw Google Benchmark and pytorch_peer.py files of one folder (one
# run, with the folder's machine.txt and commands.tsv). A run without a machine description or
# a command is shown as such, with a warning.

README_BEGIN = "<!-- results table: written by `python3 bench/report.py tables` from docs/report/; do not edit -->"
README_END = "<!-- end of results table -->"
HEADLINE = [
    ("BM_MinGRU_Forward/B:16/T:1024/D:256", "minGRU forward"),
    ("BM_MinGRU_Train/B:16/T:1024/D:256", "minGRU training step"),
    ("BM_MinLSTM_Forward/B:16/T:1024/D:256", "minLSTM forward"),
    ("BM_MinLSTM_Train/B:16/T:1024/D:256", "minLSTM training step"),
    ("BM_GRU_Forward/B:16/T:1024/D:256", "GRU forward"),
    ("BM_GRU_Train/B:16/T:1024/D:256", "GRU training step"),
    ("BM_LSTM_Forward/B:16/T:1024/D:256", "LSTM forward"),
    ("BM_LSTM_Train/B:16/T:1024/D:256", "LSTM training step"),
    ("BM_Transformer_Forward/B:16/T:1024/D:256", "Transformer block forward"),
    ("BM_Transformer_Train/B:16/T:1024/D:256", "Transformer block training step"),
    ("BM_Attention_Forward/B:1/T:4096/H:8/Dh:64", "causal attention forward, B:1, T:4096, 8 heads of 64"),
]


class Run:
    """One run: its rows (a Results), where it came from, its machine, date and commands."""

    def __init__(self, label, res):
        self.label, self.res = label, res
        meta = res.meta
        self.machine = res.machine()
        details = meta.get("machine_details", "")
        m = re.search(r"\bdate (\d{4}-\d\d-\d\d)", details)
        self.date = m.group(1) if m else None
        for ctx in meta.get("contexts", {}).values():
            m = re.match(r"\d{4}-\d\d-\d\d", str(ctx.get("date", "")))
            if m and not self.date:
                self.date = m.group(0)
        self.date = self.date or "unknown date"
        # The full time of the run's latest file, to order runs of the same date.
        stamps = [str(ctx.get("date", "")) for ctx in meta.get("contexts", {}).values()]
        m = re.search(r"\bdate (\S+)", details)
        self.stamp = max(stamps + ([m.group(1)] if m else []), default="")
        self.details = [" ".join(line.split()) for line in details.splitlines()[1:] if line.strip()]
        self.commands = dict(meta.get("commands", {}))
        self.invocation = self.commands.pop("_invocation", None)
        if "machine" not in meta:
            print(f"report.py: {label}: no machine description (report.machine or machine.txt)", file=sys.stderr)
        if not self.invocation and not self.commands:
            print(f"report.py: {label}: no command (report.commands or commands.tsv)", file=sys.stderr)

    def title(self):
        """The section's heading; find_runs adds the data's name where two runs share one."""
        base = f"{self.machine}, {self.date}"
        return f"{base}, {self.label or 'report/'}" if getattr(self, "shared_title", False) else base


def _kind_of(path):
    """'derived' (a figure's or a table's own JSON, written by `draw`: its rows are in its run's
    file), 'bundle' (a whole run with its machine and commands) or 'raw' (a Google Benchmark or
    pytorch_peer.py file: the raw files of one folder are one run)."""
    try:
        data = compare._load_json(path)
    except (OSError, ValueError) as e:
        sys.exit(f"report.py: {path}: {e}")
    if isinstance(data, dict) and "report" in data:
        return "derived" if any(k in data["report"] for k in ("figure", "table")) else "bundle"
    return "raw"


def find_runs(root):
    runs = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        raw = []
        for f in sorted(f for f in files if f.endswith(".json")):
            path = os.path.join(folder, f)
            kind = _kind_of(path)
            if kind == "bundle":
                runs.append(Run(os.path.normpath(os.path.join(rel, f)), Results([], files=[path])))
            elif kind == "raw":
                raw.append(path)
        if raw:  # with the folder's machine.txt and commands.tsv, as `merge` reads them
            label = "" if rel == "." else rel + "/"
            if len(raw) == 1:
                label += os.path.basename(raw[0])
            runs.append(Run(label, Results([], files=raw, meta_from=folder)))
    if not runs:
        sys.exit(f"report.py: no measurements (*.json) in {root}")
    titles = [r.title() for r in runs]
    for r in runs:
        r.shared_title = titles.count(r.title()) > 1
    # Newest first; the same date in the order of the files.
    return sorted(runs, key=lambda r: r.label), sorted(runs, key=lambda r: (r.date[0].isdigit(), r.date), reverse=True)


def _x(v):
    return f"{v:.2f}x"


def _md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _thr(n):
    return f"{n} thread{'s' if n != 1 else ''}"


def table_serial_vs_parallel(run):
    res = run.res
    rows = []
    for seq, par in (("GRU", "MinGRU"), ("LSTM", "MinLSTM")):
        for mode in ("Forward", "Train"):
            for th in sorted({t for (_, t) in res.ours}):
                a = dict((T, r["time_ms"]) for T, r in series(res, f"BM_{seq}_{mode}", th))
                b = dict((T, r["time_ms"]) for T, r in series(res, f"BM_{par}_{mode}", th))
                Ts = sorted(set(a) & set(b))
                if Ts:
                    rows.append((f"{KIND_LABEL[par]} over {KIND_LABEL[seq]}, {'training' if mode == 'Train' else 'forward'}, "
                                 f"{_thr(th)}", {T: a[T] / b[T] for T in Ts}))
    if not rows:
        return []
    Ts = sorted({T for _, d in rows for T in d})
    return (["### Serial vs parallel", "",
             "Sequential cell time / min* layer time (parallel scan), the same thread count, B:16, D:256.", ""]
            + _md_table(["", *[f"T:{T}" for T in Ts]], [[label, *[f"{d[T]:.1f}x" if T in d else "" for T in Ts]]
                                                       for label, d in rows]) + [""])


def table_ratios(run):
    res = run.res
    pairs = compare.ratio_rows(list(res.ours.values()), list(res.peer.values()))
    if not pairs:
        return []
    threads = sorted({t for _, t, *_ in pairs})
    by = {(n, t): (s, p, x) for n, t, s, p, x in pairs}
    names = sorted({n for n, *_ in pairs}, key=compare._natural)
    header = ["benchmark"]
    for t in threads:
        header += [f"seqnn ms, {_thr(t)}", f"PyTorch ms, {_thr(t)}", f"PyTorch / seqnn, {_thr(t)}"]
    rows = []
    for n in names:
        row = [f"`{n}`"]
        for t in threads:
            s, p, x = by.get((n, t), (None, None, None))
            row += [compare._ms(s), compare._ms(p), _x(x)] if s is not None else ["", "", ""]
        rows.append(row)
    torch = sorted({p.get("torch", "") for p in res.peer.values()} - {""})
    return (["### seqnn vs PyTorch", "",
             f"Matched by benchmark name and thread count; PyTorch {', '.join(torch) or '(version not recorded)'} "
             "(`bench/pytorch_peer.py`). Above 1x seqnn is faster.", ""] + _md_table(header, rows) + [""])


def table_ceilings(run):
    res = run.res
    rows = []
    for th in sorted({t for (_, t) in res.ours}):
        c = ceilings(res, th)
        if not c:
            continue
        gemm, bw = c
        g, b = gemm["counters"]["FLOPS"], bw["counters"]["bytes_per_second"]
        rows.append([f"`{gemm['name']}` (ceiling)", str(th), f"{g / 1e9:.1f}", "100%", "", ""])
        rows.append([f"`{bw['name']}` (ceiling)", str(th), "", "", f"{b / 1e9:.1f}", "100%"])
        for name, _ in CEILING_LAYERS:
            r = res.get(name, th)
            if r is None:
                continue
            f, y = r["counters"].get("FLOPS"), r["counters"].get("bytes_per_second")
            rows.append([f"`{name}`", str(th), f"{f / 1e9:.1f}" if f else "", f"{100 * f / g:.0f}%" if f else "",
                         f"{y / 1e9:.1f}" if y else "", f"{100 * y / b:.0f}%" if y else ""])
    if not rows:
        return []
    return (["### Against the machine's ceilings", "",
             "Useful FLOP/s and the minimum bytes/s a call must move (the benchmarks' `FLOPS` and "
             "`bytes_per_second` counters) as a fraction of the fastest `BM_Gemm` and of "
             "`BM_Bandwidth/N:16777216` at the same thread count: measured kernels, not the hardware's peak.", ""]
            + _md_table(["benchmark", "threads", "GFLOP/s", "of BM_Gemm", "GB/s", "of BM_Bandwidth"], rows) + [""])


def _base_name(name):
    return re.sub(r"/threads:\d+", "", name)


def table_scaling(run):
    res = run.res
    by = {}
    for (name, th), r in res.ours.items():
        by.setdefault(_base_name(name), {})[th] = r["time_ms"]
    lines = {n: d for n, d in by.items() if len(d) >= 3 and 1 in d}
    if not lines:
        return []
    threads = sorted({t for d in lines.values() for t in d})
    rows = []
    for n in sorted(lines, key=compare._natural):
        d = lines[n]
        top = max(d)
        rows.append([f"`{n}`", *[compare._ms(d[t]) if t in d else "" for t in threads], f"{d[1] / d[top]:.1f}x at {top}"])
    return (["### Thread scaling", "", "ms per call at each thread count, and the speedup over one thread.", ""]
            + _md_table(["benchmark", *[_thr(t) for t in threads], "speedup"], rows) + [""])


def table_accuracy(run):
    res = run.res
    rows = [(n, t, r) for (n, t), r in res.ours.items() if n.startswith("BM_ScanAccuracy_") and "rel_error" in r["counters"]]
    if not rows:
        return []
    Ts = sorted({t_of(n) for n, _, _ in rows if t_of(n)})
    table = {}
    for n, t, r in rows:
        key = (re.sub(r"/T:\d+", "", n), t)
        table.setdefault(key, {})[t_of(n)] = r["counters"]["rel_error"]
    out = []
    for (n, t) in sorted(table, key=lambda k: (compare._natural(k[0]), k[1])):
        d = table[(n, t)]
        out.append([f"`{n}`", str(t), *[f"{d[T]:.2g}" if T in d else "" for T in Ts]])
    return (["### Scan accuracy", "",
             "fp32 scan against an fp64 sequential scan of the same inputs: max |h - h64| / max |h64| "
             "(`bench_accuracy`, counter `rel_error`); `a:500` is a ~ U(0.5, 1), `a:990` a ~ U(0.99, 1).", ""]
            + _md_table(["benchmark", "threads", *[f"T:{T}" for T in Ts]], out) + [""])


def table_backends(run):
    """bench_backends: GFLOP/s of each matrix-product backend at each shape and thread count."""
    rows = {}
    for (name, th), r in run.res.ours.items():
        m = re.match(r"BM_Product(\w+)/(M:\d+/K:\d+/N:\d+)", name)
        if m and "FLOPS" in r["counters"]:
            rows.setdefault((m.group(2), th), {})[m.group(1)] = r["counters"]["FLOPS"] / 1e9
    if not rows:
        return []
    order = ["Eigen", "Packed", "OpenBLAS", "BLIS", "Libxsmm"]
    backends = [b for b in order if any(b in d for d in rows.values())]
    body = [[f"`{shape}`", str(th), *[f"{d[b]:.0f}" if b in d else "" for b in backends]]
            for (shape, th), d in sorted(rows.items(), key=lambda kv: (kv[0][1], compare._natural(kv[0][0])))]
    return (["### Matrix-product backends", "",
             "GFLOP/s of y = x w^T, x (M, K), w (N, K) (`bench_backends`). Packed is the recurrent kernel's "
             "`gemm_packed` on one thread with w packed once; Libxsmm is one JIT kernel, on one thread.", ""]
            + _md_table(["shape", "threads", *backends], body) + [""])


def _ns_per_sample(row, samples=1):
    """A real-time benchmark's ns per sample: its time_per_sample counter (seconds), else the
    time per call over the samples of one call."""
    if row is None:
        return None
    if "time_per_sample" in row["counters"]:
        return row["counters"]["time_per_sample"] * 1e9
    return row["time_ms"] * 1e6 / samples


def table_realtime(run):
    """bench_realtime (and bench_rtneural_peer): ns per sample of one stream, one thread, per
    sample and per block, against the general API's step and RTNeural's compile-time models."""
    rows = {}
    for (name, th), r in run.res.ours.items():
        m = re.match(r"BM_(RTNeural_)?(GRU|LSTM|MinGRU|MinLSTM)_(Sample|Block|GeneralStep|WeightRead)/H:(\d+)(?:/T:(\d+))?$",
                     name)
        if not m or th != 1:
            continue
        peer, cell, what, H, T = m.group(1), m.group(2), m.group(3), int(m.group(4)), m.group(5)
        key = "rtneural" if peer else (f"block{T}" if what == "Block" else what.lower())
        rows.setdefault((cell, H), {})[key] = _ns_per_sample(r, int(T) if T else 1)
    if not rows:
        return []
    blocks = sorted({int(k[5:]) for d in rows.values() for k in d if k.startswith("block")})
    has_peer = any("rtneural" in d for d in rows.values())
    has_step = any("generalstep" in d for d in rows.values())
    has_read = any("weightread" in d for d in rows.values())

    def ns(v):
        return f"{v:.1f}" if v is not None else ""

    def ratio(a, b):
        return _x(a / b) if a is not None and b is not None else ""

    order = ["GRU", "LSTM", "MinGRU", "MinLSTM"]
    body = []
    for (cell, H), d in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        line = [KIND_LABEL[cell], str(H), ns(d.get("sample")), *[ns(d.get(f"block{T}")) for T in blocks],
                *([ns(d.get("generalstep"))] if has_step else []), ratio(d.get("sample"), d.get("block256"))]
        if has_read:
            line += [ns(d.get("weightread")), ratio(d.get("weightread"), d.get("sample"))]
        if has_peer:
            line += [ns(d.get("rtneural")), ratio(d.get("rtneural"), d.get("sample"))]
        body.append(line)
    header = ["cell", "H", "per sample", *[f"block of {T}" for T in blocks], *(["general `step`"] if has_step else []),
              "sample / block of 256"]
    if has_read:
        header += ["weights read", "read / sample"]
    if has_peer:
        header += ["RTNeural", "RTNeural / seqnn sample"]
    out = ["### Real-time inference, one stream, one thread", "",
           "ns per sample: the cell of hidden size H and a Linear(H -> 1) after it, input 1 "
           "(`bench_realtime`; RTNeural's compile-time Eigen models with the same weights in "
           "`bench_rtneural_peer`). " + ("\"general `step`\" is the Layer interface's step for B = 1. " if has_step else "")
           + ("\"weights read\" is one pass of loads over as many bytes as the sample's weights "
              "(`BM_<cell>_WeightRead`), the floor of a sample bound by reading them; \"read / sample\" is the "
              "share of that floor the sample reaches. " if has_read else "")
           + "Ratios above 1x: the second is faster.", ""]
    out += _md_table(header, body) + [""]
    amp = [(n, r) for (n, th), r in run.res.ours.items() if n.startswith("BM_AmpModel_RealTimeFactor") and th == 1]
    for n, r in sorted(amp):
        if "rtf" in r["counters"]:
            out.append(f"- `{n}`: real-time factor {r['counters']['rtf']:.4f} at 48 kHz "
                       f"({_ns_per_sample(r):.1f} ns per sample)")
    return out + ([""] if amp else [])


def _time(ms):
    """A time given in ms, in the unit that keeps it readable: 38.1 ns, 2.35 us, 12.3 ms."""
    for scale, unit in ((1.0, "ms"), (1e-3, "us"), (1e-6, "ns")):
        if ms >= scale or unit == "ns":
            return f"{compare._ms(ms / scale)} {unit}"


def table_all(run, rows, title, note):
    if not rows:
        return []
    threads = sorted({t for (_, t) in rows})
    names = sorted({n for (n, _) in rows}, key=compare._natural)
    body = [[f"`{n}`", *[_time(rows[(n, t)]["time_ms"]) if (n, t) in rows else "" for t in threads]] for n in names]
    return [f"### {title}", "", note, ""] + _md_table(["benchmark", *[_thr(t) for t in threads]], body) + [""]


def run_section(run):
    out = [f"## {run.title()}", ""]
    out.append(f"- Data: [`report/{run.label}`](report/{run.label}) ({len(run.res.ours)} seqnn rows, "
               f"{len(run.res.peer)} PyTorch rows)")
    out.append(f"- Machine: {run.machine}" + (f"; {'; '.join(run.details)}" if run.details else ""))
    out.append(f"- Command: `{run.invocation}`" if run.invocation else "- Command: see each file's command below")
    out.append("")
    if run.commands:
        out += ["<details><summary>The command of each file of the run</summary>", ""]
        out += [f"- `{src}`: `{cmd}`" for src, cmd in sorted(run.commands.items())]
        out += ["", "</details>", ""]
    for part in (table_serial_vs_parallel(run), table_ratios(run), table_scaling(run), table_ceilings(run),
                 table_accuracy(run), table_backends(run), table_realtime(run),
                 table_all(run, run.res.ours, "Every seqnn result",
                           "Time per call (median of the repetitions), by thread count."),
                 table_all(run, run.res.peer, "Every PyTorch result", "Time per call, by thread count.")):
        out += part
    return out


def results_md(runs):
    out = ["# Results", "",
           "Written by `python3 bench/report.py tables` from the JSON measurements in [`docs/report/`](report/); "
           "not edited by hand. The test `docs.results_are_generated` checks that this file is what the script "
           "writes from the committed JSON. Each section is one run, with its machine, date and command; "
           "how to measure and add one: [bench/README.md](../bench/README.md#results-from-data).", "",
           "Times are ms per call: seqnn's the median of the repetitions, PyTorch's the median call. "
           "\"PyTorch / seqnn\" is PyTorch's time over seqnn's: above 1x seqnn is faster.", ""]
    out += [f"- [{r.title()}](#{_anchor(r.title())}): `report/{r.label}`" for r in runs] + [""]
    for r in runs:
        out += run_section(r)
    return "\n".join(out).rstrip("\n") + "\n"


def _anchor(title):
    """GitHub's heading anchor."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _headline_pairs(run, names):
    """(name, threads) -> (seqnn ms, PyTorch ms, ratio) of `run` for the benchmarks in `names`."""
    return {(n, t): (s, p, x) for n, t, s, p, x in
            compare.ratio_rows(list(run.res.ours.values()), list(run.res.peer.values())) if n in names}


def _headline_table(columns, items):
    """A README table of `items` (name, label): for each column (run, pairs, threads), seqnn's
    ms and PyTorch / seqnn at that thread count, with the machine and command of each run."""
    header = ["benchmark (B:16, D:256, T:1024 unless noted)"]
    for _, _, t in columns:
        header += [f"seqnn ms, {_thr(t)}", f"PyTorch / seqnn, {_thr(t)}"]
    rows = []
    for name, label in items:
        if any((name, t) in by for _, by, t in columns):
            row = [label]
            for _, by, t in columns:
                s, _, x = by.get((name, t), (None, None, None))
                row += [compare._ms(s), _x(x)] if s is not None else ["", ""]
            rows.append(row)
    runs = list(dict.fromkeys(run for run, _, _ in columns))
    caption = []
    for run in runs:
        lead = "Machine:" if len(runs) == 1 else f"{_thr(next(t for r, _, t in columns if r is run)).capitalize()}: machine"
        command = f"`{run.invocation}`" if run.invocation else "see docs/results.md"
        caption += [f"{lead} {run.machine}. Date: {run.date}. Command: {command}. Data: `docs/report/{run.label}`.", ""]
    return caption + _md_table(header, rows)


def readme_table(runs):
    """The README's table: seqnn vs PyTorch at the headline shapes, from the run that has most of them."""
    names = dict(HEADLINE)
    best = max(runs, key=lambda r: (len(_headline_pairs(r, names)), r.date))
    by = _headline_pairs(best, names)
    if not by:
        return ["No run in docs/report/ has seqnn and PyTorch results at the headline shapes."]
    threads = sorted({t for _, t in by})
    return _headline_table([(best, by, t) for t in sorted({threads[0], threads[-1]})], HEADLINE)


README_CELLS_BEGIN = "<!-- sequential cells table: written by `python3 bench/report.py tables` from docs/report/; do not edit -->"
README_CELLS_END = "<!-- end of sequential cells table -->"
CELLS = [(n, label) for n, label in HEADLINE if n.startswith(("BM_GRU_", "BM_LSTM_"))]


def _rounds(run, names):
    """The fewest files (rounds) any of `names`' seqnn rows in `run` is the median of."""
    return min((r.get("files", 1) for (n, _), r in run.res.ours.items() if n in names), default=0)


def _cells_column(runs, names, one_thread):
    """The README's 1-thread column (one_thread) or many-thread column (at a run's most threads
    above 1) of the GRU and LSTM against PyTorch, as (run, pairs, threads): of the runs that have
    every row there, the newest by date, then the one of most rounds, then the later one; None
    when no run has them."""
    def at_threads(run):
        by = _headline_pairs(run, names)
        counts = sorted({t for _, t in by if (t == 1) == one_thread})
        if not counts:
            return None
        at = {key: v for key, v in by.items() if key[1] == counts[-1]}
        return (run, at, counts[-1]) if len(at) == len(names) else None

    complete = [c for c in map(at_threads, runs) if c]
    return max(complete, key=lambda c: (c[0].date, _rounds(c[0], names), c[0].stamp), default=None)


def readme_cells_table(runs):
    """The README's second table: GRU and LSTM against PyTorch, its 1-thread and its
    many-thread columns each from its own run (see _cells_column), so that a run of the cells
    alone, pinned at 1 thread or with both sides bound to cores at many, can fill each."""
    names = dict(CELLS)
    columns = [c for c in (_cells_column(runs, names, one) for one in (True, False)) if c]
    if not columns:
        return ["No run in docs/report/ has seqnn and PyTorch results for the sequential cells."]
    return _headline_table(columns, CELLS)


REALTIME_BEGIN = "<!-- realtime table: written by `python3 bench/report.py tables` from docs/report/; do not edit -->"
REALTIME_END = "<!-- end of realtime table -->"


def realtime_table(runs):
    """Every run's real-time table, newest first, each with its machine and command, for
    docs/realtime.md: the same benchmarks on different machines."""
    out = []
    for run in runs:
        lines = table_realtime(run)
        if lines:
            command = f"`{run.invocation}`" if run.invocation else "see docs/results.md"
            out += [f"#### {run.machine}", "",
                    f"Machine: {run.machine}. Date: {run.date}. Command: {command}. "
                    f"Data: `docs/report/{run.label}`.", ""] + lines[2:]
    return out or ["No real-time measurements in docs/report/ yet."]


DISTRIBUTED_BEGIN = "<!-- distributed tables: written by `python3 bench/report.py tables` from docs/report/; do not edit -->"
DISTRIBUTED_END = "<!-- end of distributed tables -->"
DISTRIBUTED_JSON = "distributed_char_lm.json"


def distributed_tables(root):
    """docs/distributed.md's measured throughput of ranks x threads on one machine, and the
    model for several machines that takes its one-rank step time and gradient bytes."""
    path = os.path.join(root, DISTRIBUTED_JSON)
    if not os.path.exists(path):
        return ["No data-parallel measurements in docs/report/ yet."]
    with open(path) as f:
        data = json.load(f)
    meta, rows = data["report"], sorted(data["rows"], key=lambda r: r["ranks"])
    out = [f"Machine: {meta['machine']}; {meta['machine_details']}. Date: {meta['date']}. "
           f"Data: `docs/report/{DISTRIBUTED_JSON}`.", "",
           f"{meta['caption']}. Command: `{meta['command']}`. {meta['timing'][0].upper()}{meta['timing'][1:]}.", ""]
    base = rows[0]
    body = [[f"{r['ranks']} x {r['threads']}", f"{r['tokens_per_s']:.0f}", _x(r["tokens_per_s"] / base["tokens_per_s"]),
             f"{r['train_s'] / r['steps']:.3f} s", f"{100 * r['mpi_s'] / r['train_s']:.1f}%",
             f"{r['gradient_mb']:.2f} MB", f"{r['train_loss']:.4f} / {r['val_loss']:.4f}"] for r in rows]
    out += _md_table(["ranks x threads", "tokens/s", "vs 1 rank", "s per step", "in MPI (rank 0)",
                      "gradients a step", "train / val loss at the end"], body) + [""]
    if "overlap" in data:
        ov = data["overlap"]
        out += [f"{ov['caption']}.", ""]
        out += _md_table(["ranks x threads", "overlap", "tokens/s, each run", "in MPI (rank 0), each run"],
                         [[f"{r['ranks']} x {r['threads']}", r["overlap"], ", ".join(f"{v:.0f}" for v in r["tokens_per_s"]),
                           ", ".join(f"{v:.1f}%" for v in r["mpi_pct"])] for r in ov["rows"]]) + [""]
    # The model: step(N) = t1 / N + 2 (N - 1) / N * bytes / bandwidth (a ring all-reduce).
    t1, mb = base["train_s"] / base["steps"], base["gradient_mb"]
    links = [10, 100]
    model = []
    for n in [1, 2, 4, 8, 16, 64]:
        cells = []
        for gbit in links:
            step = t1 / n + 2 * (n - 1) / n * mb * 8e6 / (gbit * 1e9)
            cells.append(f"{step:.3f} s, {t1 / step:.1f}x")
        model.append([str(n), *cells])
    out += [f"The model for N machines of this kind, each taking the {base['ranks']} x {base['threads']} run's "
            f"{t1:.3f} s a step for the whole batch, with a ring all-reduce of its {mb:.2f} MB of gradients "
            "that does not overlap the step: step(N) = step(1) / N + 2 (N - 1) / N x bytes / link bandwidth.", ""]
    out += _md_table(["machines N", *[f"{g} Gbit/s: step, speed-up" for g in links]], model) + [""]
    return out


def with_section(text, lines, path, begin, end):
    b, e = text.find(begin), text.find(end)
    if b < 0 or e < b:
        sys.exit(f"report.py: {path} has no table markers:\n  {begin}\n  {end}")
    return text[: b + len(begin)] + "\n" + "\n".join(lines).rstrip("\n") + "\n" + text[e:]


def readme_with_table(text, table_lines, path):
    b, e = text.find(README_BEGIN), text.find(README_END)
    if b < 0 or e < b:
        sys.exit(f"report.py: {path} has no results-table markers:\n  {README_BEGIN}\n  {README_END}")
    return text[: b + len(README_BEGIN)] + "\n" + "\n".join(table_lines) + "\n" + text[e:]


def cmd_tables(args):
    by_file, newest_first = find_runs(args.from_dir)
    md = results_md(newest_first)
    readme_text = None
    if args.readme:
        with open(args.readme) as f:
            readme_text = readme_with_table(f.read(), readme_table(newest_first), args.readme)
        readme_text = with_section(readme_text, readme_cells_table(newest_first), args.readme, README_CELLS_BEGIN,
                                   README_CELLS_END)
    realtime_text = None
    if args.realtime_doc:
        with open(args.realtime_doc) as f:
            realtime_text = with_section(f.read(), realtime_table(newest_first), args.realtime_doc,
                                         REALTIME_BEGIN, REALTIME_END)
    distributed_text = None
    if args.distributed_doc:
        with open(args.distributed_doc) as f:
            distributed_text = with_section(f.read(), distributed_tables(args.from_dir), args.distributed_doc,
                                            DISTRIBUTED_BEGIN, DISTRIBUTED_END)
    if args.check:
        import difflib
        import tempfile
        failed = False
        with tempfile.TemporaryDirectory() as tmp:
            for target, text in ((args.out, md), (args.readme, readme_text), (args.realtime_doc, realtime_text),
                                 (args.distributed_doc, distributed_text)):
                if target is None:
                    continue
                fresh = os.path.join(tmp, os.path.basename(target))
                with open(fresh, "w") as f:
                    f.write(text)
                with open(fresh, "rb") as f:
                    new = f.read()
                try:
                    with open(target, "rb") as f:
                        old = f.read()
                except OSError:
                    old = b""
                if new != old:
                    failed = True
                    print(f"report.py: {target} is not what `python3 bench/report.py tables` writes from "
                          f"{args.from_dir}; run it and commit the result. Diff (committed -> generated):")
                    sys.stdout.writelines(difflib.unified_diff(old.decode().splitlines(True), new.decode().splitlines(True),
                                                               target, fresh, n=1))
                else:
                    print(f"report.py: {target} is as generated ({len(new)} bytes)")
        sys.exit(1 if failed else 0)
    with open(args.out, "w") as f:
        f.write(md)
    print(f"report.py: {len(by_file)} run(s) -> {args.out}")
    if readme_text is not None:
        with open(args.readme, "w") as f:
            f.write(readme_text)
        print(f"report.py: results table -> {args.readme}")
    if realtime_text is not None:
        with open(args.realtime_doc, "w") as f:
            f.write(realtime_text)
        print(f"report.py: real-time table -> {args.realtime_doc}")
    if distributed_text is not None:
        with open(args.distributed_doc, "w") as f:
            f.write(distributed_text)
        print(f"report.py: data-parallel tables -> {args.distributed_doc}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    m = sub.add_parser("merge", help="raw JSONs of one machine -> one bundle")
    m.add_argument("rawdir")
    m.add_argument("--out", required=True)
    d = sub.add_parser("draw", help="figures and their data from JSON folders")
    d.add_argument("--from", dest="from_dirs", action="append", required=True, help="folder of JSON files")
    d.add_argument("--out", default="docs/report")
    d.add_argument("--dpi", type=int, default=110)
    t = sub.add_parser("tables", help="docs/results.md, the README's results table and docs/realtime.md's "
                                      "table from docs/report/ (default)")
    add_tables_arguments(t)
    argv = sys.argv[1:]
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["tables"] + argv
    args = p.parse_args(argv)
    {"merge": cmd_merge, "draw": cmd_draw, "tables": cmd_tables}[args.cmd](args)


def add_tables_arguments(t):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t.add_argument("--from", dest="from_dir", default=os.path.join(root, "docs", "report"),
                   help="folder of JSON runs (docs/report)")
    t.add_argument("--out", default=os.path.join(root, "docs", "results.md"), help="docs/results.md")
    t.add_argument("--readme", default=os.path.join(root, "README.md"),
                   help="the README whose results table to write (README.md); '' for none")
    t.add_argument("--realtime-doc", default=os.path.join(root, "docs", "realtime.md"),
                   help="the real-time doc whose table to write (docs/realtime.md); '' for none")
    t.add_argument("--distributed-doc", default=os.path.join(root, "docs", "distributed.md"),
                   help="the data-parallel doc whose tables to write (docs/distributed.md); '' for none")
    t.add_argument("--check", action="store_true",
                   help="write into a temporary folder and compare with --out and --readme byte for byte")


if __name__ == "__main__":
    main()
