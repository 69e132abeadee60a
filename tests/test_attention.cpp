// The attention kernel (kernels/attention.hpp) and rotary embeddings (kernels/rope.hpp):
// the fast tiled kernel against a plain full-softmax reference in double, masks, gradients,
// threads, float, bounded scratch memory and bad input.
#include "testing.hpp"

#include <seqnn/kernels/attention.hpp>
#include <seqnn/kernels/rope.hpp>

#include <atomic>
#include <complex>
#include <cstdlib>
#include <limits>
#include <new>
#include <vector>

// The kernel's own scratch comes from the aligned operator new, so g_bytes sees it.
#include "allocation_counter.hpp"

using namespace seqnn;
using seqnn::testing::random_matrix;
using seqnn::testing::relative_error;

namespace {

// One attention problem: shape, options, lengths and random q, k, v.
template <typename Scalar>
struct Problem {
    AttentionShape shape;
    AttentionOptions options;
    std::vector<Index> lengths;
    Matrix<Scalar> q, k, v;

    Problem(AttentionShape s, AttentionOptions o, std::vector<Index> lens, Rng& rng, double scale = 1.0)
        : shape(s), options(o), lengths(std::move(lens)) {
        const Index E = s.model_dim();
        q = random_matrix<Scalar>(s.batch * s.q_steps, E, rng, scale);
        k = random_matrix<Scalar>(s.batch * s.kv_rows(), E, rng, scale);
        v = random_matrix<Scalar>(s.batch * s.kv_rows(), E, rng, scale);
    }
    template <typename Other>
    explicit Problem(const Problem<Other>& p)
        : shape(p.shape), options(p.options), lengths(p.lengths), q(p.q.template cast<Scalar>()),
          k(p.k.template cast<Scalar>()), v(p.v.template cast<Scalar>()) {}

    Matrix<Scalar> forward(Matrix<Scalar>* lse = nullptr) const {
        Matrix<Scalar> out(q.rows(), q.cols());
        attention_forward<Scalar>(shape, options, q, k, v, out, lse, lengths);
        return out;
    }
};

// The plain reference: for every (sequence, head, query) the full row of scores, a
// softmax in double and the weighted sum of values. Also dq, dk, dv for a given dout,
// from the full T x T matrices (P, dP = dO V^T, dS = P * (dP - rowsum(dO * O))).
struct Reference {
    Matrix<double> out, dq, dk, dv;
};

Reference reference_attention(const Problem<double>& p, const Matrix<double>* dout = nullptr) {
    const AttentionShape& s = p.shape;
    const Index H = s.heads, Dh = s.head_dim, Tq = s.q_steps, Tk = s.kv_steps, L = s.kv_rows();
    const double scale = p.options.scale > 0 ? p.options.scale : 1.0 / std::sqrt(double(Dh));
    Reference r;
    r.out = Matrix<double>::Zero(p.q.rows(), p.q.cols());
    r.dq = Matrix<double>::Zero(p.q.rows(), p.q.cols());
    r.dk = Matrix<double>::Zero(p.k.rows(), p.k.cols());
    r.dv = Matrix<double>::Zero(p.v.rows(), p.v.cols());
    for (Index b = 0; b < s.batch; ++b) {
        const Index len = p.lengths.empty() ? Tk : std::min(Tk, p.lengths[b]);
        for (Index h = 0; h < H; ++h) {
            Matrix<double> P = Matrix<double>::Zero(Tq, Tk);
            for (Index i = 0; i < Tq; ++i) {
                std::vector<double> score(Tk, -std::numeric_limits<double>::infinity());
                double mx = -std::numeric_limits<double>::infinity();
                for (Index j = 0; j < len; ++j) {
                    if (p.options.causal && j > s.q_offset + i) continue;
                    double dot = 0;
                    for (Index d = 0; d < Dh; ++d) dot += p.q(b * Tq + i, h * Dh + d) * p.k(b * L + j, h * Dh + d);
                    score[j] = dot * scale;
                    mx = std::max(mx, score[j]);
                }
                if (mx == -std::numeric_limits<double>::infinity()) continue;  // no key: out = 0
                double sum = 0;
                for (Index j = 0; j < Tk; ++j) sum += (P(i, j) = std::exp(score[j] - mx));
                for (Index j = 0; j < Tk; ++j) P(i, j) /= sum;
                for (Index j = 0; j < Tk; ++j)
                    for (Index d = 0; d < Dh; ++d) r.out(b * Tq + i, h * Dh + d) += P(i, j) * p.v(b * L + j, h * Dh + d);
            }
            if (!dout) continue;
            for (Index i = 0; i < Tq; ++i) {
                double rowdot = 0;
                for (Index d = 0; d < Dh; ++d) rowdot += (*dout)(b * Tq + i, h * Dh + d) * r.out(b * Tq + i, h * Dh + d);
                for (Index j = 0; j < Tk; ++j) {
                    double dp = 0;
                    for (Index d = 0; d < Dh; ++d) dp += (*dout)(b * Tq + i, h * Dh + d) * p.v(b * L + j, h * Dh + d);
                    const double ds = P(i, j) * (dp - rowdot);
                    for (Index d = 0; d < Dh; ++d) {
                        r.dv(b * L + j, h * Dh + d) += P(i, j) * (*dout)(b * Tq + i, h * Dh + d);
                        r.dq(b * Tq + i, h * Dh + d) += scale * ds * p.k(b * L + j, h * Dh + d);
                        r.dk(b * L + j, h * Dh + d) += scale * ds * p.q(b * Tq + i, h * Dh + d);
                    }
                }
            }
        }
    }
    return r;
}

struct Case {
    const char* name;
    AttentionShape shape;
    AttentionOptions options;
    std::vector<Index> lengths;
};

// Odd sizes: B=3, H=3, E=24; T=1 and 37; small blocks so that a sequence spans several
// tiles with ragged edges, and the default blocks; a KV-cache continuation.
std::vector<Case> cases() {
    const AttentionOptions small{.causal = true, .q_block = 8, .kv_block = 16};
    const AttentionOptions small_full{.causal = false, .q_block = 8, .kv_block = 16};
    return {
        {"causal_T37_small_blocks", {3, 3, 8, 37, 37}, small, {}},
        {"full_T37_small_blocks", {3, 3, 8, 37, 37}, small_full, {}},
        {"causal_T37_default_blocks", {3, 3, 8, 37, 37}, {}, {}},
        {"causal_T1", {3, 3, 8, 1, 1}, small, {}},
        {"full_T1", {3, 3, 8, 1, 1}, small_full, {}},
        {"causal_lengths", {3, 3, 8, 37, 37}, small, {37, 20, 1}},
        {"full_lengths", {3, 3, 8, 37, 37}, small_full, {5, 37, 30}},
        {"cache_continuation", {3, 3, 8, 5, 42, 50, 37}, small, {}},
        {"cache_one_query", {3, 3, 8, 1, 42, 50, 41}, small, {}},
        {"explicit_scale", {2, 2, 5, 19, 19}, {.causal = true, .scale = 0.7, .q_block = 4, .kv_block = 7}, {}},
    };
}

}  // namespace

TEST(AttentionKernel, ForwardMatchesFullSoftmaxReferenceInDouble) {
    for (const Case& c : cases()) {
        Rng rng(11);
        const Problem<double> p(c.shape, c.options, c.lengths, rng, 2.0);
        Matrix<double> lse;
        const Matrix<double> out = p.forward(&lse);
        const double err = relative_error(out, reference_attention(p).out);
        std::printf("  %-28s forward rel.err %.2e\n", c.name, err);
        EXPECT_LT(err, 1e-13) << c.name;
        EXPECT_EQ(lse.rows(), c.shape.batch * c.shape.q_steps);
        EXPECT_EQ(lse.cols(), c.shape.heads);
    }
}

TEST(AttentionKernel, BackwardMatchesFullSoftmaxReferenceInDouble) {
    for (const Case& c : cases()) {
        Rng rng(12);
        const Problem<double> p(c.shape, c.options, c.lengths, rng, 2.0);
        const Matrix<double> dout = random_matrix<double>(p.q.rows(), p.q.cols(), rng);
        Matrix<double> lse;
        const Matrix<double> out = p.forward(&lse);
        Matrix<double> dq(p.q.rows(), p.q.cols()), dk(p.k.rows(), p.k.cols()), dv(p.v.rows(), p.v.cols());
        attention_backward<double>(p.shape, p.options, p.q, p.k, p.v, out, lse, dout, dq, dk, dv, p.lengths);
        const Reference r = reference_attention(p, &dout);
        const double eq = relative_error(dq, r.dq), ek = relative_error(dk, r.dk), ev = relative_error(dv, r.dv);
        std::printf("  %-28s dq %.2e dk %.2e dv %.2e\n", c.name, eq, ek, ev);
        EXPECT_LT(eq, 1e-13) << c.name;
        EXPECT_LT(ek, 1e-13) << c.name;
        EXPECT_LT(ev, 1e-13) << c.name;
    }
}

// Finite differences of L = sum(out .* W) on a tiny causal, length-masked cache problem.
TEST(AttentionKernel, GradientsMatchFiniteDifferences) {
    Rng rng(13);
    for (const Case& c : {Case{"causal", {2, 2, 3, 5, 5}, {.causal = true, .q_block = 2, .kv_block = 3}, {5, 3}},
                          Case{"cache", {2, 2, 3, 3, 7, 9, 4}, {.causal = true, .q_block = 2, .kv_block = 3}, {}},
                          Case{"full", {2, 2, 3, 4, 6}, {.causal = false, .q_block = 3, .kv_block = 4}, {6, 2}}}) {
        Problem<double> p(c.shape, c.options, c.lengths, rng, 1.5);
        const Matrix<double> w = random_matrix<double>(p.q.rows(), p.q.cols(), rng);
        Matrix<double> lse;
        const Matrix<double> out = p.forward(&lse);
        Matrix<double> dq(p.q.rows(), p.q.cols()), dk(p.k.rows(), p.k.cols()), dv(p.v.rows(), p.v.cols());
        attention_backward<double>(p.shape, p.options, p.q, p.k, p.v, out, lse, w, dq, dk, dv, p.lengths);
        const auto loss = [&] { return (p.forward().array() * w.array()).sum(); };
        const double eq = seqnn::testing::finite_difference_error(p.q, dq, loss);
        const double ek = seqnn::testing::finite_difference_error(p.k, dk, loss);
        const double ev = seqnn::testing::finite_difference_error(p.v, dv, loss);
        std::printf("  %-8s grad q %.2e k %.2e v %.2e\n", c.name, eq, ek, ev);
        EXPECT_LT(eq, 1e-7);
        EXPECT_LT(ek, 1e-7);
        EXPECT_LT(ev, 1e-7);
    }
}

// Changing the future (q, k, v at t >= 20) leaves every output before t = 20 unchanged.
TEST(AttentionKernel, CausalMaskHidesTheFuture) {
    Rng rng(14);
    Problem<double> p({3, 3, 8, 37, 37}, {.causal = true, .q_block = 8, .kv_block = 16}, {}, rng);
    const Matrix<double> before = p.forward();
    for (Index b = 0; b < 3; ++b) {
        p.q.middleRows(b * 37 + 20, 17).setRandom();
        p.k.middleRows(b * 37 + 20, 17) *= 5.0;
        p.v.middleRows(b * 37 + 20, 17).setRandom();
    }
    const Matrix<double> after = p.forward();
    for (Index b = 0; b < 3; ++b) EXPECT_EQ(after.middleRows(b * 37, 20), before.middleRows(b * 37, 20)) << "b=" << b;
    EXPECT_GT(relative_error(after, before), 1e-3);  // the future itself did change
}

// Keys and values past a sequence's length do not reach any output.
TEST(AttentionKernel, LengthMaskHidesPadding) {
    for (bool causal : {true, false}) {
        Rng rng(15);
        Problem<double> p({3, 3, 8, 37, 37}, {.causal = causal, .q_block = 8, .kv_block = 16}, {37, 11, 24}, rng);
        const Matrix<double> before = p.forward();
        for (Index b = 0; b < 3; ++b) {
            const Index len = p.lengths[b];
            p.k.middleRows(b * 37 + len, 37 - len).setRandom();
            p.v.middleRows(b * 37 + len, 37 - len).setConstant(1e6);
        }
        EXPECT_EQ(p.forward(), before) << "causal=" << causal;
    }
}

// A sequence of length 0 sees no key: its output is 0 and its gradients are 0.
TEST(AttentionKernel, EmptySequenceGivesZeros) {
    Rng rng(16);
    Problem<double> p({2, 2, 4, 6, 6}, {.causal = false}, {0, 6}, rng);
    Matrix<double> lse;
    const Matrix<double> out = p.forward(&lse);
    EXPECT_TRUE(out.topRows(6).isZero(0));
    EXPECT_FALSE(out.bottomRows(6).isZero(0));
    Matrix<double> dq(12, 8), dk(12, 8), dv(12, 8);
    attention_backward<double>(p.shape, p.options, p.q, p.k, p.v, out, lse, Matrix<double>::Ones(12, 8), dq, dk, dv,
                               p.lengths);
    EXPECT_TRUE(dq.topRows(6).isZero(0));
    EXPECT_TRUE(dk.topRows(6).isZero(0));
    EXPECT_TRUE(dv.topRows(6).isZero(0));
    EXPECT_TRUE(dq.allFinite() && dk.allFinite() && dv.allFinite());
}

// Enough work items for both threads; each item is computed the same way whatever the
// thread count, so the results agree to the last bit (checked to 1e-15 to leave room).
TEST(AttentionKernel, ParallelEqualsSingleThread) {
    Rng rng(17);
    const Problem<double> p({3, 3, 8, 300, 300}, {.causal = true, .q_block = 32, .kv_block = 64}, {300, 150, 299}, rng);
    const Matrix<double> dout = random_matrix<double>(p.q.rows(), p.q.cols(), rng);
    auto run = [&](int threads, Matrix<double>& dq, Matrix<double>& dk, Matrix<double>& dv) {
        set_num_threads(threads);
        Matrix<double> lse;
        const Matrix<double> out = p.forward(&lse);
        dq.resize(p.q.rows(), p.q.cols());
        dk.resize(p.k.rows(), p.k.cols());
        dv.resize(p.v.rows(), p.v.cols());
        attention_backward<double>(p.shape, p.options, p.q, p.k, p.v, out, lse, dout, dq, dk, dv, p.lengths);
        return out;
    };
    Matrix<double> dq1, dk1, dv1, dq2, dk2, dv2;
    const Matrix<double> out1 = run(1, dq1, dk1, dv1);
    const Matrix<double> out2 = run(2, dq2, dk2, dv2);
    set_num_threads(2);
    EXPECT_LT(relative_error(out2, out1), 1e-15);
    EXPECT_LT(relative_error(dq2, dq1), 1e-15);
    EXPECT_LT(relative_error(dk2, dk1), 1e-15);
    EXPECT_LT(relative_error(dv2, dv1), 1e-15);
}

TEST(AttentionKernel, FloatAgreesWithDouble) {
    Rng rng(18);
    const Problem<double> pd({3, 3, 8, 300, 300}, {}, {300, 77, 201}, rng, 2.0);
    const Problem<float> pf(pd);
    const Matrix<double> dout = random_matrix<double>(pd.q.rows(), pd.q.cols(), rng);
    Matrix<double> lse_d;
    Matrix<float> lse_f;
    const Matrix<double> out_d = pd.forward(&lse_d);
    const Matrix<float> out_f = pf.forward(&lse_f);
    EXPECT_LT(relative_error(out_f, out_d), seqnn::testing::float_tolerance(300));
    EXPECT_LT(relative_error(lse_f, lse_d), seqnn::testing::float_tolerance(300));
    Matrix<double> dq(900, 24), dk(900, 24), dv(900, 24);
    Matrix<float> dqf(900, 24), dkf(900, 24), dvf(900, 24);
    attention_backward<double>(pd.shape, pd.options, pd.q, pd.k, pd.v, out_d, lse_d, dout, dq, dk, dv, pd.lengths);
    const Matrix<float> dout_f = dout.cast<float>();
    attention_backward<float>(pf.shape, pf.options, pf.q, pf.k, pf.v, out_f, lse_f, dout_f, dqf, dkf, dvf, pf.lengths);
    EXPECT_LT(relative_error(dqf, dq), seqnn::testing::float_tolerance(300));
    EXPECT_LT(relative_error(dkf, dk), seqnn::testing::float_tolerance(300));
    EXPECT_LT(relative_error(dvf, dv), seqnn::testing::float_tolerance(300));
}

// q, k, v as column blocks of one fused (B*T, 3E) matrix, as the Transformer block passes
// them: the same result as separate matrices.
TEST(AttentionKernel, AcceptsColumnBlocksOfAFusedMatrix) {
    Rng rng(19);
    const Problem<double> p({3, 3, 8, 37, 37}, {.q_block = 8, .kv_block = 16}, {}, rng);
    Matrix<double> qkv(111, 72);
    qkv << p.q, p.k, p.v;
    Matrix<double> out(111, 24);
    attention_forward<double>(p.shape, p.options, qkv.leftCols(24), qkv.middleCols(24, 24), qkv.rightCols(24), out);
    EXPECT_LT(relative_error(out, p.forward()), 1e-15);  // the same math; GEMM rounding may differ with the stride
}

// B:1/T:16384/H:8/Dh:64 -- the long-context shape -- asks for a scratch of a few
// tiles per thread, far below one T x T score matrix; a real forward at T = 16384 requests
// no more heap than that through operator new (the kernel's only allocation).
TEST(AttentionKernel, ScratchMemoryDoesNotGrowWithTSquared) {
    const AttentionShape big{.batch = 1, .heads = 8, .head_dim = 64, .q_steps = 16384, .kv_steps = 16384};
    const double scratch = double(attention_workspace_size(big, {}, 16)) * sizeof(float);  // 16 threads
    const double tt = 16384.0 * 16384.0 * sizeof(float);
    std::printf("  scratch for 16 threads: %.0f KiB; one T x T float matrix: %.0f MiB\n", scratch / 1024,
                tt / (1 << 20));
    EXPECT_LT(scratch, 4 << 20);
    EXPECT_LT(scratch, tt / 250);

#ifdef NDEBUG
    const Index T = 16384;  // about a second in Release
#else
    const Index T = 2048;  // Debug and the sanitizers: the same check, smaller
#endif
    const AttentionShape s{.batch = 1, .heads = 1, .head_dim = 64, .q_steps = T, .kv_steps = T};
    Rng rng(20);
    const Matrix<float> q = random_matrix<float>(T, 64, rng), k = random_matrix<float>(T, 64, rng),
                        v = random_matrix<float>(T, 64, rng);
    Matrix<float> out(T, 64), lse(T, 1);
    g_bytes = 0;
    g_counting = true;
    attention_forward<float>(s, {}, q, k, v, out, &lse);
    g_counting = false;
    const long long bytes = g_bytes.load();
    std::printf("  T=%ld forward requested %lld bytes; workspace %ld bytes; T x T would be %.0f MiB\n", long(T), bytes,
                long(attention_workspace_size(s) * Index(sizeof(float))), double(T) * double(T) * 4 / (1 << 20));
    EXPECT_LE(bytes, attention_workspace_size(s) * Index(sizeof(float)));
    EXPECT_TRUE(out.allFinite());
    // Spot check the last row (it sees every key) against a direct softmax in double.
    const Eigen::VectorXd scores = (k.cast<double>() * q.row(T - 1).cast<double>().transpose()) / 8.0;
    const Eigen::VectorXd w = (scores.array() - scores.maxCoeff()).exp();
    const Eigen::RowVectorXd expected = (w.transpose() * v.cast<double>()) / w.sum();
    EXPECT_LT(relative_error(out.row(T - 1), expected), 1e-5);
}

// With a workspace from the caller the kernel allocates nothing at all (the KV-cache step).
TEST(AttentionKernel, CallerWorkspaceMeansNoAllocation) {
    const AttentionShape s{.batch = 2, .heads = 3, .head_dim = 8, .q_steps = 1, .kv_steps = 30, .kv_capacity = 40,
                           .q_offset = 29};
    Rng rng(21);
    const Matrix<float> q = random_matrix<float>(2, 24, rng), k = random_matrix<float>(80, 24, rng),
                        v = random_matrix<float>(80, 24, rng);
    Matrix<float> out(2, 24);
    std::vector<float> ws(static_cast<std::size_t>(attention_workspace_size(s)));
    g_bytes = 0;
    g_counting = true;
    attention_forward<float>(s, {}, q, k, v, out, nullptr, {}, ws);
    g_counting = false;
    EXPECT_EQ(g_bytes.load(), 0);
}

TEST(AttentionKernel, BadInputRaisesShapeError) {
    using seqnn::testing::expect_shape_error;
    const AttentionShape s{.batch = 3, .heads = 3, .head_dim = 8, .q_steps = 5, .kv_steps = 5};
    const Matrix<double> q = Matrix<double>::Zero(15, 24), wrong = Matrix<double>::Zero(14, 24);
    Matrix<double> out(15, 24), bad_out(15, 23);
    expect_shape_error([&] { attention_forward<double>(s, {}, wrong, q, q, out); },
                       {"attention_forward", "q", "(14, 24)", "(15, 24)", "B=3"});
    expect_shape_error([&] { attention_forward<double>(s, {}, q, q, wrong, out); }, {"attention_forward", "v", "(14, 24)"});
    expect_shape_error([&] { attention_forward<double>(s, {}, q, q, q, bad_out); }, {"attention_forward", "out", "(15, 23)"});
    const std::vector<Index> two{1, 2};
    expect_shape_error([&] { attention_forward<double>(s, {}, q, q, q, out, nullptr, two); },
                       {"attention_forward", "2 lengths", "B=3"});
    AttentionShape zero = s;
    zero.q_steps = 0;
    expect_shape_error([&] { attention_forward<double>(zero, {}, q, q, q, out); }, {"attention_forward", "Tq=0"});
    AttentionShape small_cache = s;
    small_cache.kv_capacity = 4;
    expect_shape_error([&] { attention_forward<double>(small_cache, {}, q, q, q, out); },
                       {"attention_forward", "capacity=4"});
    Matrix<double> lse(15, 2), d(15, 24);
    expect_shape_error([&] { attention_backward<double>(s, {}, q, q, q, q, lse, q, d, d, d); },
                       {"attention_backward", "lse", "(15, 2)", "(15, 3)"});
}

// ---- Rotary embeddings ----

namespace {
// RoPE as complex multiplication, in double: pair (x_i, x_{i+Dh/2}) times e^{i p theta_i}.
Matrix<double> reference_rope(const Matrix<double>& x, Index T, Index H, Index Dh, Index offset, double base) {
    Matrix<double> y = x;
    for (Index r = 0; r < x.rows(); ++r)
        for (Index h = 0; h < H; ++h)
            for (Index i = 0; i < Dh / 2; ++i) {
                const double angle = double(offset + r % T) * std::pow(base, -2.0 * double(i) / double(Dh));
                const std::complex<double> z(x(r, h * Dh + i), x(r, h * Dh + i + Dh / 2));
                const std::complex<double> w = z * std::polar(1.0, angle);
                y(r, h * Dh + i) = w.real();
                y(r, h * Dh + i + Dh / 2) = w.imag();
            }
    return y;
}
}  // namespace

TEST(Rope, MatchesComplexRotationReference) {
    Rng rng(30);
    const Matrix<double> x = random_matrix<double>(3 * 37, 24, rng);
    for (Index offset : {0, 5, 1000}) {
        Matrix<double> y = x;
        rope_forward<double>(y, 37, 3, 8, offset);
        EXPECT_LT(relative_error(y, reference_rope(x, 37, 3, 8, offset, 10000.0)), 1e-14) << offset;
    }
    Matrix<float> yf = x.cast<float>();
    rope_forward<float>(yf, 37, 3, 8, 100000);  // large positions: the angle is taken in double
    EXPECT_LT(relative_error(yf, reference_rope(x, 37, 3, 8, 100000, 10000.0)), 1e-6);
}

// The point of RoPE: a query at p1 and a key at p2 interact through p1 - p2 only.
TEST(Rope, ScoresDependOnRelativePositionOnly) {
    Rng rng(31);
    const Matrix<double> q = random_matrix<double>(1, 16, rng), k = random_matrix<double>(1, 16, rng);
    auto score = [&](Index pq, Index pk) {
        Matrix<double> a = q, b = k;
        rope_forward<double>(a, 1, 1, 16, pq);
        rope_forward<double>(b, 1, 1, 16, pk);
        return a.row(0).dot(b.row(0));
    };
    EXPECT_NEAR(score(7, 3), score(104, 100), 1e-12);
    EXPECT_NEAR(score(0, 0), q.row(0).dot(k.row(0)), 1e-12);
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
    Rng rng(32);
    const Matrix<double> x = random_matrix<double>(2 * 5, 12, rng);
    const Matrix<double> w = random_matrix<double>(2 * 5, 12, rng);
    Matrix<double> x_mut = x;
    const auto loss = [&] {
        Matrix<double> y = x_mut;
        rope_forward<double>(y, 5, 2, 6, 3);
        return (y.array() * w.array()).sum();
    };
    Matrix<double> dx = w;
    rope_backward<double>(dx, 5, 2, 6, 3);
    const double err = seqnn::testing::finite_difference_error(x_mut, dx, loss);
    std::printf("  grad rope input rel.err %.2e\n", err);
    EXPECT_LT(err, 1e-8);
}

TEST(Rope, BadInputRaisesShapeError) {
    using seqnn::testing::expect_shape_error;
    Matrix<double> x(10, 12);
    expect_shape_error([&] { rope_forward<double>(x, 5, 2, 5, 0); }, {"RoPE", "head_dim", "5"});
    expect_shape_error([&] { rope_forward<double>(x, 3, 2, 6, 0); }, {"RoPE", "(10, 12)", "T=3"});
    expect_shape_error([&] { rope_forward<double>(x, 5, 3, 6, 0); }, {"RoPE", "(10, 12)", "H=3"});
}
