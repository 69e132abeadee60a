// The input of the real-time benchmarks (bench_realtime.cpp and its RTNeural peer,
// bench_rtneural_peer.cpp), one signal for both so that they time the same work.
#pragma once

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

}  // namespace seqnn::bench
