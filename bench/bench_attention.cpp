// Attention and Transformer blocks: the tiled attention kernel (kernels/attention.hpp)
// forward and forward + backward, a whole pre-norm Transformer block forward and
// training, and one KV-cache decoding step.
//
// FLOPs count the useful math only: attention's two GEMMs are 4 * Dh flops per visible
// (query, key) pair, T(T+1)/2 pairs per head with the causal mask
// (what FlashAttention's papers count); backward is 2.5x forward (5 GEMMs to 2), so training
// is 3.5x. The block adds 24 E^2 flops per token forward (QKV 6E^2, out 2E^2, MLP 16E^2),
// 3x that for training.
#include "bench_common.hpp"

#include <seqnn/kernels/attention.hpp>
#include <seqnn/models/transformer_block.hpp>

namespace {

using namespace seqnn;

double causal_pairs(Index T) { return double(T) * double(T + 1) / 2.0; }

double attention_flops(Index B, Index T, Index H, Index Dh) { return 4.0 * double(B * H * Dh) * causal_pairs(T); }

// q, k, v read, out written.
double attention_bytes(Index B, Index T, Index H, Index Dh) { return 4.0 * 4.0 * double(B * T * H * Dh); }

void BM_Attention_Forward(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), H = state.range(2), Dh = state.range(3), E = H * Dh;
    const AttentionShape s{.batch = B, .heads = H, .head_dim = Dh, .q_steps = T, .kv_steps = T};
    const Matrix<float> q = bench::random_matrix(B * T, E, 1), k = bench::random_matrix(B * T, E, 2),
                        v = bench::random_matrix(B * T, E, 3);
    Matrix<float> out(B * T, E);
    for (auto _ : state) {
        attention_forward<float>(s, {}, q, k, v, out);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    bench::set_counters(state, double(B * T), attention_flops(B, T, H, Dh), attention_bytes(B, T, H, Dh));
}

void BM_Attention_Train(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), H = state.range(2), Dh = state.range(3), E = H * Dh;
    const AttentionShape s{.batch = B, .heads = H, .head_dim = Dh, .q_steps = T, .kv_steps = T};
    const Matrix<float> q = bench::random_matrix(B * T, E, 1), k = bench::random_matrix(B * T, E, 2),
                        v = bench::random_matrix(B * T, E, 3), dout = bench::random_matrix(B * T, E, 4);
    Matrix<float> out(B * T, E), lse(B * T, H), dq(B * T, E), dk(B * T, E), dv(B * T, E);
    for (auto _ : state) {
        attention_forward<float>(s, {}, q, k, v, out, &lse);
        attention_backward<float>(s, {}, q, k, v, out, lse, dout, dq, dk, dv);
        benchmark::DoNotOptimize(dq.data());
        benchmark::ClobberMemory();
    }
    bench::set_counters(state, double(B * T), 3.5 * attention_flops(B, T, H, Dh), 2.5 * attention_bytes(B, T, H, Dh));
}

void attention_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "H", "Dh"});
    for (int T : {256, 1024, 4096, 16384}) b->Args({1, T, 8, 64});
    b->Args({16, 1024, 8, 32});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_Attention_Forward)->Apply(attention_shapes);
BENCHMARK(BM_Attention_Train)->Apply(attention_shapes);

// ---- the Transformer block: 8 heads, MLP width 4D, causal ----

TransformerBlock<float> make_block(Index D, Index max_cache) {
    Rng rng(7);
    return TransformerBlock<float>({.d_model = D, .num_heads = 8, .dim_feedforward = 4 * D, .max_cache_length = max_cache},
                                   rng);
}

// Projections and MLP: 2 * (3 + 1 + 4 + 4) D^2 = 24 D^2 flops per token, plus attention.
double block_flops(Index B, Index T, Index D) {
    return 24.0 * double(B * T) * double(D * D) + attention_flops(B, T, 8, D / 8);
}
double block_train_flops(Index B, Index T, Index D) {
    return 3.0 * 24.0 * double(B * T) * double(D * D) + 3.5 * attention_flops(B, T, 8, D / 8);
}
// Weights once, and the activations a forward writes: x, two norms, qkv, attention, h
// (8D) plus the MLP's pre-activation and GELU (2 x 4D), 4 bytes each.
double block_bytes(Index B, Index T, Index D) {
    return 4.0 * (12.0 * double(D * D) + double(B * T) * 16.0 * double(D));
}

void BM_Transformer_Forward(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    const TransformerBlock<float> block = make_block(D, 1);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    bench::untimed_first_call([&] { benchmark::DoNotOptimize(block.forward(x).data.data()); });
    for (auto _ : state) benchmark::DoNotOptimize(block.forward(x).data.data());
    bench::set_counters(state, double(B * T), block_flops(B, T, D), block_bytes(B, T, D));
}

void BM_Transformer_Train(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    TransformerBlock<float> block = make_block(D, 1);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    const Sequence<float> dy = bench::random_sequence(B, T, D, 2);
    Context<float> ctx;  // reused, as a training loop does: its buffers are not allocated again
    const auto train_step = [&] {
        benchmark::DoNotOptimize(block.forward(x, nullptr, &ctx).data.data());
        benchmark::DoNotOptimize(block.backward(dy, ctx).data.data());
    };
    bench::untimed_first_call(train_step);
    for (auto _ : state) train_step();
    bench::set_counters(state, double(B * T), block_train_flops(B, T, D), 3.0 * block_bytes(B, T, D));
}

void block_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "D"});
    for (int T : {64, 256, 1024, 4096}) b->Args({16, T, 256});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_Transformer_Forward)->Apply(block_shapes);
BENCHMARK(BM_Transformer_Train)->Apply(block_shapes);

// The block's forward one piece at a time, at the block's own shapes and buffers, so that
// the parts' times add up to (nearly) BM_Transformer_Forward's and show where it goes:
// part 0 norm1, 1 in_proj, 2 attention, 3 out_proj, 4 residual add, 5 norm2, 6 linear1,
// 7 GELU, 8 linear2, 9 the output's allocation (zeroed, as Sequence makes it).
enum TransformerPart : int { kNorm1, kInProj, kAttention, kOutProj, kResidual, kNorm2, kLinear1, kGelu, kLinear2, kOutput };

void BM_TransformerPart(benchmark::State& state) {
    const auto part = static_cast<TransformerPart>(state.range(0));
    const Index B = state.range(1), T = state.range(2), E = state.range(3), N = B * T;
    TransformerBlock<float> block = make_block(E, 1);
    const Index H = block.num_heads(), Dh = block.head_dim(), F = block.dim_feedforward();
    const Matrix<float> x = bench::random_matrix(N, E, 1), ln = bench::random_matrix(N, E, 2);
    const Matrix<float> qkv = bench::random_matrix(N, 3 * E, 3), hidden = bench::random_matrix(N, F, 4);
    Matrix<float> out_e(N, E), out_3e(N, 3 * E), out_f(N, F), gelu_in = hidden;
    const AttentionShape shape{.batch = B, .heads = H, .head_dim = Dh, .q_steps = T, .kv_steps = T, .kv_capacity = T,
                               .q_offset = 0};
    double flops = 0, bytes = 4.0 * double(N * E) * 2.0;  // rows read and written
    for (auto _ : state) {
        switch (part) {
            case kNorm1: block.norm1().forward(x, out_e); break;
            case kInProj: block.in_proj().forward(ln, out_3e); break;
            case kAttention:
                attention_forward<float>(shape, {.causal = true}, qkv.leftCols(E), qkv.middleCols(E, E),
                                         qkv.rightCols(E), out_e, nullptr);
                break;
            case kOutProj: block.out_proj().forward(ln, out_e); break;
            case kResidual: parallel_add<float>(out_e, x); break;
            case kNorm2: block.norm2().forward(x, out_e); break;
            case kLinear1: block.linear1().forward(ln, out_f); break;
            case kGelu:
                state.PauseTiming();
                parallel_copy<float>(gelu_in, hidden);  // GELU runs in place
                state.ResumeTiming();
                activation_forward<float>(Activation::GELU, gelu_in);
                break;
            case kLinear2: block.linear2().forward(hidden, out_e); break;
            case kOutput: benchmark::DoNotOptimize(Sequence<float>(B, T, E).data.data()); break;
        }
        benchmark::ClobberMemory();
    }
    switch (part) {
        case kInProj: flops = 6.0 * double(N * E * E); break;
        case kAttention: flops = attention_flops(B, T, H, Dh); break;
        case kOutProj: flops = 2.0 * double(N * E * E); break;
        case kLinear1: case kLinear2: flops = 8.0 * double(N * E * E); bytes = 4.0 * double(N * (E + F)); break;
        case kGelu: bytes = 4.0 * double(N * F) * 2.0; break;
        default: break;
    }
    bench::set_counters(state, double(N), flops, bytes);
}
BENCHMARK(BM_TransformerPart)
    ->ArgNames({"part", "B", "T", "D"})
    ->ArgsProduct({benchmark::CreateDenseRange(kNorm1, kOutput, 1), {16}, {1024}, {256}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// One decoding step for one stream with T positions already in the KV cache: the cache is
// filled by a forward of T positions, and each iteration writes position T again.
void BM_Transformer_Step(benchmark::State& state) {
    const Index T = state.range(0), D = state.range(1);
    const TransformerBlock<float> block = make_block(D, T + 1);
    State<float> s;
    block.forward(bench::random_sequence(1, T, D), &s);
    const Matrix<float> x = bench::random_matrix(1, D, 3);
    Matrix<float> y(1, D);
    block.step(x, s, y);  // makes the workspace
    State<float>& cache = TransformerBlock<float>::kv_cache(s);
    for (auto _ : state) {
        cache.position = T;  // rewind the cache: position T is written again
        block.step(x, s, y);
        benchmark::DoNotOptimize(y.data());
    }
    const double flops = 24.0 * double(D * D) + 4.0 * double(T + 1) * double(D);
    const double bytes = 4.0 * (12.0 * double(D * D) + 2.0 * double(T + 1) * double(D));  // weights, K and V
    bench::set_counters(state, 1.0, flops, bytes);
}
BENCHMARK(BM_Transformer_Step)->ArgNames({"T", "D"})->Args({256, 256})->Args({1024, 256})->Args({4096, 256})->UseRealTime();

}  // namespace
