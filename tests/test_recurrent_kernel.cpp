// The recurrent kernel (kernels/recurrent.hpp) against plain loops, one layer at a time:
// the time loop forward, backward through time and one streaming step, for every cell,
// in double on odd sizes, and bitwise equal on every team size; with lengths (a padded
// batch), the same loops stopping at each sequence's own end; two loops side by side.
#include <seqnn/kernels/recurrent.hpp>

#include "testing.hpp"

#include <cmath>
#include <limits>

namespace seqnn {
namespace {

using testing::random_matrix;
using testing::relative_error;

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// One layer's weights, inputs and initial state, in double; with `lengths` (empty: T
// each), sequence b runs steps [0, lengths[b]) and its other rows are padding (x and
// d_out there stay random: the kernel must not read them).
struct Problem {
    CellKind cell;
    Index B, T, I, H, G;
    bool bias;
    Matrix<double> x, w_ih, b_ih, w_hh, b_hh, h0, c0, d_out, dh_T, dc_T;
    std::vector<Index> lengths;

    Problem(CellKind c, Index batch, Index steps, Index input, Index hidden, bool with_bias, std::uint64_t seed = 7)
        : cell(c), B(batch), T(steps), I(input), H(hidden), G(gate_count(c)), bias(with_bias) {
        Rng rng(seed);
        x = random_matrix<double>(B * T, I, rng);
        w_ih = random_matrix<double>(G * H, I, rng, 1.0 / std::sqrt(double(I)));
        b_ih = random_matrix<double>(1, G * H, rng, 0.5);
        w_hh = random_matrix<double>(G * H, H, rng, 1.0 / std::sqrt(double(H)));
        b_hh = random_matrix<double>(1, G * H, rng, 0.5);
        h0 = random_matrix<double>(B, H, rng, 0.5);
        c0 = random_matrix<double>(B, H, rng, 0.5);
        d_out = random_matrix<double>(B * T, H, rng);
        dh_T = random_matrix<double>(B, H, rng);
        dc_T = random_matrix<double>(B, H, rng);
    }

    Index length(Index b) const { return lengths.empty() ? T : lengths[static_cast<std::size_t>(b)]; }
    const Index* lengths_or_null() const { return lengths.empty() ? nullptr : lengths.data(); }

    // x W_ih^T + b_ih, (B*T, G*H).
    Matrix<double> gates_in() const {
        Matrix<double> g = x * w_ih.transpose();
        if (bias) g.rowwise() += b_ih.row(0);
        return g;
    }
};

// The plain forward, straight from the equations: y (B*T, H), the final h and c, and
// the gate activations and the cell's saved tensors as the kernel keeps them.
struct PlainForward {
    Matrix<double> y, h, c, gates, cells, hidden_n;
};

PlainForward plain_forward(const Problem& p) {
    const Index H = p.H;
    const Matrix<double> gates_in = p.gates_in();
    // Padding rows stay zero in every output.
    PlainForward out{Matrix<double>::Zero(p.B * p.T, H), p.h0, p.c0, Matrix<double>::Zero(p.B * p.T, p.G * H),
                     Matrix<double>::Zero(p.B * p.T, H), Matrix<double>::Zero(p.B * p.T, H)};
    for (Index b = 0; b < p.B; ++b)
        for (Index t = 0; t < p.length(b); ++t) {
            const Index row = b * p.T + t;
            std::vector<double> hidden(static_cast<std::size_t>(p.G * H));  // h_{t-1} W_hh^T + b_hh
            for (Index j = 0; j < p.G * H; ++j) {
                double sum = p.bias ? p.b_hh(0, j) : 0.0;
                for (Index k = 0; k < H; ++k) sum += p.w_hh(j, k) * out.h(b, k);
                hidden[static_cast<std::size_t>(j)] = sum;
            }
            const auto in = [&](Index g, Index u) { return gates_in(row, g * H + u); };
            const auto hid = [&](Index g, Index u) { return hidden[static_cast<std::size_t>(g * H + u)]; };
            for (Index u = 0; u < H; ++u) {
                double h_new = 0;
                switch (p.cell) {
                    case CellKind::RNNTanh: h_new = std::tanh(in(0, u) + hid(0, u)); break;
                    case CellKind::RNNReLU: h_new = std::max(0.0, in(0, u) + hid(0, u)); break;
                    case CellKind::LSTM: {
                        const double i = sigmoid(in(0, u) + hid(0, u)), f = sigmoid(in(1, u) + hid(1, u));
                        const double g = std::tanh(in(2, u) + hid(2, u)), o = sigmoid(in(3, u) + hid(3, u));
                        out.c(b, u) = f * out.c(b, u) + i * g;
                        h_new = o * std::tanh(out.c(b, u));
                        out.gates(row, u) = i, out.gates(row, H + u) = f, out.gates(row, 2 * H + u) = g,
                                       out.gates(row, 3 * H + u) = o;
                        out.cells(row, u) = out.c(b, u);
                        break;
                    }
                    case CellKind::GRU: {
                        const double r = sigmoid(in(0, u) + hid(0, u)), z = sigmoid(in(1, u) + hid(1, u));
                        const double n = std::tanh(in(2, u) + r * hid(2, u));
                        h_new = (1 - z) * n + z * out.h(b, u);
                        out.gates(row, u) = r, out.gates(row, H + u) = z, out.gates(row, 2 * H + u) = n;
                        out.hidden_n(row, u) = hid(2, u);
                        break;
                    }
                }
                out.y(row, u) = h_new;
            }
            for (Index u = 0; u < H; ++u) out.h(b, u) = out.y(row, u);
        }
    return out;
}

// The plain backward through time: dL/d(gates_in), dL/d(hidden map) and dL/d(h_0, c_0).
struct PlainBackward {
    Matrix<double> d_gates, d_hidden, dh0, dc0;
};

PlainBackward plain_backward(const Problem& p, const PlainForward& f) {
    const Index H = p.H, GH = p.G * H;
    PlainBackward out{Matrix<double>::Zero(p.B * p.T, GH), Matrix<double>::Zero(p.B * p.T, GH), p.dh_T, p.dc_T};
    for (Index b = 0; b < p.B; ++b)
        for (Index t = p.length(b) - 1; t >= 0; --t) {  // the final state's gradient enters at the last step
            const Index row = b * p.T + t;
            const auto h_prev = [&](Index u) { return t == 0 ? p.h0(b, u) : f.y(row - 1, u); };
            std::vector<double> dh_prev(static_cast<std::size_t>(H), 0.0);
            for (Index u = 0; u < H; ++u) {
                const double dh = out.dh0(b, u) + p.d_out(row, u);
                const auto gate = [&](Index g) { return f.gates(row, g * H + u); };
                switch (p.cell) {
                    case CellKind::RNNTanh: out.d_gates(row, u) = dh * (1 - f.y(row, u) * f.y(row, u)); break;
                    case CellKind::RNNReLU: out.d_gates(row, u) = f.y(row, u) > 0 ? dh : 0.0; break;
                    case CellKind::LSTM: {
                        const double i = gate(0), fg = gate(1), g = gate(2), o = gate(3);
                        const double tc = std::tanh(f.cells(row, u));
                        const double c_prev = t == 0 ? p.c0(b, u) : f.cells(row - 1, u);
                        const double dc = out.dc0(b, u) + dh * o * (1 - tc * tc);
                        out.d_gates(row, u) = dc * g * i * (1 - i);
                        out.d_gates(row, H + u) = dc * c_prev * fg * (1 - fg);
                        out.d_gates(row, 2 * H + u) = dc * i * (1 - g * g);
                        out.d_gates(row, 3 * H + u) = dh * tc * o * (1 - o);
                        out.dc0(b, u) = dc * fg;
                        break;
                    }
                    case CellKind::GRU: {
                        const double r = gate(0), z = gate(1), n = gate(2);
                        const double dn = dh * (1 - z) * (1 - n * n);
                        out.d_gates(row, u) = dn * f.hidden_n(row, u) * r * (1 - r);
                        out.d_gates(row, H + u) = dh * (h_prev(u) - n) * z * (1 - z);
                        out.d_gates(row, 2 * H + u) = dn;
                        dh_prev[static_cast<std::size_t>(u)] += dh * z;
                        break;
                    }
                }
            }
            for (Index j = 0; j < GH; ++j)
                out.d_hidden(row, j) = p.cell == CellKind::GRU && j >= 2 * H ? out.d_gates(row, j) * f.gates(row, j - 2 * H)
                                                                              : out.d_gates(row, j);
            for (Index u = 0; u < H; ++u) {
                double sum = dh_prev[static_cast<std::size_t>(u)];
                for (Index j = 0; j < GH; ++j) sum += out.d_hidden(row, j) * p.w_hh(j, u);
                out.dh0(b, u) = sum;
            }
        }
    return out;
}

// What the kernel computes for a problem.
struct KernelRun {
    Matrix<double> y, h, c, gates, cells, hidden_n, d_gates, d_hidden, dh0, dc0;

    // Outputs start as NaN: the kernel must write every entry, padding included.
    explicit KernelRun(const Problem& p) {
        const Index BT = p.B * p.T, H = p.H, GH = p.G * H;
        const double nan = std::numeric_limits<double>::quiet_NaN();
        y = cells = hidden_n = Matrix<double>::Constant(BT, H, nan);
        gates = d_gates = d_hidden = Matrix<double>::Constant(BT, GH, nan);
        h = p.h0, c = p.c0, dh0 = p.dh_T, dc0 = p.dc_T;
    }
};

// The kernel's arguments for problem p, writing into r.
RecurrentForward<double> forward_args(const Problem& p, KernelRun& r) {
    RecurrentForward<double> f;
    f.cell = p.cell;
    f.input_size = p.I;
    f.x = p.x.data();
    f.w_ih = p.w_ih.data();
    f.b_ih = p.bias ? p.b_ih.data() : nullptr;
    f.w_hh = p.w_hh.data();
    f.b_hh = p.bias ? p.b_hh.data() : nullptr;
    f.gates = r.gates.data();
    f.h = r.h.data();
    f.c = r.c.data();
    f.y = r.y.data();
    f.cells = r.cells.data();
    f.hidden_n = r.hidden_n.data();
    f.lengths = p.lengths_or_null();
    return f;
}
RecurrentSaved<double> saved_args(const Problem& p, const KernelRun& r) {
    return {r.gates.data(), r.y.data(), p.h0.data(), p.c0.data(), r.cells.data(), r.hidden_n.data()};
}
RecurrentBackward<double> backward_args(const Problem& p, KernelRun& r) {
    return {p.d_out.data(), r.dh0.data(), r.dc0.data(), r.d_gates.data(),
            p.cell == CellKind::GRU ? r.d_hidden.data() : r.d_gates.data(), p.lengths_or_null()};
}

// The outputs a cell does not write, set as the plain loops leave them: the RNN keeps no
// gates, only the LSTM cells and only the GRU hidden_n and a d_hidden of its own.
void finish(const Problem& p, KernelRun& r) {
    if (p.cell != CellKind::GRU) r.d_hidden = r.d_gates;
    if (p.cell == CellKind::RNNTanh || p.cell == CellKind::RNNReLU) r.gates.setZero();
    if (p.cell != CellKind::LSTM) r.cells.setZero();
    if (p.cell != CellKind::GRU) r.hidden_n.setZero();
}

// The forward and backward of problem p on `threads` threads, the batch cut into `groups`
// groups of sequences with a team each.
KernelRun run_kernel(const Problem& p, int threads, int groups = 1) {
    KernelRun r(p);
    recurrent_forward<double>(forward_args(p, r), p.B, p.T, p.H, threads, groups);
    recurrent_backward<double>(p.cell, p.w_hh.data(), saved_args(p, r), backward_args(p, r), p.B, p.T, p.H, threads,
                               groups);
    finish(p, r);
    return r;
}

// Problems p and q (the same cell and sizes) side by side, each on `threads_each` (cut
// into `groups` groups of sequences when > 0).
std::pair<KernelRun, KernelRun> run_pair(const Problem& p, const Problem& q, int threads_each, int groups = 0) {
    KernelRun rp(p), rq(q);
    recurrent_forward_pair<double>(forward_args(p, rp), forward_args(q, rq), p.B, p.T, p.H, threads_each, groups);
    recurrent_backward_pair<double>(p.cell, p.w_hh.data(), saved_args(p, rp), backward_args(p, rp), q.w_hh.data(),
                                    saved_args(q, rq), backward_args(q, rq), p.B, p.T, p.H, threads_each, groups);
    finish(p, rp);
    finish(q, rq);
    return {rp, rq};
}

// Every output of two runs has the same bits.
void expect_same_bits(const KernelRun& a, const KernelRun& b, const std::string& what) {
    EXPECT_TRUE(a.y == b.y) << what;
    EXPECT_TRUE(a.h == b.h) << what;
    EXPECT_TRUE(a.c == b.c) << what;
    EXPECT_TRUE(a.gates == b.gates) << what;
    EXPECT_TRUE(a.cells == b.cells) << what;
    EXPECT_TRUE(a.hidden_n == b.hidden_n) << what;
    EXPECT_TRUE(a.d_gates == b.d_gates) << what;
    EXPECT_TRUE(a.d_hidden == b.d_hidden) << what;
    EXPECT_TRUE(a.dh0 == b.dh0) << what;
    EXPECT_TRUE(a.dc0 == b.dc0) << what;
}

// Every output of a run against the plain loops.
void expect_matches_plain(const Problem& p, const KernelRun& got, const std::string& what) {
    const PlainForward want = plain_forward(p);
    const PlainBackward want_d = plain_backward(p, want);
    EXPECT_LT(relative_error(got.y, want.y), 1e-13) << what;
    EXPECT_LT(relative_error(got.h, want.h), 1e-13) << what;
    EXPECT_LT(relative_error(got.d_gates, want_d.d_gates), 1e-12) << what;
    EXPECT_LT(relative_error(got.d_hidden, want_d.d_hidden), 1e-12) << what;
    EXPECT_LT(relative_error(got.dh0, want_d.dh0), 1e-12) << what;
    if (p.cell == CellKind::LSTM) {
        EXPECT_LT(relative_error(got.c, want.c), 1e-13) << what;
        EXPECT_LT(relative_error(got.cells, want.cells), 1e-13) << what;
        EXPECT_LT(relative_error(got.dc0, want_d.dc0), 1e-12) << what;
    }
    if (p.cell == CellKind::LSTM || p.cell == CellKind::GRU) {
        EXPECT_LT(relative_error(got.gates, want.gates), 1e-13) << what;
    }
    if (p.cell == CellKind::GRU) {
        EXPECT_LT(relative_error(got.hidden_n, want.hidden_n), 1e-13) << what;
    }
}

struct Case {
    CellKind cell;
    Index B, T, I, H;
    bool bias;
    std::string name;
};

class RecurrentKernel : public ::testing::TestWithParam<Case> {};

TEST_P(RecurrentKernel, ForwardAndBackwardMatchPlainLoopsInDouble) {
    const Case& c = GetParam();
    const Problem p(c.cell, c.B, c.T, c.I, c.H, c.bias);
    expect_matches_plain(p, run_kernel(p, 3), "3 threads");
}

TEST_P(RecurrentKernel, GivesTheSameBitsOnEveryTeamSize) {
    const Case& c = GetParam();
    const Problem p(c.cell, c.B, c.T, c.I, c.H, c.bias);
    const KernelRun one = run_kernel(p, 1);
    for (int threads : {2, 3, 7}) expect_same_bits(run_kernel(p, threads), one, std::to_string(threads) + " threads");
}

// Cutting the batch into groups of sequences, each run by a team of its own side by side,
// gives the same bits as one team over the whole batch (more groups than sequences: one
// sequence a group).
TEST_P(RecurrentKernel, GivesTheSameBitsWithTheBatchCutIntoGroups) {
    const Case& c = GetParam();
    const Problem p(c.cell, c.B, c.T, c.I, c.H, c.bias);
    const KernelRun one = run_kernel(p, 1);
    for (const auto& [threads, groups] : {std::pair{2, 2}, {4, 2}, {6, 3}, {3, 7}})
        expect_same_bits(run_kernel(p, threads, groups), one,
                         std::to_string(groups) + " groups on " + std::to_string(threads) + " threads");
}

// One streaming step of a two-layer stack equals two plain one-step layers on every team
// size, with the same bits on every team of two or more threads.
TEST_P(RecurrentKernel, StepOfAStackMatchesPlainLoopsOnEveryTeamSize) {
    const Case& c = GetParam();
    const Index B = c.B, H = c.H;
    // The plain answer: layer 0 on x, then layer 1 on layer 0's new h.
    const Problem layer0(c.cell, B, 1, c.I, H, c.bias, 11);
    Problem layer1(c.cell, B, 1, H, H, c.bias, 12);
    const PlainForward want0 = plain_forward(layer0);
    layer1.x = want0.h;
    const PlainForward want1 = plain_forward(layer1);

    const auto weights_of = [&](Index k) {
        const Problem& p = k == 0 ? layer0 : layer1;
        return CellWeights<double>{&p.w_ih, &p.w_hh, c.bias ? p.b_ih.data() : nullptr, c.bias ? p.b_hh.data() : nullptr};
    };
    Matrix<double> first_h;
    for (int threads : {1, 2, 3, 7}) {
        Matrix<double> h(2 * B, H), cs(2 * B, H), gates(B, layer0.G * H), hidden(B, layer0.G * H);
        h << layer0.h0, layer1.h0;
        cs << layer0.c0, layer1.c0;
        recurrent_step<double>(c.cell, 2, weights_of, layer0.x, h, c.cell == CellKind::LSTM ? &cs : nullptr, gates, hidden,
                               threads);
        EXPECT_LT(relative_error(h.topRows(B), want0.h), 1e-13) << threads << " threads";
        EXPECT_LT(relative_error(h.bottomRows(B), want1.h), 1e-13) << threads << " threads";
        if (c.cell == CellKind::LSTM) {
            EXPECT_LT(relative_error(cs.bottomRows(B), want1.c), 1e-13);
        }
        // A team of two or more sums each unit's products in one order, one thread in Eigen's.
        if (threads == 2) {
            first_h = h;
        } else if (threads > 2) {
            EXPECT_TRUE(h == first_h) << threads << " threads";
        }
    }
}

// H below, at and above the thread count and the packet size; B = 1; I = 1; with and
// without bias; T across several chunks of the input product.
INSTANTIATE_TEST_SUITE_P(
    Cells, RecurrentKernel,
    ::testing::Values(Case{CellKind::GRU, 3, 7, 5, 37, true, "Gru_H37"}, Case{CellKind::GRU, 1, 5, 1, 5, false, "Gru_B1_I1_H5_nobias"},
                      Case{CellKind::LSTM, 3, 6, 11, 37, true, "Lstm_H37"}, Case{CellKind::LSTM, 2, 4, 3, 100, false, "Lstm_H100_nobias"},
                      Case{CellKind::RNNTanh, 4, 5, 7, 19, true, "RnnTanh_H19"}, Case{CellKind::RNNReLU, 2, 6, 2, 33, true, "RnnRelu_H33"},
                      Case{CellKind::GRU, 5, 3, 64, 64, true, "Gru_H64"}, Case{CellKind::LSTM, 1, 9, 1, 3, true, "Lstm_B1_I1_H3"},
                      // T beyond one chunk of the input product (kChunkRows / B steps), with a short last chunk
                      Case{CellKind::LSTM, 5, 60, 4, 21, true, "Lstm_T60_three_chunks"},
                      Case{CellKind::GRU, 3, 100, 2, 9, false, "Gru_T100_three_chunks_nobias"}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// Lengths for a padded batch of B sequences of T steps, out of order: random in [1, T], the
// first sequence of a single step and the last of all T (B > 1); about T/2 for B = 1.
std::vector<Index> uneven_lengths(Index B, Index T, std::uint64_t seed = 3) {
    if (B == 1) return {(T + 1) / 2};
    Rng rng(seed);
    std::uniform_int_distribution<Index> draw(1, T);
    std::vector<Index> lengths(static_cast<std::size_t>(B));
    for (Index& n : lengths) n = draw(rng);
    lengths.front() = 1;
    lengths.back() = T;
    return lengths;
}

class RecurrentKernelPadded : public ::testing::TestWithParam<Case> {};

// A padded batch: the plain loops stop at each sequence's end (zeros past it, the final
// state and its gradient at the last step); every team size gives the same bits.
TEST_P(RecurrentKernelPadded, MatchesPlainLoopsStoppingAtEachEndOnEveryTeamSize) {
    const Case& c = GetParam();
    Problem p(c.cell, c.B, c.T, c.I, c.H, c.bias);
    p.lengths = uneven_lengths(c.B, c.T);
    const KernelRun one = run_kernel(p, 1);
    expect_matches_plain(p, one, "1 thread");
    for (Index b = 0; b < p.B; ++b) {
        const Index n = p.length(b), padding = p.T - n;
        EXPECT_TRUE(one.y.middleRows(b * p.T + n, padding).isZero(0)) << "y past the end of " << b;
        EXPECT_TRUE(one.d_gates.middleRows(b * p.T + n, padding).isZero(0)) << "d_gates past the end of " << b;
        EXPECT_TRUE(one.d_hidden.middleRows(b * p.T + n, padding).isZero(0)) << "d_hidden past the end of " << b;
    }
    for (int threads : {2, 3, 7}) expect_same_bits(run_kernel(p, threads), one, std::to_string(threads) + " threads");
    for (const auto& [threads, groups] : {std::pair{2, 2}, {6, 3}})
        expect_same_bits(run_kernel(p, threads, groups), one,
                         std::to_string(groups) + " groups on " + std::to_string(threads) + " threads");
}

// Each sequence of a padded batch gives the bits it gives run alone (B = 1, its own T):
// its rows take the same path whatever rows run beside them.
TEST_P(RecurrentKernelPadded, EachSequenceGivesTheBitsItGivesAlone) {
    const Case& c = GetParam();
    Problem p(c.cell, c.B, c.T, c.I, c.H, c.bias);
    p.lengths = uneven_lengths(c.B, c.T);
    const KernelRun batch = run_kernel(p, 2);
    for (Index b = 0; b < p.B; ++b) {
        const Index n = p.length(b);
        Problem alone(c.cell, 1, n, c.I, c.H, c.bias);
        alone.w_ih = p.w_ih, alone.b_ih = p.b_ih, alone.w_hh = p.w_hh, alone.b_hh = p.b_hh;
        alone.x = p.x.middleRows(b * p.T, n);
        alone.d_out = p.d_out.middleRows(b * p.T, n);
        alone.h0 = p.h0.row(b), alone.c0 = p.c0.row(b), alone.dh_T = p.dh_T.row(b), alone.dc_T = p.dc_T.row(b);
        const KernelRun one = run_kernel(alone, 2);
        const std::string what = "sequence " + std::to_string(b);
        EXPECT_TRUE(batch.y.middleRows(b * p.T, n) == one.y) << what;
        EXPECT_TRUE(batch.h.row(b) == one.h) << what;
        EXPECT_TRUE(batch.c.row(b) == one.c) << what;
        EXPECT_TRUE(batch.d_gates.middleRows(b * p.T, n) == one.d_gates) << what;
        EXPECT_TRUE(batch.dh0.row(b) == one.dh0) << what;
        EXPECT_TRUE(batch.dc0.row(b) == one.dc0) << what;
    }
}

// Lengths of T everywhere run exactly the loop without lengths.
TEST_P(RecurrentKernelPadded, FullLengthsGiveTheBitsOfNoLengths) {
    const Case& c = GetParam();
    Problem p(c.cell, c.B, c.T, c.I, c.H, c.bias);
    const KernelRun none = run_kernel(p, 3);
    p.lengths.assign(static_cast<std::size_t>(c.B), c.T);
    expect_same_bits(run_kernel(p, 3), none, "lengths all T");
}

// y may be some columns of a wider matrix (y_stride): the same bits, the other columns untouched.
TEST_P(RecurrentKernelPadded, WritesItsOutputIntoColumnsOfAWiderMatrix) {
    const Case& c = GetParam();
    Problem p(c.cell, c.B, c.T, c.I, c.H, c.bias);
    p.lengths = uneven_lengths(c.B, c.T);
    const KernelRun want = run_kernel(p, 2);
    KernelRun r(p);
    Matrix<double> wide = Matrix<double>::Constant(p.B * p.T, 2 * p.H + 3, 7.0);
    RecurrentForward<double> f = forward_args(p, r);
    f.y = wide.data() + p.H;  // columns [H, 2H)
    f.y_stride = wide.cols();
    recurrent_forward<double>(f, p.B, p.T, p.H, 2);
    EXPECT_TRUE(wide.middleCols(p.H, p.H) == want.y);
    EXPECT_TRUE(r.h == want.h);
    EXPECT_TRUE((wide.leftCols(p.H).array() == 7.0).all());
    EXPECT_TRUE((wide.rightCols(3).array() == 7.0).all());
}

// Two loops side by side (the directions of a bidirectional layer) give each loop's own
// bits, on teams of 1, 2 and 3 threads each.
TEST_P(RecurrentKernelPadded, TwoLoopsSideBySideGiveEachLoopsBits) {
    const Case& c = GetParam();
    Problem p(c.cell, c.B, c.T, c.I, c.H, c.bias, 21), q(c.cell, c.B, c.T, c.I, c.H, c.bias, 22);
    p.lengths = uneven_lengths(c.B, c.T, 4);
    q.lengths = uneven_lengths(c.B, c.T, 5);
    const KernelRun want_p = run_kernel(p, 1), want_q = run_kernel(q, 1);
    for (int threads_each : {1, 2, 3}) {
        const auto [got_p, got_q] = run_pair(p, q, threads_each);
        expect_same_bits(got_p, want_p, "first of the pair, " + std::to_string(threads_each) + " threads each");
        expect_same_bits(got_q, want_q, "second of the pair, " + std::to_string(threads_each) + " threads each");
    }
    const auto [got_p, got_q] = run_pair(p, q, 2, 2);
    expect_same_bits(got_p, want_p, "first of the pair, 2 groups of 1 thread each");
    expect_same_bits(got_q, want_q, "second of the pair, 2 groups of 1 thread each");
}

INSTANTIATE_TEST_SUITE_P(
    Cells, RecurrentKernelPadded,
    ::testing::Values(Case{CellKind::GRU, 3, 7, 5, 37, true, "Gru_H37"}, Case{CellKind::GRU, 1, 5, 1, 5, false, "Gru_B1_I1_H5_nobias"},
                      Case{CellKind::LSTM, 5, 6, 11, 37, true, "Lstm_H37"}, Case{CellKind::LSTM, 4, 4, 3, 100, false, "Lstm_H100_nobias"},
                      Case{CellKind::RNNTanh, 4, 5, 7, 19, true, "RnnTanh_H19"}, Case{CellKind::RNNReLU, 6, 6, 2, 33, true, "RnnRelu_H33"},
                      Case{CellKind::LSTM, 1, 9, 1, 3, true, "Lstm_B1_I1_H3"},
                      // H = 3 and 5: fewer packets of units than threads in a team
                      Case{CellKind::GRU, 7, 8, 4, 3, true, "Gru_B7_H3"},
                      // several chunks of the input product, the running rows shrinking inside them
                      Case{CellKind::LSTM, 9, 60, 4, 21, true, "Lstm_T60_chunks"},
                      Case{CellKind::GRU, 5, 100, 2, 9, false, "Gru_T100_chunks_nobias"},
                      Case{CellKind::RNNReLU, 3, 70, 3, 11, false, "RnnRelu_T70_chunks_nobias"}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// The per-step product on packed weights equals the plain product, whatever the rows and columns.
TEST(RecurrentKernelProduct, PackedProductMatchesPlainProduct) {
    constexpr Index P = recurrent_detail::kPacket<double>;
    Rng rng(5);
    // No rows; one tile of 1 to 6 rows, several tiles of uneven sizes (AVX-512: 7 = 3 + 4,
    // 13 = 4 + 4 + 5, 16 = 5 + 5 + 6; AVX2: a short last tile of 4); panels of every width from
    // one packet to kPanelPackets, and a short last panel.
    for (Index M : {0, 1, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17}) {
        for (Index K : {1, 7, 40}) {
            for (Index N = P; N < 2 * recurrent_detail::kPanelPackets * P; N += P) {
                const Matrix<double> a = random_matrix<double>(M, K, rng), w = random_matrix<double>(K, N, rng);
                const Matrix<double> bias = random_matrix<double>(1, N, rng);
                recurrent_detail::PackedPanels<double> packed;
                packed.pack(K, N, [&](Index k, Index j) { return w(k, j); });
                Matrix<double> c(M, N);
                recurrent_detail::gemm_packed<double>(a.data(), K, M, packed, c.data(), N, bias.data(), false);
                Matrix<double> want = a * w;
                want.rowwise() += bias.row(0);
                EXPECT_LT(relative_error(c, want), 1e-14) << M << "x" << K << "x" << N;
                recurrent_detail::gemm_packed<double>(a.data(), K, M, packed, c.data(), N, nullptr, true);  // c += a w
                EXPECT_LT(relative_error(c, Matrix<double>(want + a * w)), 1e-14) << M << "x" << K << "x" << N;
            }
        }
    }
}

}  // namespace
}  // namespace seqnn
