#!/usr/bin/env python3
"""Prints seqnn/PyTorch time ratios from a Google Benchmark JSON and a pytorch_peer.py JSON.

  python3 bench/compare.py seqnn.json peer.json

A ratio below 1 means seqnn is faster; 'speedup' is PyTorch time / seqnn time.
"""
import json
import sys


def seqnn_times(path):
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        # Plain runs, or the median of repetitions (--benchmark_repetitions).
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"]).replace("/real_time", "")
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
        out[name] = b["real_time"] * scale
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ours = seqnn_times(sys.argv[1])
    with open(sys.argv[2]) as f:
        peer = json.load(f)
    print(f"{'benchmark':40s} {'seqnn ms':>10s} {'torch ms':>10s} {'speedup':>8s}")
    for p in peer:
        name = p["name"]
        if name in ours:
            print(f"{name:40s} {ours[name]:10.3f} {p['real_time_ms']:10.3f} {p['real_time_ms'] / ours[name]:7.1f}x")


if __name__ == "__main__":
    main()
