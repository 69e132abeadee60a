// The sequential cells: RNN, LSTM and GRU forward, training (forward + backward)
// and one streaming step, at the shapes of the scan issue so that serial and
// parallel cost sit side by side.
#include "bench_common.hpp"

#include <memory>
#include <type_traits>

namespace {

using namespace seqnn;

// Multiply-adds of one layer over B*T steps with G gates: input projection and hidden map.
double recurrent_flops(Index B, Index T, Index I, Index H, Index G) {
    return 2.0 * static_cast<double>(B * T) * static_cast<double>(G * H) * static_cast<double>(I + H);
}

// Bytes a forward must touch at least: input, weights, gate pre-activations and output.
double recurrent_bytes(Index B, Index T, Index I, Index H, Index G) {
    return 4.0 * (static_cast<double>(B * T) * static_cast<double>(I + G * H + H) +
                  static_cast<double>(G * H) * static_cast<double>(I + H));
}

template <typename Cell>
std::unique_ptr<Cell> make_cell(Index D) {
    Rng rng(7);
    if constexpr (std::is_same_v<Cell, RNN<float>>)
        return std::make_unique<Cell>(RNNOptions{.input_size = D, .hidden_size = D}, rng);
    else
        return std::make_unique<Cell>(RecurrentOptions{.input_size = D, .hidden_size = D}, rng);
}

template <typename Cell, int Gates>
void BM_Forward(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    auto cell = make_cell<Cell>(D);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    for (auto _ : state) benchmark::DoNotOptimize(cell->forward(x).data.data());
    bench::set_counters(state, double(B * T), recurrent_flops(B, T, D, D, Gates), recurrent_bytes(B, T, D, D, Gates));
}

template <typename Cell, int Gates>
void BM_Train(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    auto cell = make_cell<Cell>(D);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    const Sequence<float> dy = bench::random_sequence(B, T, D, 2);
    Context<float> ctx;  // reused, as a training loop does: its buffers are not allocated again
    for (auto _ : state) {
        benchmark::DoNotOptimize(cell->forward(x, nullptr, &ctx).data.data());
        benchmark::DoNotOptimize(cell->backward(dy, ctx).data.data());
    }
    // Backward costs about twice the forward's multiply-adds (data and weight gradients).
    bench::set_counters(state, double(B * T), 3 * recurrent_flops(B, T, D, D, Gates),
                        3 * recurrent_bytes(B, T, D, D, Gates));
}

template <typename Cell, int Gates>
void BM_Step(benchmark::State& state) {
    const Index B = state.range(0), D = state.range(1);
    auto cell = make_cell<Cell>(D);
    const Matrix<float> x = bench::random_matrix(B, D);
    State<float> s = cell->initial_state(B);
    Matrix<float> y(B, D);
    for (auto _ : state) {
        cell->step(x, s, y);
        benchmark::DoNotOptimize(y.data());
    }
    bench::set_counters(state, double(B), recurrent_flops(B, 1, D, D, Gates), recurrent_bytes(B, 1, D, D, Gates));
}

// The recurrent product of one step, (B, H) x (H, G*H), as a general GEMM computes it
// (Eigen repacks both operands on every call) and as the recurrent kernel does (the
// weights packed once, kernels/recurrent.hpp): the difference is the repacking cost.
void BM_StepProductEigen(benchmark::State& state) {
    const Index B = state.range(0), H = state.range(1), GH = state.range(2) * H;
    const Matrix<float> h = bench::random_matrix(B, H), w = bench::random_matrix(GH, H, 2);
    Matrix<float> out(B, GH);
    for (auto _ : state) {
        out.noalias() = h * w.transpose();  // (B, H) x (H, G*H)
        benchmark::DoNotOptimize(out.data());
    }
    bench::set_counters(state, double(B), 2.0 * double(B * H * GH), 4.0 * double(B * H + GH * H + B * GH));
}

void BM_StepProductPacked(benchmark::State& state) {
    const Index B = state.range(0), H = state.range(1), GH = state.range(2) * H;
    const Matrix<float> h = bench::random_matrix(B, H), w = bench::random_matrix(GH, H, 2);
    recurrent_detail::PackedPanels<float> packed;
    packed.pack(H, GH, [&](Index k, Index j) { return w(j, k); });
    Matrix<float> out(B, GH);
    for (auto _ : state) {
        recurrent_detail::gemm_packed<float>(h.data(), H, B, packed, out.data(), GH, nullptr, false);  // (B, H) x (H, G*H)
        benchmark::DoNotOptimize(out.data());
    }
    bench::set_counters(state, double(B), 2.0 * double(B * H * GH), 4.0 * double(B * H + GH * H + B * GH));
}

void step_product_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "H", "G"});
    for (int G : {3, 4}) b->Args({16, 256, G});
    b->Args({1, 1024, 3});
}

// B:16/D:256 for T in 64..4096, and one long stream B:1/T:65536/D:256.
void sequence_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "D"});
    for (int T : {64, 256, 1024, 4096}) b->Args({16, T, 256});
    b->Args({1, 65536, 256});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

void step_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "D"});
    for (int D : {64, 256, 1024}) b->Args({1, D});
    b->Args({16, 256});
    b->UseRealTime();
}

}  // namespace

BENCHMARK_TEMPLATE(BM_Forward, GRU<float>, 3)->Name("BM_GRU_Forward")->Apply(sequence_shapes);
BENCHMARK_TEMPLATE(BM_Train, GRU<float>, 3)->Name("BM_GRU_Train")->Apply(sequence_shapes);
BENCHMARK_TEMPLATE(BM_Forward, LSTM<float>, 4)->Name("BM_LSTM_Forward")->Apply(sequence_shapes);
BENCHMARK_TEMPLATE(BM_Train, LSTM<float>, 4)->Name("BM_LSTM_Train")->Apply(sequence_shapes);
BENCHMARK_TEMPLATE(BM_Forward, RNN<float>, 1)->Name("BM_RNN_Forward")->Apply(sequence_shapes);
BENCHMARK_TEMPLATE(BM_Train, RNN<float>, 1)->Name("BM_RNN_Train")->Apply(sequence_shapes);
BENCHMARK(BM_StepProductEigen)->Apply(step_product_shapes);
BENCHMARK(BM_StepProductPacked)->Apply(step_product_shapes);
BENCHMARK_TEMPLATE(BM_Step, GRU<float>, 3)->Name("BM_GRU_Step")->Apply(step_shapes);
BENCHMARK_TEMPLATE(BM_Step, LSTM<float>, 4)->Name("BM_LSTM_Step")->Apply(step_shapes);
