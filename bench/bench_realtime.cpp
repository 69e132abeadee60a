// The real-time twins (seqnn/realtime/): one stream on one thread, one sample or one block
// at a time, at the sizes audio models use (hidden 8..128, one input feature, one output).
//
//   BM_<Cell>_Sample/H:          one sample through the twin and an output realtime::Linear
//                                (H -> 1): the time per iteration is the time per sample
//   BM_<Cell>_Block/H:/T:        a block of T samples through the same (process_block); the
//                                time per iteration is one block, time_per_sample divides it
//   BM_<Cell>_GeneralStep/H:     the GRU's and LSTM's sample through the general API instead,
//                                Layer::step (B = 1) and Linear::forward: what the twins replace
//   BM_<Cell>_WeightRead/H:      the floor of a sample bound by reading its weights: one
//                                pass of packet loads over as many bytes as BM_<Cell>_Sample's
//                                weights (bytes_per_sample), summed and nothing else. At H >= 64
//                                the weights outgrow the L1 cache, and a sample cannot take
//                                less time than this pass from wherever they sit
//   BM_AmpModel_RealTimeFactor/<GRU|LSTM>/H:40/T:256
//                                the amp model, Linear(1 -> H) -> cell -> Linear(H -> 1) plus
//                                the dry signal, in blocks of T; rtf is the real-time factor at
//                                48 kHz (seconds of compute per second of audio, below 1 keeps up)
//
// <Cell> is GRU, LSTM, MinGRU or MinLSTM. The minGRU and minLSTM of one input feature and
// hidden size H have their own output projection to_out (H -> 1), so they need no Linear.
// Counters: items_per_second (samples/s), time_per_sample (seconds), FLOPS (the cell's and
// the Linear's multiply-adds), bytes_per_second (the weights each sample reads). Run on one
// thread (OMP_NUM_THREADS=1); the twins contain no OpenMP region at all, and each benchmark
// sets seqnn's thread count to 1 for the general API's step as well. bench_rtneural_peer.cpp
// times RTNeural at the BM_{GRU,LSTM}_Sample shapes; scripts/bench_realtime.sh runs both.
#include "bench_common.hpp"
#include "test_signal.hpp"

#include <seqnn/realtime.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

namespace {

using namespace seqnn;
using seqnn::bench::kSampleRate;
using seqnn::bench::kSignalLength;
using seqnn::bench::set_sample_counters;
using seqnn::bench::test_signal;

void one_thread() { set_num_threads(1); }

// Each cell: the general layer for input 1 and hidden H, its twin, the gate count (for the
// FLOP count) and whether its output still needs a Linear (H -> 1).
struct GRUCell {
    using Layer = GRU<float>;
    using Twin = realtime::GRU<float>;
    static constexpr int gates = 3;
    static constexpr bool needs_head = true;
    static Layer make(Index I, Index H, Rng& rng) { return Layer(RecurrentOptions{.input_size = I, .hidden_size = H}, rng); }
};
struct LSTMCell {
    using Layer = LSTM<float>;
    using Twin = realtime::LSTM<float>;
    static constexpr int gates = 4;
    static constexpr bool needs_head = true;
    static Layer make(Index I, Index H, Rng& rng) { return Layer(RecurrentOptions{.input_size = I, .hidden_size = H}, rng); }
};
// minGRU and minLSTM: gates from x alone (2 and 3 projections), with biases, and to_out
// (H -> 1) because the hidden size differs from the one input feature.
struct MinGRUCell {
    using Layer = MinGRU<float>;
    using Twin = realtime::MinGRU<float>;
    static constexpr int gates = 2;
    static constexpr bool needs_head = false;
    static Layer make(Index I, Index H, Rng& rng) {
        return Layer(MinRNNOptions{.input_size = I, .hidden_size = H, .bias = true}, rng);
    }
};
struct MinLSTMCell {
    using Layer = MinLSTM<float>;
    using Twin = realtime::MinLSTM<float>;
    static constexpr int gates = 3;
    static constexpr bool needs_head = false;
    static Layer make(Index I, Index H, Rng& rng) {
        return Layer(MinRNNOptions{.input_size = I, .hidden_size = H, .bias = true}, rng);
    }
};

// Multiply-adds of one sample: the cell's input and hidden maps (a min-RNN has no hidden
// map; its to_out is the H -> 1 head), and the head.
template <typename Cell>
double sample_flops(Index I, Index H) {
    const double gates = Cell::gates, hidden_map = Cell::needs_head ? static_cast<double>(H) : 0.0;
    return 2.0 * gates * static_cast<double>(H) * (static_cast<double>(I) + hidden_map) + 2.0 * static_cast<double>(H);
}
// The weights one sample reads (all of them), in bytes.
template <typename Cell>
double sample_bytes(Index I, Index H) {
    const double gates = Cell::gates, hidden_map = Cell::needs_head ? static_cast<double>(H) : 0.0;
    return 4.0 * (gates * static_cast<double>(H) * (static_cast<double>(I) + hidden_map + 2.0) + static_cast<double>(H) + 1.0);
}

// The twin and, for the GRU and LSTM, the output Linear (H -> 1), chained by hand as a
// user does. A block runs in pieces of the twins' max_block (512 by default): the cell over
// a piece, then the head over it, so the hidden rows between the two stay in cache.
template <typename Cell>
class TwinChain {
public:
    explicit TwinChain(Index H)
        : layer_(make_layer(H)), head_layer_(make_head(H)), cell_(layer_), head_(head_layer_),
          hidden_(static_cast<std::size_t>(cell_.max_block() * cell_.output_size())) {}

    void process_sample(const float* x, float* y) noexcept {
        if constexpr (Cell::needs_head) {
            cell_.process_sample(x, hidden_.data());
            head_.process_sample(hidden_.data(), y);
        } else {
            cell_.process_sample(x, y);
        }
    }
    void process_block(const float* x, Index steps, float* y) noexcept {
        if constexpr (Cell::needs_head) {
            for (Index begin = 0; begin < steps; begin += cell_.max_block()) {
                const Index n = std::min(cell_.max_block(), steps - begin);
                cell_.process_block(x + begin, n, hidden_.data());  // (n, 1) -> (n, H)
                head_.process_block(hidden_.data(), n, y + begin);  // (n, H) -> (n, 1)
            }
        } else {
            cell_.process_block(x, steps, y);
        }
    }

private:
    static typename Cell::Layer make_layer(Index H) {
        Rng rng(7);
        return Cell::make(1, H, rng);
    }
    static Linear<float> make_head(Index H) {
        Rng rng(11);
        return Linear<float>(H, 1, true, rng);
    }

    typename Cell::Layer layer_;
    Linear<float> head_layer_;
    typename Cell::Twin cell_;
    realtime::Linear<float> head_;
    std::vector<float> hidden_;
};

template <typename Cell>
void BM_Sample(benchmark::State& state) {
    one_thread();
    const Index H = state.range(0);
    TwinChain<Cell> chain(H);
    bench::feed_samples(state, chain);
    set_sample_counters(state, 1, sample_flops<Cell>(1, H), sample_bytes<Cell>(1, H));
}

template <typename Cell>
void BM_Block(benchmark::State& state) {
    one_thread();
    const Index H = state.range(0), T = state.range(1);
    TwinChain<Cell> chain(H);
    bench::feed_blocks(state, chain, T);
    set_sample_counters(state, static_cast<double>(T), sample_flops<Cell>(1, H), sample_bytes<Cell>(1, H));
}

// The same sample through the general API: step for B = 1 with a state from initial_state
// (which makes step allocation-free) and Linear::forward into a preallocated row.
template <typename Cell>
void BM_GeneralStep(benchmark::State& state) {
    one_thread();
    const Index H = state.range(0);
    Rng rng(7), head_rng(11);
    const typename Cell::Layer layer = Cell::make(1, H, rng);
    const Linear<float> head(H, 1, true, head_rng);
    State<float> s = layer.initial_state(1);
    Matrix<float> x(1, 1), h(1, H), y(1, 1);
    const std::vector<float>& signal = test_signal();
    Index t = 0;
    for (auto _ : state) {
        x(0, 0) = signal[static_cast<std::size_t>(t)];
        layer.step(x, s, h);
        head.forward(h, y);
        benchmark::DoNotOptimize(y.data());
        t = (t + 1) & (kSignalLength - 1);
    }
    set_sample_counters(state, 1, sample_flops<Cell>(1, H), sample_bytes<Cell>(1, H));
}

// One pass of packet loads over sample_bytes of weights, into eight independent sums so that
// the loads, not the additions, set the pace: the time a sample bound by reading its weights
// cannot beat. The buffer is read over and over, so it sits in the nearest cache that holds it,
// as the twins' weights do.
template <typename Cell>
void BM_WeightRead(benchmark::State& state) {
    namespace ei = Eigen::internal;
    using Pk = realtime::detail::Packet<float>;
    constexpr Index P = realtime::detail::kPacket<float>, kSums = 8;
    const Index H = state.range(0);
    const double bytes = sample_bytes<Cell>(1, H);
    const Index n = (static_cast<Index>(bytes) / 4 + kSums * P - 1) / (kSums * P) * (kSums * P);
    AlignedVector<float> weights(static_cast<std::size_t>(n), 1e-3f);
    for (auto _ : state) {
        Pk sum[kSums];
        for (Index s = 0; s < kSums; ++s) sum[s] = ei::pset1<Pk>(0.0f);
        for (Index i = 0; i < n; i += kSums * P)
            for (Index s = 0; s < kSums; ++s) sum[s] = ei::padd(sum[s], ei::pload<Pk>(weights.data() + i + s * P));
        for (Index s = 1; s < kSums; ++s) sum[0] = ei::padd(sum[0], sum[s]);
        float total = ei::predux(sum[0]);
        benchmark::DoNotOptimize(total);
    }
    set_sample_counters(state, 1, 0.0, static_cast<double>(n) * 4.0);
}

// The amp model: y = x + Linear(H -> 1)(cell(H)(Linear(1 -> H)(x))), blocks of T.
template <typename Cell>
void BM_AmpModel(benchmark::State& state) {
    one_thread();
    const Index H = state.range(0), T = state.range(1);
    Rng rng(5);
    const Linear<float> in_layer(1, H, true, rng);
    const typename Cell::Layer cell_layer = Cell::make(H, H, rng);
    const Linear<float> out_layer(H, 1, true, rng);
    realtime::Linear<float> in_proj(in_layer, T);  // max_block = T: a block is one piece
    typename Cell::Twin cell(cell_layer, T);
    realtime::Linear<float> out_proj(out_layer, T);
    std::vector<float> a(static_cast<std::size_t>(T * H)), h(static_cast<std::size_t>(T * H)), y(static_cast<std::size_t>(T));
    const std::vector<float>& signal = test_signal();
    Index t = 0;
    for (auto _ : state) {
        const float* x = &signal[static_cast<std::size_t>(t)];
        in_proj.process_block(x, T, a.data());   // (T, 1) -> (T, H)
        cell.process_block(a.data(), T, h.data());  // (T, H) -> (T, H)
        out_proj.process_block(h.data(), T, y.data());  // (T, H) -> (T, 1)
        for (Index i = 0; i < T; ++i) y[static_cast<std::size_t>(i)] += x[i];  // the skip connection
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        t = (t + T) % (kSignalLength - T + 1);
    }
    const double flops = sample_flops<Cell>(H, H) + 2.0 * static_cast<double>(H);
    set_sample_counters(state, static_cast<double>(T), flops, sample_bytes<Cell>(H, H));
    // Seconds of compute per second of audio at 48 kHz.
    state.counters["rtf"] = benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(T) / kSampleRate,
                                               benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void sample_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"H"});
    for (int H : {8, 16, 32, 64, 128}) b->Args({H});
}

void block_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"H", "T"});
    for (int H : {8, 16, 32, 64, 128})
        for (int T : {32, 256, 4096}) b->Args({H, T});
}

void amp_shape(benchmark::internal::Benchmark* b) {
    b->ArgNames({"H", "T"});
    b->Args({40, 256});
}

}  // namespace

BENCHMARK_TEMPLATE(BM_Sample, GRUCell)->Name("BM_GRU_Sample")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_Sample, LSTMCell)->Name("BM_LSTM_Sample")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_Sample, MinGRUCell)->Name("BM_MinGRU_Sample")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_Sample, MinLSTMCell)->Name("BM_MinLSTM_Sample")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_Block, GRUCell)->Name("BM_GRU_Block")->Apply(block_shapes);
BENCHMARK_TEMPLATE(BM_Block, LSTMCell)->Name("BM_LSTM_Block")->Apply(block_shapes);
BENCHMARK_TEMPLATE(BM_Block, MinGRUCell)->Name("BM_MinGRU_Block")->Apply(block_shapes);
BENCHMARK_TEMPLATE(BM_Block, MinLSTMCell)->Name("BM_MinLSTM_Block")->Apply(block_shapes);
BENCHMARK_TEMPLATE(BM_WeightRead, GRUCell)->Name("BM_GRU_WeightRead")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_WeightRead, LSTMCell)->Name("BM_LSTM_WeightRead")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_GeneralStep, GRUCell)->Name("BM_GRU_GeneralStep")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_GeneralStep, LSTMCell)->Name("BM_LSTM_GeneralStep")->Apply(sample_shapes);
BENCHMARK_TEMPLATE(BM_AmpModel, GRUCell)->Name("BM_AmpModel_RealTimeFactor/GRU")->Apply(amp_shape);
BENCHMARK_TEMPLATE(BM_AmpModel, LSTMCell)->Name("BM_AmpModel_RealTimeFactor/LSTM")->Apply(amp_shape);
