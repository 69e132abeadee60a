// The sequential cells: RNN, LSTM and GRU forward, training (forward + backward)
// and one streaming step, at the shapes of the scan issue so that serial and
// parallel cost sit side by side; a bidirectional forward, a padded batch's forward, and
// the two directions' loops side by side against one after the other, and one layer's time
// loops alone with the batch cut into groups of sequences.
#include "bench_common.hpp"

#include <memory>
#include <numeric>
#include <random>
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
std::unique_ptr<Cell> make_cell(Index D, bool bidirectional = false) {
    Rng rng(7);
    return std::make_unique<Cell>(RecurrentOptions{.input_size = D, .hidden_size = D, .bidirectional = bidirectional},
                                  rng);
}

// B lengths drawn uniformly from [T/2, T] with a fixed seed.
std::vector<Index> random_lengths(Index B, Index T) {
    std::mt19937_64 rng(11);
    std::uniform_int_distribution<Index> draw(T / 2, T);
    std::vector<Index> lengths(static_cast<std::size_t>(B));
    for (Index& n : lengths) n = draw(rng);
    return lengths;
}

template <typename Cell, int Gates>
void BM_Forward(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    auto cell = make_cell<Cell>(D);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    bench::untimed_first_call([&] { benchmark::DoNotOptimize(cell->forward(x).data.data()); });
    for (auto _ : state) benchmark::DoNotOptimize(cell->forward(x).data.data());
    bench::set_counters(state, double(B * T), recurrent_flops(B, T, D, D, Gates), recurrent_bytes(B, T, D, D, Gates));
}

// Both directions of one bidirectional layer (D -> 2D): twice the work of BM_Forward.
template <typename Cell, int Gates>
void BM_ForwardBidirectional(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    auto cell = make_cell<Cell>(D, true);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    bench::untimed_first_call([&] { benchmark::DoNotOptimize(cell->forward(x).data.data()); });
    for (auto _ : state) benchmark::DoNotOptimize(cell->forward(x).data.data());
    bench::set_counters(state, double(B * T), 2 * recurrent_flops(B, T, D, D, Gates),
                        2 * recurrent_bytes(B, T, D, D, Gates));
}

// A padded batch, lengths uniform in [T/2, T]: items and flops count the real steps only,
// so the time compares with BM_Forward's at the same shape (about 3/4 of it when padding
// costs nothing).
template <typename Cell, int Gates>
void BM_ForwardLengths(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    auto cell = make_cell<Cell>(D);
    Sequence<float> x = bench::random_sequence(B, T, D);
    x.lengths = random_lengths(B, T);
    const Index steps = std::accumulate(x.lengths.begin(), x.lengths.end(), Index(0));
    bench::untimed_first_call([&] { benchmark::DoNotOptimize(cell->forward(x).data.data()); });
    for (auto _ : state) benchmark::DoNotOptimize(cell->forward(x).data.data());
    bench::set_counters(state, double(steps), recurrent_flops(1, steps, D, D, Gates),
                        recurrent_bytes(1, steps, D, D, Gates));
}

// The two directions' time loops (kernels/recurrent.hpp) of a bidirectional GRU layer,
// side_by_side 1: together, each on half the threads (recurrent_forward_pair); 0: one
// after the other, each on all of them. What the layer's choice rests on.
void BM_GRU_Directions(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), H = state.range(2);
    const bool side_by_side = state.range(3) != 0;
    const Index G = 3;
    const Matrix<float> x = bench::random_matrix(B * T, H), w_ih = bench::random_matrix(G * H, H, 2, 0.06f);
    const Matrix<float> w_hh = bench::random_matrix(G * H, H, 3, 0.06f), b = bench::random_matrix(1, G * H, 4);
    Matrix<float> h[2] = {Matrix<float>::Zero(B, H), Matrix<float>::Zero(B, H)};
    Matrix<float> y[2] = {Matrix<float>(B * T, H), Matrix<float>(B * T, H)};
    RecurrentForward<float> f[2];
    for (int d = 0; d < 2; ++d) {
        f[d].cell = CellKind::GRU;
        f[d].input_size = H;
        f[d].x = x.data();
        f[d].w_ih = w_ih.data();
        f[d].w_hh = w_hh.data();
        f[d].b_ih = f[d].b_hh = b.data();
        f[d].h = h[d].data();
        f[d].y = y[d].data();
    }
    const int threads = num_threads();
    for (auto _ : state) {
        if (side_by_side) {
            recurrent_forward_pair<float>(f[0], f[1], B, T, H, std::max(1, threads / 2));
        } else {
            recurrent_forward<float>(f[0], B, T, H);
            recurrent_forward<float>(f[1], B, T, H);
        }
        benchmark::DoNotOptimize(y[1].data());
    }
    bench::set_counters(state, double(B * T), 2 * recurrent_flops(B, T, H, H, G), 2 * recurrent_bytes(B, T, H, H, G));
}

// One layer's time loops alone (kernels/recurrent.hpp), on buffers allocated once: the
// forward of inference (backward 0) or backward through time from a training forward's
// tensors (backward 1), the batch cut into `groups` groups of sequences with a team of
// threads each (0: the kernel's own choice, recurrent_loop_teams). What the choice rests on.
template <CellKind Cell>
void BM_Loop(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), H = state.range(2);
    const int groups = static_cast<int>(state.range(3));
    const bool backward = state.range(4) != 0;
    const Index G = gate_count(Cell);
    const Matrix<float> x = bench::random_matrix(B * T, H), w_ih = bench::random_matrix(G * H, H, 2, 0.06f);
    const Matrix<float> w_hh = bench::random_matrix(G * H, H, 3, 0.06f), b = bench::random_matrix(1, G * H, 4);
    const Matrix<float> h0 = Matrix<float>::Zero(B, H), d_out = bench::random_matrix(B * T, H, 5);
    Matrix<float> h = h0, c = h0, y(B * T, H), gates(B * T, G * H), cells(B * T, H), hidden_n(B * T, H);
    Matrix<float> dh(B, H), dc(B, H), d_gates(B * T, G * H), d_gates_hidden(B * T, G * H);
    RecurrentForward<float> f;
    f.cell = Cell;
    f.input_size = H;
    f.x = x.data();
    f.w_ih = w_ih.data();
    f.w_hh = w_hh.data();
    f.b_ih = f.b_hh = b.data();
    f.h = h.data();
    f.c = Cell == CellKind::LSTM ? c.data() : nullptr;
    f.y = y.data();
    if (backward) {
        f.gates = gates.data();
        if (Cell == CellKind::LSTM) f.cells = cells.data();
        if (Cell == CellKind::GRU) f.hidden_n = hidden_n.data();
        recurrent_forward<float>(f, B, T, H);
    }
    RecurrentSaved<float> saved{gates.data(), y.data(), h0.data(), h0.data(), cells.data(), hidden_n.data()};
    RecurrentBackward<float> grads;
    grads.d_out = d_out.data();
    grads.dh = dh.data();
    grads.dc = Cell == CellKind::LSTM ? dc.data() : nullptr;
    grads.d_gates = d_gates.data();
    grads.d_gates_hidden = d_gates_hidden.data();
    const int threads = groups > 0 ? num_threads() : 0;
    for (auto _ : state) {
        if (backward) {
            dh.setZero();
            dc.setZero();
            recurrent_backward<float>(Cell, w_hh.data(), saved, grads, B, T, H, threads, groups);
        } else {
            recurrent_forward<float>(f, B, T, H, threads, groups);
        }
        benchmark::DoNotOptimize(backward ? d_gates.data() : y.data());
    }
    // Backward through time is the hidden map's half of the forward's multiply-adds.
    const double flops = backward ? recurrent_flops(B, T, 0, H, G) : recurrent_flops(B, T, H, H, G);
    bench::set_counters(state, double(B * T), flops, recurrent_bytes(B, T, H, H, G));
}

template <typename Cell, int Gates>
void BM_Train(benchmark::State& state) {
    const Index B = state.range(0), T = state.range(1), D = state.range(2);
    auto cell = make_cell<Cell>(D);
    const Sequence<float> x = bench::random_sequence(B, T, D);
    const Sequence<float> dy = bench::random_sequence(B, T, D, 2);
    Context<float> ctx;  // reused, as a training loop does: its buffers are not allocated again
    const auto train_step = [&] {
        benchmark::DoNotOptimize(cell->forward(x, nullptr, &ctx).data.data());
        benchmark::DoNotOptimize(cell->backward(dy, ctx).data.data());
    };
    bench::untimed_first_call(train_step);
    for (auto _ : state) train_step();
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

// B:16/T:1024/D:256, the shape the bidirectional and padded forwards are compared at.
void one_shape(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "D"});
    b->Args({16, 1024, 256});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

void directions_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "H", "side_by_side"});
    for (int together : {0, 1}) {
        b->Args({16, 1024, 256, together});
        b->Args({1, 4096, 256, together});
        b->Args({64, 256, 64, together});
    }
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

void loop_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "T", "H", "groups", "backward"});
    for (int backward : {0, 1}) {
        for (int groups : {0, 1, 2, 4}) b->Args({16, 1024, 256, groups, backward});
        for (int groups : {0, 1, 2, 4, 8}) b->Args({64, 256, 256, groups, backward});
    }
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
BENCHMARK_TEMPLATE(BM_ForwardBidirectional, GRU<float>, 3)->Name("BM_GRU_ForwardBidirectional")->Apply(one_shape);
BENCHMARK_TEMPLATE(BM_ForwardBidirectional, LSTM<float>, 4)->Name("BM_LSTM_ForwardBidirectional")->Apply(one_shape);
BENCHMARK_TEMPLATE(BM_ForwardLengths, GRU<float>, 3)->Name("BM_GRU_ForwardLengths")->Apply(one_shape);
BENCHMARK_TEMPLATE(BM_ForwardLengths, LSTM<float>, 4)->Name("BM_LSTM_ForwardLengths")->Apply(one_shape);
BENCHMARK(BM_GRU_Directions)->Apply(directions_shapes);
BENCHMARK_TEMPLATE(BM_Loop, CellKind::GRU)->Name("BM_GRU_Loop")->Apply(loop_shapes);
BENCHMARK_TEMPLATE(BM_Loop, CellKind::LSTM)->Name("BM_LSTM_Loop")->Apply(loop_shapes);
BENCHMARK_TEMPLATE(BM_Forward, RNN<float>, 1)->Name("BM_RNN_Forward")->Apply(sequence_shapes);
BENCHMARK_TEMPLATE(BM_Train, RNN<float>, 1)->Name("BM_RNN_Train")->Apply(sequence_shapes);
BENCHMARK(BM_StepProductEigen)->Apply(step_product_shapes);
BENCHMARK(BM_StepProductPacked)->Apply(step_product_shapes);
BENCHMARK_TEMPLATE(BM_Step, GRU<float>, 3)->Name("BM_GRU_Step")->Apply(step_shapes);
BENCHMARK_TEMPLATE(BM_Step, LSTM<float>, 4)->Name("BM_LSTM_Step")->Apply(step_shapes);
