#!/usr/bin/env python3
"""PyTorch peers of seqnn's benchmarks, at the same shapes and thread count.

Times nn.RNN / nn.GRU / nn.LSTM and the paper's minGRU / minLSTM formulation
(lucidrains/minGRU-pytorch: one Linear for hidden and gates, positive g,
log-space Heinsen scan with cumsum and logcumsumexp), forward (no grad) and
training (forward + backward of a scalar loss), in float32 on the CPU.

  python3 bench/pytorch_peer.py --threads 2 --out peer.json [--filter MinGRU] [--quick]

Writes a JSON list of {"name", "real_time_ms", "threads", "torch"} whose names
match the Google Benchmark names of bench_recurrent / bench_min_rnn, so
bench/compare.py can print seqnn/PyTorch ratios.
"""
import argparse
import json
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def heinsen_scan_log(log_coeffs, log_values):
    # log h_t = a*_t + logcumsumexp(log b - a*)_t, a* = cumsum(log a)  (Heinsen 2023)
    a_star = log_coeffs.cumsum(dim=1)
    log_h = a_star + (log_values - a_star).logcumsumexp(dim=1)
    return log_h.exp()


def log_g(x):
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


class MinGRU(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.to_hidden_and_gate = nn.Linear(dim, 2 * dim, bias=False)

    def forward(self, x):
        hidden, gate = self.to_hidden_and_gate(x).chunk(2, dim=-1)
        log_coeffs = -F.softplus(gate)
        log_values = -F.softplus(-gate) + log_g(hidden)
        return heinsen_scan_log(log_coeffs, log_values)


class MinLSTM(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.to_hidden_and_f_i_gate = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x):
        hidden, f_gate, i_gate = self.to_hidden_and_f_i_gate(x).chunk(3, dim=-1)
        diff = F.softplus(-f_gate) - F.softplus(-i_gate)
        log_f = -F.softplus(diff)
        log_i = -F.softplus(-diff)
        return heinsen_scan_log(log_f, log_i + log_g(hidden))


def make(kind, dim):
    if kind == "MinGRU":
        return MinGRU(dim)
    if kind == "MinLSTM":
        return MinLSTM(dim)
    cls = {"GRU": nn.GRU, "LSTM": nn.LSTM, "RNN": nn.RNN}[kind]
    return cls(dim, dim, batch_first=True)


def run(module, x, train):
    if train:
        y = module(x)
        y = y[0] if isinstance(y, tuple) else y
        y.sum().backward()
    else:
        with torch.no_grad():
            module(x)


def time_it(fn, min_time):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start >= min_time and len(times) >= 1:
            break
    times.sort()
    return 1e3 * times[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=None, help="JSON file to write")
    p.add_argument("--filter", default="", help="regex on benchmark names")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per benchmark")
    p.add_argument("--quick", action="store_true", help="skip the B:1/T:65536 shapes")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    shapes = [(16, t, 256) for t in (64, 256, 1024, 4096)]
    if not args.quick:
        shapes.append((1, 65536, 256))
    results = []
    for kind in ("MinGRU", "MinLSTM", "GRU", "LSTM", "RNN"):
        for mode in ("Forward", "Train"):
            for B, T, D in shapes:
                name = f"BM_{kind}_{mode}/B:{B}/T:{T}/D:{D}"
                if not re.search(args.filter, name):
                    continue
                module = make(kind, D)
                x = torch.randn(B, T, D, requires_grad=(mode == "Train"))
                ms = time_it(lambda: run(module, x, mode == "Train"), args.min_time)
                results.append({"name": name, "real_time_ms": ms, "threads": args.threads, "torch": torch.__version__})
                print(f"{name:40s} {ms:12.3f} ms  (torch {torch.__version__}, {args.threads} threads)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
