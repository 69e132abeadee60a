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

Also the peers of bench_attention: BM_Attention_{Forward,Train} (causal
F.scaled_dot_product_attention when torch has it, else the manual softmax),
BM_Transformer_{Forward,Train} (nn.TransformerEncoderLayer(norm_first=True,
batch_first=True, activation="gelu", dropout=0) with a causal mask, 8 heads, MLP
width 4D) and BM_Transformer_Step (one decoding step of that layer's weights
against a preallocated KV cache of T positions: PyTorch's layer has no cache).
"""
import argparse
import inspect
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
    # Forward peers run as users run inference: eval() under torch.inference_mode().
    if train:
        module.train()
        y = module(x)
        y = y[0] if isinstance(y, tuple) else y
        y.sum().backward()
    else:
        module.eval()
        with torch.inference_mode():
            module(x)


def causal_attention(q, k, v):
    # q, k, v: (B, H, T, Dh)
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(dim=-1) @ v


def make_block(D):
    return nn.TransformerEncoderLayer(D, 8, 4 * D, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)


def run_block(layer, x, mask, train):
    # is_causal (a hint that src_mask is causal) came with torch 2.0; 1.13 takes the mask alone.
    kw = {"is_causal": True} if "is_causal" in inspect.signature(layer.forward).parameters else {}
    if train:
        layer(x, src_mask=mask, **kw).sum().backward()
    else:
        layer.eval()
        with torch.inference_mode():
            layer(x, src_mask=mask, **kw)


def block_step(layer, x, k_cache, v_cache, pos):
    # One position through the layer's weights, appending k, v at `pos` of the caches (1, H, L, Dh).
    with torch.no_grad():
        H = layer.self_attn.num_heads
        D = x.shape[-1]
        q, k, v = F.linear(layer.norm1(x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).split(D, -1)
        k_cache[:, :, pos] = k.view(1, H, D // H)
        v_cache[:, :, pos] = v.view(1, H, D // H)
        q = q.view(1, H, 1, D // H)
        a = F.scaled_dot_product_attention(q, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1])
        h = x + layer.self_attn.out_proj(a.reshape(1, D))
        return h + layer.linear2(F.gelu(layer.linear1(layer.norm2(h))))


def attention_peers(args, results):
    def record(name, ms):
        results.append({"name": name, "real_time_ms": ms, "threads": args.threads, "torch": torch.__version__})
        print(f"{name:40s} {ms:12.3f} ms  (torch {torch.__version__}, {args.threads} threads)", flush=True)

    attn_shapes = [(1, t, 8, 64) for t in (256, 1024, 4096, 16384)] + [(16, 1024, 8, 32)]
    if args.quick:
        attn_shapes = [s for s in attn_shapes if s[1] != 16384]
    for mode in ("Forward", "Train"):
        for B, T, H, Dh in attn_shapes:
            name = f"BM_Attention_{mode}/B:{B}/T:{T}/H:{H}/Dh:{Dh}"
            if not re.search(args.filter, name):
                continue
            q, k, v = (torch.randn(B, H, T, Dh, requires_grad=(mode == "Train")) for _ in range(3))
            if mode == "Train":
                fn = lambda: causal_attention(q, k, v).sum().backward()
            else:
                def fn():
                    with torch.no_grad():
                        causal_attention(q, k, v)
            record(name, time_it(fn, args.min_time))
    for mode in ("Forward", "Train"):
        for B, T, D in [(16, t, 256) for t in (64, 256, 1024, 4096)]:
            name = f"BM_Transformer_{mode}/B:{B}/T:{T}/D:{D}"
            if not re.search(args.filter, name):
                continue
            layer = make_block(D)
            mask = nn.Transformer.generate_square_subsequent_mask(T)
            x = torch.randn(B, T, D, requires_grad=(mode == "Train"))
            record(name, time_it(lambda: run_block(layer, x, mask, mode == "Train"), args.min_time))
    for T, D in [(256, 256), (1024, 256), (4096, 256)]:
        name = f"BM_Transformer_Step/T:{T}/D:{D}"
        if not re.search(args.filter, name) or not hasattr(F, "scaled_dot_product_attention"):
            continue
        layer = make_block(D).eval()
        k_cache = torch.randn(1, 8, T + 1, D // 8)
        v_cache = torch.randn(1, 8, T + 1, D // 8)
        x = torch.randn(1, D)
        record(name, time_it(lambda: block_step(layer, x, k_cache, v_cache, T), args.min_time))


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
    p.add_argument("--quick", action="store_true", help="skip the B:1/T:65536 and attention T:16384 shapes")
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
    attention_peers(args, results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
