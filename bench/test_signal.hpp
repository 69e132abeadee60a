// The input of the real-time benchmarks (bench_realtime.cpp, bench_realtime_fixed.cpp and
// the RTNeural peer, bench_rtneural_peer.cpp), one signal for all so that they time the same
// work, the loops that feed it to a model sample by sample or block by block, and their
// per-sample counters.
#pragma once

#include "bench_common.hpp"

#include <benchmark/benchmark.h>
#include <seqnn/core/types.hpp>

#include <cmath>
#include <cstddef>
#include <numbers>
#include <random>
#include <vector>

namespace seqnn::bench {

inline constexpr double kSampleRate = 48000.0;           // Hz, for the real-time factor
inline constexpr seqnn::Index kSignalLength = 1 << 14;  // the input signal cycles through this many samples

// A guitar-like test signal in [-1, 1]: two decaying partials and a little noise, so that
// the state keeps moving (a constant input would let it settle).
inline const std::vector<float>& test_signal() {
    static const std::vector<float> signal = [] {
        std::vector<float> x(static_cast<std::size_t>(kSignalLength));
        seqnn::Rng rng(3);
        std::uniform_real_distribution<float> noise(-0.05f, 0.05f);
        for (seqnn::Index t = 0; t < kSignalLength; ++t) {
            const double s = static_cast<double>(t) / kSampleRate;
            const double envelope = std::exp(-3.0 * static_cast<double>(t % 4096) / 4096.0);
            x[static_cast<std::size_t>(t)] = static_cast<float>(
                envelope * (0.6 * std::sin(2 * std::numbers::pi * 110.0 * s) + 0.3 * std::sin(2 * std::numbers::pi * 330.0 * s)) +
                noise(rng));
        }
        return x;
    }();
    return signal;
}

// bench_common's counters for samples_per_iteration samples of `flops` and `bytes` each, plus
// time_per_sample: the seconds of one iteration over its samples.
inline void set_sample_counters(benchmark::State& state, double samples_per_iteration, double flops, double bytes) {
    set_counters(state, samples_per_iteration, samples_per_iteration * flops, samples_per_iteration * bytes);
    state.counters["time_per_sample"] = benchmark::Counter(samples_per_iteration * static_cast<double>(state.iterations()),
                                                           benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// The timed loop of one sample an iteration: model.process_sample(x_t, &y), t cycling through
// the signal.
template <typename Model>
void feed_samples(benchmark::State& state, Model& model) {
    const std::vector<float>& x = test_signal();
    seqnn::Index t = 0;
    float y = 0;
    for (auto _ : state) {
        model.process_sample(&x[static_cast<std::size_t>(t)], &y);
        benchmark::DoNotOptimize(y);
        t = (t + 1) & (kSignalLength - 1);
    }
}

// The timed loop of one block of T samples an iteration: model.process_block(x, T, y) on
// consecutive blocks of the signal.
template <typename Model>
void feed_blocks(benchmark::State& state, Model& model, seqnn::Index T) {
    const std::vector<float>& x = test_signal();
    std::vector<float> y(static_cast<std::size_t>(T));
    seqnn::Index t = 0;
    for (auto _ : state) {
        model.process_block(&x[static_cast<std::size_t>(t)], T, y.data());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        t = (t + T) % (kSignalLength - T + 1);
    }
}

}  // namespace seqnn::bench
