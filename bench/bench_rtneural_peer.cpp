// RTNeural (github.com/jatinchowdhury18/RTNeural) as the peer of bench_realtime.cpp's
// BM_{GRU,LSTM}_Sample: its compile-time Eigen layers (GRULayerT, LSTMLayerT, DenseT, the
// sizes as template parameters: its fastest mode) at input 1, hidden H and Dense(H -> 1),
// one sample per iteration, chained as RTNeural's ModelT chains them (each layer's forward
// reads the previous layer's outs). Names: BM_RTNeural_<GRU|LSTM>_Sample/H:<H>, next to
// BM_<GRU|LSTM>_Sample/H:<H>.
//
// The weights are a seqnn layer's (same seeds as bench_realtime.cpp), converted to RTNeural's
// Keras layout, and before timing each benchmark checks that RTNeural's outputs over a
// stream equal the seqnn layer's forward to 1e-5 (float): it stops with an error otherwise.
// Counter max_abs_diff reports the largest difference seen.
//
// Built only when CMake is given -DSEQNN_RTNEURAL_DIR=<a folder holding RTNeural/, e.g. a
// clone of the repository>; scripts/bench_realtime.sh builds and runs both programs.
#ifndef RTNEURAL_USE_EIGEN
#define RTNEURAL_USE_EIGEN 1
#endif
#ifndef RTNEURAL_DEFAULT_ALIGNMENT
#if defined(__AVX__)
#define RTNEURAL_DEFAULT_ALIGNMENT 32  // what RTNeural's own build sets with AVX
#else
#define RTNEURAL_DEFAULT_ALIGNMENT 16
#endif
#endif
// RTNeural's compile-time layers hold their weights as fixed-size Eigen matrices: the LSTM's
// at H = 128 is (4H, 1 + H + 1) floats, 266 KB, over Eigen's 128 KB default limit for a
// fixed-size object. (CMake and scripts/bench_realtime.sh also set it on the command line.)
#ifndef EIGEN_STACK_ALLOCATION_LIMIT
#define EIGEN_STACK_ALLOCATION_LIMIT (1 << 20)
#endif

#include "bench_common.hpp"
#include "test_signal.hpp"

// In RTNeural.h's order: config.h and common.h first (the layers use RTNEURAL_NAMESPACE and
// RTNeuralEigenAlignment without including them all).
#include <RTNeural/config.h>
#include <RTNeural/common.h>

#include <RTNeural/dense/dense_eigen.h>
#include <RTNeural/gru/gru_eigen.h>
#include <RTNeural/gru/gru_eigen.tpp>
#include <RTNeural/lstm/lstm_eigen.h>
#include <RTNeural/lstm/lstm_eigen.tpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

namespace {

using namespace seqnn;
using seqnn::bench::kSampleRate;
using seqnn::bench::kSignalLength;
using seqnn::bench::test_signal;

constexpr Index kCheckSteps = 2048;  // samples compared with seqnn before timing
constexpr double kTolerance = 1e-5;

// PyTorch's (seqnn's) GRU gates are r, z, n; RTNeural's (Keras's) z, r, n. Row k of RTNeural's
// gate vector is this row of seqnn's.
Index gru_row(Index k, Index H) { return k < H ? k + H : (k < 2 * H ? k - H : k); }

// RTNeural's kernel layout: w[input][gate row], the transpose of PyTorch's (G*H, I).
std::vector<std::vector<float>> transposed(const Matrix<float>& w, Index H, bool gru) {
    std::vector<std::vector<float>> out(static_cast<std::size_t>(w.cols()), std::vector<float>(static_cast<std::size_t>(w.rows())));
    for (Index i = 0; i < w.cols(); ++i)
        for (Index k = 0; k < w.rows(); ++k)
            out[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)] = w(gru ? gru_row(k, H) : k, i);
    return out;
}

std::vector<float> row_vector(const Matrix<float>& b, Index H, bool gru) {
    std::vector<float> out(static_cast<std::size_t>(b.size()));
    for (Index k = 0; k < b.size(); ++k) out[static_cast<std::size_t>(k)] = b(0, gru ? gru_row(k, H) : k);
    return out;
}

// Dense(H -> 1) from a Linear: the same (out, in) layout.
template <typename Dense>
void copy_linear(const Linear<float>& head, Dense& dense) {
    std::vector<std::vector<float>> weights(1, std::vector<float>(static_cast<std::size_t>(head.in_features())));
    for (Index k = 0; k < head.in_features(); ++k) weights[0][static_cast<std::size_t>(k)] = head.weight.value(0, k);
    dense.setWeights(weights);
    dense.setBias(head.bias.value.data());
}

// Input 1, hidden H, Dense(H -> 1): RTNeural's layers and the seqnn layers they copy.
template <int H>
struct GRUPeer {
    static constexpr const char* kind = "GRU";
    RTNeural::GRULayerT<float, 1, H> rnn;
    RTNeural::DenseT<float, H, 1> dense;

    void set_weights(const GRU<float>& layer, const Linear<float>& head) {
        const auto& w = layer.weights(0);
        rnn.setWVals(transposed(w.weight_ih.value, H, true));
        rnn.setUVals(transposed(w.weight_hh.value, H, true));
        rnn.setBVals({row_vector(w.bias_ih.value, H, true), row_vector(w.bias_hh.value, H, true)});
        copy_linear(head, dense);
    }
    void reset() {
        rnn.reset();
        dense.reset();
    }
    float forward(float x) noexcept {
        const Eigen::Matrix<float, 1, 1> in(x);
        rnn.forward(in);
        dense.forward(rnn.outs);
        return dense.outs(0);
    }
};

template <int H>
struct LSTMPeer {
    static constexpr const char* kind = "LSTM";
    RTNeural::LSTMLayerT<float, 1, H> rnn;
    RTNeural::DenseT<float, H, 1> dense;

    // PyTorch's LSTM gates i, f, g, o are Keras's i, f, c, o; RTNeural takes one bias, b_ih + b_hh.
    void set_weights(const LSTM<float>& layer, const Linear<float>& head) {
        const auto& w = layer.weights(0);
        rnn.setWVals(transposed(w.weight_ih.value, H, false));
        rnn.setUVals(transposed(w.weight_hh.value, H, false));
        const Matrix<float> bias = w.bias_ih.value + w.bias_hh.value;
        rnn.setBVals(row_vector(bias, H, false));
        copy_linear(head, dense);
    }
    void reset() {
        rnn.reset();
        dense.reset();
    }
    float forward(float x) noexcept {
        const Eigen::Matrix<float, 1, 1> in(x);
        rnn.forward(in);
        dense.forward(rnn.outs);
        return dense.outs(0);
    }
};

template <typename Layer>
Layer make_layer(Index H) {
    Rng rng(7);  // bench_realtime.cpp's seeds: the same weights
    return Layer(RecurrentOptions{.input_size = 1, .hidden_size = H}, rng);
}
Linear<float> make_head(Index H) {
    Rng rng(11);
    return Linear<float>(H, 1, true, rng);
}

// max |RTNeural - seqnn| over the first kCheckSteps samples of the signal, seqnn's output
// from the general layers' forward over the whole stream.
template <typename Peer, typename Layer>
double max_difference(Peer& peer, const Layer& layer, const Linear<float>& head) {
    const std::vector<float>& signal = test_signal();
    Sequence<float> x(1, kCheckSteps, 1);
    for (Index t = 0; t < kCheckSteps; ++t) x.data(t, 0) = signal[static_cast<std::size_t>(t)];
    const Matrix<float> y = head.forward(layer.forward(x).data);  // (T, H) -> (T, 1)
    peer.reset();
    double worst = 0;
    for (Index t = 0; t < kCheckSteps; ++t)
        worst = std::max(worst, std::abs(static_cast<double>(peer.forward(x.data(t, 0))) - static_cast<double>(y(t, 0))));
    peer.reset();
    return worst;
}

template <typename Peer, typename Layer, int H, int Gates>
void BM_RTNeural_Sample(benchmark::State& state) {
    set_num_threads(1);
    const Layer layer = make_layer<Layer>(H);
    const Linear<float> head = make_head(H);
    auto peer = std::make_unique<Peer>();  // on the heap: its fixed-size weights are large
    peer->set_weights(layer, head);
    const double difference = max_difference(*peer, layer, head);
    if (!(difference <= kTolerance)) {
        state.SkipWithError(("RTNeural's " + std::string(Peer::kind) + " differs from seqnn's by " +
                             std::to_string(difference) + " (> 1e-5): the weights were not copied right")
                                .c_str());
        return;
    }
    const std::vector<float>& x = test_signal();
    Index t = 0;
    for (auto _ : state) {
        float y = peer->forward(x[static_cast<std::size_t>(t)]);
        benchmark::DoNotOptimize(y);
        t = (t + 1) & (kSignalLength - 1);
    }
    const double flops = 2.0 * Gates * H * (1.0 + H) + 2.0 * H, bytes = 4.0 * (Gates * H * (1.0 + H + 2.0) + H + 1.0);
    bench::set_sample_counters(state, 1, flops, bytes);
    state.counters["max_abs_diff"] = difference;
}

}  // namespace

#define SEQNN_RTNEURAL_PEERS(H)                                                                             \
    BENCHMARK_TEMPLATE(BM_RTNeural_Sample, GRUPeer<H>, GRU<float>, H, 3)->Name("BM_RTNeural_GRU_Sample/H:" #H); \
    BENCHMARK_TEMPLATE(BM_RTNeural_Sample, LSTMPeer<H>, LSTM<float>, H, 4)->Name("BM_RTNeural_LSTM_Sample/H:" #H);

SEQNN_RTNEURAL_PEERS(8)
SEQNN_RTNEURAL_PEERS(16)
SEQNN_RTNEURAL_PEERS(32)
SEQNN_RTNEURAL_PEERS(64)
SEQNN_RTNEURAL_PEERS(128)
