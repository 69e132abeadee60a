// minGRU and minLSTM: forward, training (forward + backward) and one streaming
// step, at the same shapes as the sequential cells in bench_recurrent.cpp.
// Hidden size D, no expansion, the linear-space parallel scan (the layer's default).
// minGRU's forward also runs on a padded batch (lengths) and bidirectionally, at
// B=16, T=1024, D=256, to compare with its plain forward there.
#include "bench_common.hpp"

namespace {

using namespace seqnn;

// Multiply-adds of the input projection (G gates) plus the scan's two flops per element.
double min_rnn_flops(Index B, Index T, Index D, Index G) {
    const double rows = static_cast<double>(B * T);
    return 2.0 * rows * static_cast<double>(D * G * D) + 2.0 * rows * static_cast<double>(D);
}

// Input, pre-activations, a, b and h: what a forward must stream through memory.
double min_rnn_bytes(Index B, Index T, Index D, Index G) {
    return 4.0 * static_cast<double>(B * T) * static_cast<double>(D * (1 + G + 3)) +
           4.0 * static_cast<double>(G * D * D);
}

template <typename Cell>
Cell make_cell(Index D, MinRNNMode mode, bool bidirectional = false) {
    Rng rng(7);
    return Cell(MinRNNOptions{.input_size = D, .mode = mode, .bidirectional = bidirectional}, rng);
}

template <typename Cell, int Gates>
void BM_Forward(benchmark::State& state, MinRNNMode mode) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    const Cell cell = make_cell<Cell>(D, mode);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    bench::untimed_first_call([&] { benchmark::DoNotOptimize(cell.forward(x).data.data()); });
    for (auto _ : state) benchmark::DoNotOptimize(cell.forward(x).data.data());
    bench::set_counters(state, double(B * T), min_rnn_flops(B, T, D, Gates), min_rnn_bytes(B, T, D, Gates));
}

// A padded batch: lengths drawn uniformly from [T/2, T] with a fixed seed. The counters
// are BM_Forward's, padding rows included, so that the rates compare at the same shape.
template <typename Cell, int Gates>
void BM_ForwardLengths(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    const Cell cell = make_cell<Cell>(D, MinRNNMode::Parallel);
    Sequence<float> x = bench::random_sequence(B, T, D);
    Rng rng(11);
    std::uniform_int_distribution<Index> length(T / 2, T);
    for (Index b = 0; b < B; ++b) x.lengths.push_back(length(rng));
    bench::untimed_first_call([&] { benchmark::DoNotOptimize(cell.forward(x).data.data()); });
    for (auto _ : state) benchmark::DoNotOptimize(cell.forward(x).data.data());
    bench::set_counters(state, double(B * T), min_rnn_flops(B, T, D, Gates), min_rnn_bytes(B, T, D, Gates));
}

// Both directions, no projection: the output is (B*T, 2D). Each direction costs a forward's
// flops and streams its own pre-activations, a, b and h; the input is read by both GEMMs.
template <typename Cell, int Gates>
void BM_ForwardBidirectional(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    const Cell cell = make_cell<Cell>(D, MinRNNMode::Parallel, true);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    bench::untimed_first_call([&] { benchmark::DoNotOptimize(cell.forward(x).data.data()); });
    for (auto _ : state) benchmark::DoNotOptimize(cell.forward(x).data.data());
    bench::set_counters(state, double(B * T), 2 * min_rnn_flops(B, T, D, Gates), 2 * min_rnn_bytes(B, T, D, Gates));
}

template <typename Cell, int Gates>
void BM_Train(benchmark::State& state, MinRNNMode mode) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    Cell cell = make_cell<Cell>(D, mode);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    const Sequence<float> dy = bench::random_sequence(B, T, D, 2);
    Context<float> ctx;  // reused, as a training loop does: its buffers are not allocated again
    const auto train_step = [&] {
        benchmark::DoNotOptimize(cell.forward(x, nullptr, &ctx).data.data());
        benchmark::DoNotOptimize(cell.backward(dy, ctx).data.data());
    };
    bench::untimed_first_call(train_step);
    for (auto _ : state) train_step();
    bench::set_counters(state, double(B * T), 3 * min_rnn_flops(B, T, D, Gates), 3 * min_rnn_bytes(B, T, D, Gates));
}

template <typename Cell, int Gates>
void BM_Step(benchmark::State& state) {
    const Index B = state.range(0), D = state.range(1);
    const Cell cell = make_cell<Cell>(D, MinRNNMode::Parallel);
    const Matrix<float> x = bench::random_matrix(B, D);
    State<float> s = cell.initial_state(B);
    Matrix<float> y(B, D);
    for (auto _ : state) {
        cell.step(x, s, y);
        benchmark::DoNotOptimize(y.data());
    }
    bench::set_counters(state, double(B), min_rnn_flops(B, 1, D, Gates), min_rnn_bytes(B, 1, D, Gates));
}

void sequence_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "D"});
    for (int T : {64, 256, 1024, 4096}) b->Args({16, T, 256});
    b->Args({1, 65536, 256});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

// The one shape of the padded and bidirectional forwards (BM_MinGRU_Forward runs it too).
void padded_shape(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "D"});
    b->Args({16, 1024, 256});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

void step_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "D"});
    for (int D : {64, 256, 1024}) b->Args({1, D});
    b->UseRealTime();
}

}  // namespace

// Registered by hand: BENCHMARK_CAPTURE does not take template arguments.
[[maybe_unused]] const int registered = [] {
    using benchmark::RegisterBenchmark;
    RegisterBenchmark("BM_MinGRU_Forward", BM_Forward<MinGRU<float>, 2>, MinRNNMode::Parallel)->Apply(sequence_shapes);
    RegisterBenchmark("BM_MinGRU_Train", BM_Train<MinGRU<float>, 2>, MinRNNMode::Parallel)->Apply(sequence_shapes);
    RegisterBenchmark("BM_MinGRU_ForwardLengths", BM_ForwardLengths<MinGRU<float>, 2>)->Apply(padded_shape);
    RegisterBenchmark("BM_MinGRU_ForwardBidirectional", BM_ForwardBidirectional<MinGRU<float>, 2>)->Apply(padded_shape);
    RegisterBenchmark("BM_MinLSTM_Forward", BM_Forward<MinLSTM<float>, 3>, MinRNNMode::Parallel)->Apply(sequence_shapes);
    RegisterBenchmark("BM_MinLSTM_Train", BM_Train<MinLSTM<float>, 3>, MinRNNMode::Parallel)->Apply(sequence_shapes);
    RegisterBenchmark("BM_MinLSTM_ForwardLengths", BM_ForwardLengths<MinLSTM<float>, 3>)->Apply(padded_shape);
    // The same layers with the serial scan and with the paper's log-space scan, for comparison.
    RegisterBenchmark("BM_MinGRU_ForwardSequential", BM_Forward<MinGRU<float>, 2>, MinRNNMode::Sequential)
        ->Apply(sequence_shapes);
    RegisterBenchmark("BM_MinGRU_ForwardLogSpace", BM_Forward<MinGRU<float>, 2>, MinRNNMode::LogSpace)
        ->Apply(sequence_shapes);
    RegisterBenchmark("BM_MinGRU_TrainLogSpace", BM_Train<MinGRU<float>, 2>, MinRNNMode::LogSpace)
        ->Apply(sequence_shapes);
    RegisterBenchmark("BM_MinGRU_Step", BM_Step<MinGRU<float>, 2>)->Apply(step_shapes);
    RegisterBenchmark("BM_MinLSTM_Step", BM_Step<MinLSTM<float>, 3>)->Apply(step_shapes);
    return 0;
}();
