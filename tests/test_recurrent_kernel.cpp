// The recurrent kernel (kernels/recurrent.hpp) against plain loops, one layer at a time:
// the time loop forward, backward through time and one streaming step, for every cell,
// in double on odd sizes, and bitwise equal on every team size.
#include <seqnn/kernels/recurrent.hpp>

#include "testing.hpp"

#include <cmath>

namespace seqnn {
namespace {

using testing::random_matrix;
using testing::relative_error;

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// One layer's weights, inputs and initial state, in double.
struct Problem {
    CellKind cell;
    Index B, T, I, H, G;
    bool bias;
    Matrix<double> x, w_ih, b_ih, w_hh, b_hh, h0, c0, d_out, dh_T, dc_T;

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
    PlainForward out{Matrix<double>(p.B * p.T, H), p.h0, p.c0, gates_in, Matrix<double>(p.B * p.T, H),
                     Matrix<double>(p.B * p.T, H)};
    for (Index b = 0; b < p.B; ++b)
        for (Index t = 0; t < p.T; ++t) {
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
        for (Index t = p.T - 1; t >= 0; --t) {
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

// What the kernel computes for a problem on a team of `threads`.
struct KernelRun {
    Matrix<double> y, h, c, gates, cells, hidden_n, d_gates, d_hidden, dh0, dc0;
};

KernelRun run_kernel(const Problem& p, int threads) {
    const Index BT = p.B * p.T, H = p.H, GH = p.G * H;
    KernelRun r{Matrix<double>(BT, H), p.h0, p.c0, Matrix<double>(BT, GH), Matrix<double>(BT, H), Matrix<double>(BT, H),
                Matrix<double>(BT, GH), Matrix<double>(BT, GH), p.dh_T, p.dc_T};
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
    recurrent_forward<double>(f, p.B, p.T, H, threads);

    RecurrentSaved<double> saved{r.gates.data(), r.y.data(), p.h0.data(), p.c0.data(), r.cells.data(),
                                 r.hidden_n.data()};
    RecurrentBackward<double> d{p.d_out.data(), r.dh0.data(), r.dc0.data(), r.d_gates.data(),
                                p.cell == CellKind::GRU ? r.d_hidden.data() : r.d_gates.data()};
    recurrent_backward<double>(p.cell, p.w_hh.data(), saved, d, p.B, p.T, H, threads);
    if (p.cell != CellKind::GRU) r.d_hidden = r.d_gates;
    return r;
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
    const PlainForward want = plain_forward(p);
    const PlainBackward want_d = plain_backward(p, want);
    const KernelRun got = run_kernel(p, 3);
    EXPECT_LT(relative_error(got.y, want.y), 1e-13);
    EXPECT_LT(relative_error(got.h, want.h), 1e-13);
    EXPECT_LT(relative_error(got.d_gates, want_d.d_gates), 1e-12);
    EXPECT_LT(relative_error(got.d_hidden, want_d.d_hidden), 1e-12);
    EXPECT_LT(relative_error(got.dh0, want_d.dh0), 1e-12);
    if (c.cell == CellKind::LSTM) {
        EXPECT_LT(relative_error(got.c, want.c), 1e-13);
        EXPECT_LT(relative_error(got.cells, want.cells), 1e-13);
        EXPECT_LT(relative_error(got.dc0, want_d.dc0), 1e-12);
    }
    if (c.cell == CellKind::LSTM || c.cell == CellKind::GRU) {
        EXPECT_LT(relative_error(got.gates, want.gates), 1e-13);
    }
    if (c.cell == CellKind::GRU) {
        EXPECT_LT(relative_error(got.hidden_n, want.hidden_n), 1e-13);
    }
}

TEST_P(RecurrentKernel, GivesTheSameBitsOnEveryTeamSize) {
    const Case& c = GetParam();
    const Problem p(c.cell, c.B, c.T, c.I, c.H, c.bias);
    const KernelRun one = run_kernel(p, 1);
    for (int threads : {2, 3, 7}) {
        const KernelRun many = run_kernel(p, threads);
        EXPECT_TRUE(many.y == one.y) << threads << " threads";
        EXPECT_TRUE(many.h == one.h) << threads << " threads";
        EXPECT_TRUE(many.c == one.c) << threads << " threads";
        EXPECT_TRUE(many.d_gates == one.d_gates) << threads << " threads";
        EXPECT_TRUE(many.d_hidden == one.d_hidden) << threads << " threads";
        EXPECT_TRUE(many.dh0 == one.dh0) << threads << " threads";
        EXPECT_TRUE(many.dc0 == one.dc0) << threads << " threads";
    }
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

// The per-step product on packed weights equals the plain product, whatever the rows and columns.
TEST(RecurrentKernelProduct, PackedProductMatchesPlainProduct) {
    Rng rng(5);
    for (Index M : {1, 3, 9, 17}) {
        for (Index K : {1, 7, 40}) {
            const Index N = 3 * recurrent_detail::kPacket<double>;  // two panels: 2 packets and 1
            const Matrix<double> a = random_matrix<double>(M, K, rng), w = random_matrix<double>(K, N, rng);
            const Matrix<double> bias = random_matrix<double>(1, N, rng);
            recurrent_detail::PackedPanels<double> packed;
            packed.pack(K, N, [&](Index k, Index j) { return w(k, j); });
            Matrix<double> c(M, N);
            recurrent_detail::gemm_packed<double>(a.data(), K, M, packed, c.data(), N, bias.data(), false);
            Matrix<double> want = a * w;
            want.rowwise() += bias.row(0);
            EXPECT_LT(relative_error(c, want), 1e-14) << M << "x" << K;
            recurrent_detail::gemm_packed<double>(a.data(), K, M, packed, c.data(), N, nullptr, true);  // c += a w
            EXPECT_LT(relative_error(c, Matrix<double>(want + a * w)), 1e-14) << M << "x" << K;
        }
    }
}

}  // namespace
}  // namespace seqnn
