#!/usr/bin/env python3
"""Prints seqnn/PyTorch time ratios from Google Benchmark JSON and pytorch_peer.py JSON.

  python3 bench/compare.py seqnn.json peer.json
  python3 bench/compare.py --markdown seqnn_t1.json seqnn_t16.json peer_t1.json peer_t16.json
  python3 bench/compare.py docs/report/ratios.json        # a file that holds both

Each file is recognised by its content: a Google Benchmark output (--benchmark_out), a
pytorch_peer.py list, or a bundle written by bench/report.py (seqnn rows and peer rows).
Benchmarks are matched by name and thread count (seqnn's `threads` counter, the
OMP_NUM_THREADS of the run; PyTorch's --threads). Of repeated runs the median aggregate
is used. 'speedup' is PyTorch time / seqnn time: above 1 means seqnn is faster.
"""
import argparse
import json
import os
import re
import sys

_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def _load_json(path):
    """Reads a JSON file; a Google Benchmark output cut short (a run that was killed) is
    closed after its last complete benchmark."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        cut = text.rfind("\n    }")
        if '"benchmarks"' not in text or cut < 0:
            raise
        return json.loads(text[: cut + len("\n    }")] + "\n  ]\n}")


def _threads_from_name(name):
    m = re.search(r"/threads:(\d+)", name)
    return int(m.group(1)) if m else None


def normalise_gbench(data, source=""):
    """Google Benchmark rows -> [{"impl", "name", "threads", "time_ms", "counters", "source"}].
    Keeps plain runs and median aggregates (when a benchmark has a median, only that)."""
    rows = []
    for b in data.get("benchmarks", []):
        if "time_ms" in b:  # already normalised (a bundle written by report.py)
            rows.append(b)
            continue
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        if b.get("error_occurred"):
            continue
        name = b.get("run_name", b["name"]).replace("/real_time", "")
        # In the JSON our `threads` counter follows Google Benchmark's own "threads" (1),
        # so json.load keeps ours: seqnn::num_threads() during the run.
        threads = _threads_from_name(name) or int(b.get("threads", 1))
        skip = {"name", "run_name", "family_index", "per_family_instance_index", "run_type", "repetitions",
                "repetition_index", "threads", "iterations", "real_time", "cpu_time", "time_unit",
                "aggregate_name", "aggregate_unit"}
        counters = {k: v for k, v in b.items() if k not in skip and isinstance(v, (int, float))}
        rows.append({
            "impl": "seqnn",
            "name": name,
            "threads": threads,
            "time_ms": b["real_time"] * _UNIT_MS[b["time_unit"]],
            "counters": counters,
            "stat": b.get("aggregate_name", "single") if b.get("run_type") == "aggregate" else "single",
            "source": source,
        })
    # A benchmark with a median: drop its single runs (--benchmark_report_aggregates_only=false).
    medians = {(r["name"], r["threads"]) for r in rows if r.get("stat") == "median"}
    return [r for r in rows if r.get("stat") == "median" or (r["name"], r["threads"]) not in medians]


def normalise_peer(data, source=""):
    return [{
        "impl": "pytorch",
        "name": p["name"],
        "threads": int(p.get("threads", 0)),
        "time_ms": p["real_time_ms"] if "real_time_ms" in p else p["time_ms"],
        "torch": p.get("torch", ""),
        "source": p.get("source", source),
    } for p in data]


def _median_row(rows):
    """Of several measurements of one benchmark (rounds of a run, one per file): the median
    one by time, the lower of the two middle ones for an even count, marked with the count."""
    if len(rows) == 1:
        return rows[0]
    pick = dict(sorted(rows, key=lambda r: r["time_ms"])[(len(rows) - 1) // 2])
    pick["stat"] = f"median of {len(rows)} files"
    pick["files"] = len(rows)
    return pick


def load(paths):
    """Reads files of any of the three kinds; returns (seqnn rows, pytorch rows, metadata).
    A (name, threads) found in several files (rounds of one run) keeps its median."""
    ours, peer, meta = {}, {}, {}
    for path in paths:
        data = _load_json(path)
        source = os.path.basename(path)
        if isinstance(data, list):
            rows_ours, rows_peer = [], normalise_peer(data, source)
        else:
            rows_ours = normalise_gbench(data, source)
            rows_peer = normalise_peer(data.get("peer", []), source)
            if "report" in data:
                for k, v in data["report"].items():
                    if isinstance(v, dict):
                        meta.setdefault(k, {}).update(v)
                    else:
                        meta.setdefault(k, v)
            if "context" in data:
                meta.setdefault("contexts", {})[source] = data["context"]
        for r in rows_ours:
            ours.setdefault((r["name"], r["threads"]), []).append(r)
        for r in rows_peer:
            peer.setdefault((r["name"], r["threads"]), []).append(r)
    return [_median_row(v) for v in ours.values()], [_median_row(v) for v in peer.values()], meta


def ratio_rows(ours, peer, name_filter=""):
    """[(name, threads, seqnn ms, torch ms, speedup)] for every benchmark both have."""
    by_key = {(r["name"], r["threads"]): r for r in ours}
    out = []
    for p in peer:
        r = by_key.get((p["name"], p["threads"]))
        if r is None or not re.search(name_filter, p["name"]):
            continue
        out.append((p["name"], p["threads"], r["time_ms"], p["time_ms"], p["time_ms"] / r["time_ms"]))
    return sorted(out, key=lambda x: (x[1], _natural(x[0])))


def _natural(name):
    """Sort key that orders T:64 before T:256."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _ms(v):
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def format_table(rows, markdown=False):
    lines = []
    if markdown:
        lines.append("| benchmark | threads | seqnn ms | PyTorch ms | PyTorch / seqnn |")
        lines.append("|---|---|---|---|---|")
        for name, th, s, t, x in rows:
            lines.append(f"| `{name}` | {th} | {_ms(s)} | {_ms(t)} | {x:.2f}x |")
    else:
        lines.append(f"{'benchmark':44s} {'threads':>7s} {'seqnn ms':>10s} {'torch ms':>10s} {'speedup':>8s}")
        for name, th, s, t, x in rows:
            lines.append(f"{name:44s} {th:7d} {s:10.3f} {t:10.3f} {x:7.2f}x")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="Google Benchmark, pytorch_peer.py or report.py JSON files")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--filter", default="", help="regex on benchmark names")
    args = p.parse_args()
    ours, peer, _ = load(args.files)
    if not ours or not peer:
        sys.exit("compare.py: need seqnn (Google Benchmark) results and PyTorch (pytorch_peer.py) results")
    rows = ratio_rows(ours, peer, args.filter)
    if not rows:
        sys.exit("compare.py: no benchmark appears in both, with the same name and thread count")
    print(format_table(rows, args.markdown))


if __name__ == "__main__":
    main()
