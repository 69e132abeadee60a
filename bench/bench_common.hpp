// Shared helpers for seqnn's benchmarks: random inputs and the counters every
// benchmark reports (items_per_second, a FLOPS rate, bytes_per_second).
#pragma once

#include <seqnn/seqnn.hpp>

#include <benchmark/benchmark.h>

#include <random>

namespace seqnn::bench {

inline Matrix<float> random_matrix(Index rows, Index cols, std::uint64_t seed = 1, float scale = 1.0f) {
    Rng rng(seed);
    std::uniform_real_distribution<float> dist(-scale, scale);
    Matrix<float> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = dist(rng);
    return m;
}

inline Sequence<float> random_sequence(Index B, Index T, Index D, std::uint64_t seed = 1) {
    return Sequence<float>(random_matrix(B * T, D, seed), B, T);
}

// items = time steps x batch; flops and bytes are per iteration.
inline void set_counters(benchmark::State& state, double items, double flops, double bytes) {
    const auto iters = static_cast<double>(state.iterations());
    state.SetItemsProcessed(static_cast<int64_t>(items * iters));
    state.SetBytesProcessed(static_cast<int64_t>(bytes * iters));
    state.counters["FLOPS"] = benchmark::Counter(flops * iters, benchmark::Counter::kIsRate);
    state.counters["threads"] = static_cast<double>(num_threads());
}

// One untimed call before the timed loop (as bench/pytorch_peer.py makes): the timed calls
// then run as the calls of a long run do, on buffers and pages already there.
template <typename Call>
void untimed_first_call(const Call& call) {
    call();
}

}  // namespace seqnn::bench
