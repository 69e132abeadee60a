// The scan kernel (kernels/scan.hpp): linear-space forward and reverse scans against
// plain loops and finite differences, parallel == sequential with both splits forced
// on odd shapes, the log-space scan against the linear one, padded batches (lengths)
// against a = 1, b = 0 past each end, the reverse direction against the forward scan of
// each sequence reversed, fp32 accuracy at T=65,536 in both spaces (the difference
// documented, not guessed) and bad input.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>

#include <cstdio>
#include <limits>
#include <span>
#include <string>
#include <vector>

using namespace seqnn;
using seqnn::testing::expect_shape_error;
using seqnn::testing::relative_error;

namespace {

using seqnn::testing::ThreadGuard;

template <typename Scalar>
Matrix<Scalar> uniform(Index rows, Index cols, double lo, double hi, Rng& rng) {
    std::uniform_real_distribution<double> dist(lo, hi);
    Matrix<Scalar> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(dist(rng));
    return m;
}

// Decay factors with a range of memories: channel c draws a from (1 - 2^-(c % 10), 1),
// so some channels forget in a step and some remember for a thousand.
template <typename Scalar>
Matrix<Scalar> decays(Index rows, Index cols, Rng& rng) {
    std::uniform_real_distribution<double> dist(0.0, 1.0);
    Matrix<Scalar> m(rows, cols);
    for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < cols; ++c) m(r, c) = static_cast<Scalar>(1.0 - dist(rng) * std::ldexp(1.0, -int(c % 10)));
    return m;
}

// h_t = a_t h_{t-1} + b_t with scalar loops, in double.
Matrix<double> reference_forward(const Matrix<double>& a, const Matrix<double>& b, const Matrix<double>* h0,
                                 Index B, Index T) {
    const Index D = a.cols();
    Matrix<double> h(B * T, D);
    for (Index s = 0; s < B; ++s)
        for (Index c = 0; c < D; ++c) {
            double x = h0 ? (*h0)(s, c) : 0.0;
            for (Index t = 0; t < T; ++t) h(s * T + t, c) = x = a(s * T + t, c) * x + b(s * T + t, c);
        }
    return h;
}

// The reverse recurrence with scalar loops: g_t = dh_t + a_{t+1} g_{t+1}.
void reference_backward(const Matrix<double>& dh, const Matrix<double>* dh_last, const Matrix<double>& a,
                        const Matrix<double>& h, const Matrix<double>* h0, Index B, Index T, Matrix<double>& da,
                        Matrix<double>& db, Matrix<double>& dh0) {
    const Index D = a.cols();
    da.resize(B * T, D);
    db.resize(B * T, D);
    dh0.resize(B, D);
    for (Index s = 0; s < B; ++s)
        for (Index c = 0; c < D; ++c) {
            double g = dh_last ? (*dh_last)(s, c) : 0.0;  // g_T := dh_last, a_T := 1
            double next_a = 1.0;
            for (Index t = T - 1; t >= 0; --t) {
                const Index r = s * T + t;
                g = dh(r, c) + next_a * g;
                db(r, c) = g;
                da(r, c) = g * (t > 0 ? h(r - 1, c) : (h0 ? (*h0)(s, c) : 0.0));
                next_a = a(r, c);
            }
            dh0(s, c) = next_a * g;
        }
}

template <typename Scalar>
struct Forward {
    Matrix<Scalar> h, last;
};

template <typename Scalar>
Forward<Scalar> run_forward(const Matrix<Scalar>& a, const Matrix<Scalar>& b, const Matrix<Scalar>& h0, Index B,
                            Index T, ScanOptions o, std::span<const Index> lengths = {}) {
    Forward<Scalar> f{Matrix<Scalar>(a.rows(), a.cols()), Matrix<Scalar>(B, a.cols())};
    scan_forward<Scalar>(f.h, f.last, a, b, h0, B, T, o, lengths);
    return f;
}

template <typename Scalar>
struct Backward {
    Matrix<Scalar> da, db, dh0;
};

template <typename Scalar>
Backward<Scalar> run_backward(const Matrix<Scalar>& dh, const Matrix<Scalar>& dh_last, const Matrix<Scalar>& a,
                              const Matrix<Scalar>& h, const Matrix<Scalar>& h0, Index B, Index T, ScanOptions o,
                              std::span<const Index> lengths = {}) {
    Backward<Scalar> g{Matrix<Scalar>(a.rows(), a.cols()), Matrix<Scalar>(a.rows(), a.cols()),
                       Matrix<Scalar>(B, a.cols())};
    scan_backward<Scalar>(g.da, g.db, g.dh0, dh, dh_last, a, h, h0, B, T, o, lengths);
    return g;
}

constexpr ScanOptions kSequential{ScanMode::Sequential, ScanSplit::Auto, 0};

std::string split_name(ScanSplit s) {
    switch (s) {
        case ScanSplit::Auto: return "Auto";
        case ScanSplit::Channels: return "Channels";
        case ScanSplit::Time: return "Time";
    }
    return "?";
}

// ---------------------------------------------------------------------------------
// Parallel == sequential on odd shapes, both splits forced, 2 and 3 threads.

struct Shape {
    Index B, T, D;
};

class ScanShapes : public ::testing::TestWithParam<Shape> {};

template <typename Scalar>
void check_parallel_matches_sequential(const Shape& shape, double tol) {
    const auto [B, T, D] = shape;
    Rng rng(11 + T);
    const Matrix<Scalar> a = decays<Scalar>(B * T, D, rng);
    const Matrix<Scalar> b = uniform<Scalar>(B * T, D, -1, 1, rng);
    const Matrix<Scalar> dh = uniform<Scalar>(B * T, D, -1, 1, rng);
    const Matrix<Scalar> state = uniform<Scalar>(B, D, -1, 1, rng);
    const Matrix<Scalar> none;
    ThreadGuard guard;
    for (bool with_state : {false, true}) {
        const Matrix<Scalar>& h0 = with_state ? state : none;
        const Matrix<Scalar>& dh_last = with_state ? state : none;  // any (B, D) weights
        const Forward<Scalar> ref = run_forward(a, b, h0, B, T, kSequential);
        const Backward<Scalar> gref = run_backward(dh, dh_last, a, ref.h, h0, B, T, kSequential);
        for (int threads : {2, 3}) {
            set_num_threads(threads);
            for (ScanSplit split : {ScanSplit::Channels, ScanSplit::Time, ScanSplit::Auto}) {
                SCOPED_TRACE("threads=" + std::to_string(threads) + " split=" + split_name(split) +
                             " h0=" + std::to_string(with_state));
                const ScanOptions o{ScanMode::Parallel, split, 0};
                const Forward<Scalar> f = run_forward(a, b, h0, B, T, o);
                EXPECT_LT(relative_error(f.h, ref.h), tol);
                EXPECT_LT(relative_error(f.last, ref.last), tol);
                const Backward<Scalar> g = run_backward(dh, dh_last, a, ref.h, h0, B, T, o);
                EXPECT_LT(relative_error(g.da, gref.da), tol);
                EXPECT_LT(relative_error(g.db, gref.db), tol);
                if (with_state) {
                    EXPECT_LT(relative_error(g.dh0, gref.dh0), tol);
                }
            }
        }
    }
}

TEST_P(ScanShapes, ParallelMatchesSequentialDouble) { check_parallel_matches_sequential<double>(GetParam(), 1e-12); }

TEST_P(ScanShapes, ParallelMatchesSequentialFloat) { check_parallel_matches_sequential<float>(GetParam(), 1e-5); }

// The sequential scan against scalar loops, forward and reverse, in double.
TEST_P(ScanShapes, SequentialMatchesPlainLoops) {
    const auto [B, T, D] = GetParam();
    Rng rng(5 + T);
    const Matrix<double> a = decays<double>(B * T, D, rng);
    const Matrix<double> b = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> dh = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> state = uniform<double>(B, D, -1, 1, rng);
    const Matrix<double> weights = uniform<double>(B, D, -1, 1, rng);
    const Matrix<double> none;
    for (bool with_state : {false, true}) {
        SCOPED_TRACE("h0=" + std::to_string(with_state));
        const Matrix<double>* h0 = with_state ? &state : nullptr;
        const Matrix<double>* dh_last = with_state ? &weights : nullptr;
        const Matrix<double> href = reference_forward(a, b, h0, B, T);
        const Forward<double> f = run_forward(a, b, h0 ? *h0 : none, B, T, kSequential);
        EXPECT_LT(relative_error(f.h, href), 1e-13);
        Matrix<double> da, db, dh0;
        reference_backward(dh, dh_last, a, href, h0, B, T, da, db, dh0);
        const Backward<double> g = run_backward(dh, dh_last ? *dh_last : none, a, href, h0 ? *h0 : none, B, T,
                                                kSequential);
        EXPECT_LT(relative_error(g.da, da), 1e-13);
        EXPECT_LT(relative_error(g.db, db), 1e-13);
        EXPECT_LT(relative_error(g.dh0, dh0), 1e-13);
    }
}

INSTANTIATE_TEST_SUITE_P(OddShapes, ScanShapes,
                         ::testing::Values(Shape{3, 1, 37}, Shape{3, 2, 37}, Shape{3, 7, 37}, Shape{3, 1000, 37},
                                           Shape{1, 65536, 37}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                             std::string name = "B";
                             name += std::to_string(info.param.B) + "_T";
                             name += std::to_string(info.param.T) + "_D";
                             return name + std::to_string(info.param.D);
                         });

// Many small pieces: the time split's rounds, partial last rounds and empty pieces.
TEST(Scan, TimeSplitWithSmallPiecesMatchesSequential) {
    const Index B = 2, T = 120, D = 19;
    Rng rng(3);
    const Matrix<double> a = decays<double>(B * T, D, rng);
    const Matrix<double> b = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> dh = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> h0 = uniform<double>(B, D, -1, 1, rng);
    const Matrix<double> dh_last = uniform<double>(B, D, -1, 1, rng);
    const Forward<double> ref = run_forward(a, b, h0, B, T, kSequential);
    const Backward<double> gref = run_backward(dh, dh_last, a, ref.h, h0, B, T, kSequential);
    ThreadGuard guard;
    for (int threads : {2, 3}) {
        set_num_threads(threads);
        for (Index rows : {1, 2, 7, 40, 41, 119}) {
            SCOPED_TRACE("threads=" + std::to_string(threads) + " rows=" + std::to_string(rows));
            const ScanOptions o{ScanMode::Parallel, ScanSplit::Time, rows};
            const Forward<double> f = run_forward(a, b, h0, B, T, o);
            EXPECT_LT(relative_error(f.h, ref.h), 1e-12);
            EXPECT_LT(relative_error(f.last, ref.last), 1e-12);
            const Backward<double> g = run_backward(dh, dh_last, a, ref.h, h0, B, T, o);
            EXPECT_LT(relative_error(g.da, gref.da), 1e-12);
            EXPECT_LT(relative_error(g.db, gref.db), 1e-12);
            EXPECT_LT(relative_error(g.dh0, gref.dh0), 1e-12);
        }
    }
}

// The time split carries h from one piece into the next. With a carry near 1e37 and a's
// whose product over the piece falls to 1e-33 (0.9^720), the carried term is still about
// 1e4 and is most of h: it must be kept, however small its product of a's is next to the carry.
TEST(Scan, TimeSplitKeepsACarriedTermWhoseProductIsFarBelowFloatRange) {
    const Index B = 1, T = 8192, D = 8;
    Matrix<float> a(B * T, D), a_reverse(B * T, D), b(B * T, D);
    Rng rng(17);
    std::uniform_real_distribution<float> noise(-1, 1);
    for (Index t = 0; t < T; ++t)
        for (Index c = 0; c < D; ++c) {
            a(t, c) = t < T / 2 ? 1.0f : 0.9f;          // h holds 1e37 for half the sequence, then decays
            a_reverse(t, c) = t < T / 2 ? 0.9f : 1.0f;  // the same for g, which runs backwards in time
            b(t, c) = noise(rng);
        }
    const Matrix<float> h0 = Matrix<float>::Constant(B, D, 1e37f);
    Matrix<float> dh(B * T, D);
    for (Index i = 0; i < dh.size(); ++i) dh.data()[i] = noise(rng);
    const Matrix<float> dh_last = Matrix<float>::Constant(B, D, 1e37f);
    const Forward<float> ref = run_forward(a, b, h0, B, T, kSequential);
    const Backward<float> gref = run_backward(dh, dh_last, a_reverse, ref.h, h0, B, T, kSequential);
    // Relative to each entry: a max-norm error would hide the late, smaller entries.
    const auto worst = [](const Matrix<float>& got, const Matrix<float>& want) {
        return ((got - want).array().abs() / want.array().abs().max(1.0f)).maxCoeff();
    };
    ThreadGuard guard;
    for (int threads : {2, 4}) {
        set_num_threads(threads);
        SCOPED_TRACE("threads=" + std::to_string(threads));
        const ScanOptions o{ScanMode::Parallel, ScanSplit::Time, 0};
        const Forward<float> f = run_forward(a, b, h0, B, T, o);
        EXPECT_LT(worst(f.h, ref.h), 1e-4) << "h[4816] = " << f.h(4816, 0) << ", sequentially " << ref.h(4816, 0);
        const Backward<float> g = run_backward(dh, dh_last, a_reverse, ref.h, h0, B, T, o);
        EXPECT_LT(worst(g.db, gref.db), 1e-4) << "g[3376] = " << g.db(3376, 0) << ", sequentially " << gref.db(3376, 0);
    }
}

// Continuing from a nonzero state equals one pass (the minGRU-pytorch #9 trap).
TEST(Scan, ChunkedEqualsWholeInEveryMode) {
    const Index B = 3, T = 900, D = 37, T1 = 377;
    Rng rng(8);
    const Matrix<double> a = decays<double>(B * T, D, rng);
    const Matrix<double> b = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> h0 = uniform<double>(B, D, -1, 1, rng);
    const Matrix<double> whole = reference_forward(a, b, &h0, B, T);
    // Sequence s's rows [t0, t1) of a (B*T, D) matrix, stacked into (B*(t1-t0), D).
    auto slice = [&](const Matrix<double>& m, Index t0, Index t1) {
        Matrix<double> out(B * (t1 - t0), D);
        for (Index s = 0; s < B; ++s) out.middleRows(s * (t1 - t0), t1 - t0) = m.middleRows(s * T + t0, t1 - t0);
        return out;
    };
    ThreadGuard guard;
    set_num_threads(3);
    for (ScanOptions o : {kSequential, ScanOptions{ScanMode::Parallel, ScanSplit::Channels, 0},
                          ScanOptions{ScanMode::Parallel, ScanSplit::Time, 0}}) {
        SCOPED_TRACE(split_name(o.split));
        const Forward<double> first = run_forward<double>(slice(a, 0, T1), slice(b, 0, T1), h0, B, T1, o);
        const Forward<double> second = run_forward<double>(slice(a, T1, T), slice(b, T1, T), first.last, B, T - T1, o);
        EXPECT_LT(relative_error(first.h, slice(whole, 0, T1)), 1e-12);
        EXPECT_LT(relative_error(second.h, slice(whole, T1, T)), 1e-12);
    }
}

// h may be b itself and db may be dh itself; blocks of wider matrices work without copies.
TEST(Scan, InPlaceAndStridedViews) {
    const Index B = 2, T = 300, D = 40;
    Rng rng(9);
    const Matrix<double> a = decays<double>(B * T, D, rng);
    const Matrix<double> b = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> dh = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> h0 = uniform<double>(B, D, -1, 1, rng);
    const Forward<double> ref = run_forward(a, b, h0, B, T, kSequential);
    const Backward<double> gref = run_backward(dh, Matrix<double>(), a, ref.h, h0, B, T, kSequential);
    ThreadGuard guard;
    set_num_threads(2);
    for (ScanSplit split : {ScanSplit::Channels, ScanSplit::Time}) {
        SCOPED_TRACE(split_name(split));
        const ScanOptions o{ScanMode::Parallel, split, 5};
        Matrix<double> hb = b, last(B, D), none;
        scan_forward<double>(hb, last, a, hb, h0, B, T, o);
        EXPECT_LT(relative_error(hb, ref.h), 1e-12);
        Matrix<double> g = dh, da(B * T, D), dh0(B, D);
        scan_backward<double>(da, g, dh0, g, none, a, ref.h, h0, B, T, o);
        EXPECT_LT(relative_error(g, gref.db), 1e-12);
        EXPECT_LT(relative_error(da, gref.da), 1e-12);
        // a and b as the two halves of one (B*T, 2D) GEMM output; h into columns of a wider matrix.
        Matrix<double> ab(B * T, 2 * D), wide = Matrix<double>::Zero(B * T, D + 3);
        ab << a, b;
        Matrix<double> last2(B, D);
        scan_forward<double>(wide.middleCols(1, D), last2, ab.leftCols(D), ab.rightCols(D), h0, B, T, o);
        EXPECT_LT(relative_error(wide.middleCols(1, D), ref.h), 1e-12);
        EXPECT_EQ(wide.col(0).cwiseAbs().maxCoeff(), 0.0);
        EXPECT_EQ(wide.col(D + 1).cwiseAbs().maxCoeff(), 0.0);
    }
}

// scan_plan reports the split a call takes: what a min-RNN layer shows of its scan.
TEST(ScanPlan, ReportsTheSplitThreadsAndPieces) {
    ThreadGuard guard;
    set_num_threads(4);
    const int threads = num_threads();  // 1 without OpenMP
    const ScanPlan sequential = scan_plan<float>(16, 1024, 256, kSequential);
    EXPECT_TRUE(sequential.sequential());
    EXPECT_EQ(sequential.channel_width, 256);
    EXPECT_EQ(sequential.channel_blocks, 1);
    // A tiny call: the rule keeps it on the calling thread.
    EXPECT_TRUE(scan_plan<float>(1, 16, 8).sequential());

    const ScanPlan time = scan_plan<float>(1, 1000, 64, {ScanMode::Parallel, ScanSplit::Time, 0});
    const ScanPlan rounds = scan_plan<float>(1, 1000, 64, {ScanMode::Parallel, ScanSplit::Time, 100});
    const ScanPlan channels = scan_plan<float>(16, 1000, 64, {ScanMode::Parallel, ScanSplit::Channels, 0});
    const ScanPlan log_space = log_scan_plan<float>(1, 1000, 64, {ScanMode::Parallel, ScanSplit::Time, 0});
    if (threads == 1) {
        EXPECT_TRUE(time.sequential() && rounds.sequential() && channels.sequential() && log_space.sequential());
        return;
    }
    EXPECT_EQ(time.split, ScanSplit::Time);
    EXPECT_EQ(time.threads, threads);
    EXPECT_EQ(time.piece_steps, (1000 + threads - 1) / threads);
    EXPECT_EQ(time.pieces, threads);
    EXPECT_EQ(rounds.piece_steps, std::min<Index>(100, (1000 + threads - 1) / threads));
    EXPECT_EQ(rounds.pieces, (1000 + rounds.piece_steps - 1) / rounds.piece_steps);
    EXPECT_EQ(channels.split, ScanSplit::Channels);
    EXPECT_EQ(channels.threads, threads);
    EXPECT_EQ(channels.channel_width * channels.channel_blocks >= 64, true);
    EXPECT_EQ(log_space.split, ScanSplit::Channels);  // the log-space scan has no time split
    // Auto on a large batch: threads, and the channels split when B fills them.
    const ScanPlan batch = scan_plan<float>(16, 1024, 256);
    EXPECT_EQ(batch.split, ScanSplit::Channels);
    EXPECT_EQ(batch.threads, threads);
}

#ifdef _OPENMP
// Inside a parallel region the parallel mode runs sequentially (no nested regions).
TEST(Scan, InsideAParallelRegionRunsSequentially) {
    const Index B = 1, T = 5000, D = 16;
    Rng rng(10);
    const Matrix<double> a = decays<double>(B * T, D, rng);
    const Matrix<double> b = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> ref = reference_forward(a, b, nullptr, B, T);
    ThreadGuard guard;
    set_num_threads(2);
    std::vector<double> errors(2, 1.0);
#pragma omp parallel num_threads(2)
    {
        const ScanOptions o{ScanMode::Parallel, ScanSplit::Time, 0};
        Matrix<double> h(B * T, D), last(B, D), none;
        scan_forward<double>(h, last, a, b, none, B, T, o);
        const double err = (h - ref).cwiseAbs().maxCoeff();
        errors[static_cast<std::size_t>(omp_get_thread_num())] = err;
    }
    EXPECT_LT(errors[0], 1e-12);
    EXPECT_LT(errors[1], 1e-12);
}
#endif

// ---------------------------------------------------------------------------------
// Finite differences, in double.

// Central differences of L(x) at every entry of x, against `analytic`.
template <typename Loss>
double finite_difference_error(Matrix<double>& x, const Matrix<double>& analytic, const Loss& loss) {
    double num = 0, den = 0;
    for (Index i = 0; i < x.size(); ++i) {
        double& v = x.data()[i];
        const double saved = v, step = 1e-6 * std::max(1.0, std::abs(saved));
        v = saved + step;
        const double up = loss();
        v = saved - step;
        const double down = loss();
        v = saved;
        const double numeric = (up - down) / (2 * step);
        num = std::max(num, std::abs(numeric - analytic.data()[i]));
        den = std::max({den, std::abs(numeric), std::abs(analytic.data()[i])});
    }
    return num / std::max(den, 1e-12);
}

TEST(Scan, ReverseScanMatchesFiniteDifferences) {
    const Index B = 2, T = 6, D = 3;
    Rng rng(12);
    Matrix<double> a = uniform<double>(B * T, D, 0.2, 1.0, rng);
    Matrix<double> b = uniform<double>(B * T, D, -1, 1, rng);
    Matrix<double> h0 = uniform<double>(B, D, -1, 1, rng);
    const Matrix<double> w = uniform<double>(B * T, D, -1, 1, rng), w_last = uniform<double>(B, D, -1, 1, rng);
    // L = sum(w .* h) + sum(w_last .* h_last).
    auto loss = [&] {
        const Forward<double> f = run_forward(a, b, h0, B, T, kSequential);
        return (f.h.array() * w.array()).sum() + (f.last.array() * w_last.array()).sum();
    };
    const Forward<double> f = run_forward(a, b, h0, B, T, kSequential);
    ThreadGuard guard;
    set_num_threads(2);
    for (ScanOptions o : {kSequential, ScanOptions{ScanMode::Parallel, ScanSplit::Time, 2}}) {
        const Backward<double> g = run_backward(w, w_last, a, f.h, h0, B, T, o);
        EXPECT_LT(finite_difference_error(a, g.da, loss), 1e-7);
        EXPECT_LT(finite_difference_error(b, g.db, loss), 1e-7);
        EXPECT_LT(finite_difference_error(h0, g.dh0, loss), 1e-7);
    }
}

// ---------------------------------------------------------------------------------
// Log space.

TEST(LogScan, MatchesLinearScanInDouble) {
    const Index B = 3, T = 1000, D = 37;
    Rng rng(13);
    const Sequence<double> a(uniform<double>(B * T, D, 0.5, 1.0, rng), B, T);
    const Sequence<double> b(uniform<double>(B * T, D, 0.01, 1.0, rng), B, T);
    const Matrix<double> h0 = uniform<double>(B, D, 0.01, 1.0, rng);
    const Matrix<double> log_h0 = h0.array().log().matrix();
    const Sequence<double> log_a(a.data.array().log().matrix(), B, T), log_b(b.data.array().log().matrix(), B, T);
    ThreadGuard guard;
    for (const Matrix<double>* state : {static_cast<const Matrix<double>*>(nullptr), &h0}) {
        SCOPED_TRACE(state ? "with h0" : "without h0");
        const ScanResult<double> lin = scan(a, b, state, kSequential);
        const ScanResult<double> lg = log_scan(log_a, log_b, state ? &log_h0 : nullptr, kSequential);
        EXPECT_LT(relative_error(lg.h.data.array().exp().matrix(), lin.h.data), 1e-11);
        EXPECT_LT(relative_error(lg.h_last.array().exp().matrix(), lin.h_last), 1e-11);
        for (int threads : {2, 3}) {
            set_num_threads(threads);
            const ScanResult<double> par = log_scan(log_a, log_b, state ? &log_h0 : nullptr, ScanOptions{});
            EXPECT_LT(relative_error(par.h.data, lg.h.data), 1e-13);
        }

        // Backward: with G = dL/dlog h, dL/dh = G / h, and the log-space gradients are
        // dlog_a = a * da, dlog_b = b * db, dlog_h0 = h0 * dh0.
        const Sequence<double> G(uniform<double>(B * T, D, -1, 1, rng), B, T);
        const Matrix<double> G_last = uniform<double>(B, D, -1, 1, rng);
        const Sequence<double> dh(G.data.cwiseQuotient(lin.h.data), B, T);
        const Matrix<double> dh_last = G_last.cwiseQuotient(lin.h_last);
        const ScanGrad<double> glin = scan_grad(dh, &dh_last, a, lin.h, state, kSequential);
        set_num_threads(1);
        const ScanGrad<double> glog = log_scan_grad(G, &G_last, log_a, log_b, state ? &log_h0 : nullptr);
        EXPECT_LT(relative_error(glog.da.data, a.data.cwiseProduct(glin.da.data)), 1e-9);
        EXPECT_LT(relative_error(glog.db.data, b.data.cwiseProduct(glin.db.data)), 1e-9);
        if (state) {
            EXPECT_LT(relative_error(glog.dh0, h0.cwiseProduct(glin.dh0)), 1e-9);
        }
        for (int threads : {2, 3}) {
            set_num_threads(threads);
            const ScanGrad<double> gpar = log_scan_grad(G, &G_last, log_a, log_b, state ? &log_h0 : nullptr);
            EXPECT_LT(relative_error(gpar.da.data, glog.da.data), 1e-13);
            EXPECT_LT(relative_error(gpar.db.data, glog.db.data), 1e-13);
            if (state) {
                EXPECT_LT(relative_error(gpar.dh0, glog.dh0), 1e-13);
            }
        }
    }
}

TEST(LogScan, BackwardMatchesFiniteDifferences) {
    const Index B = 2, T = 7, D = 3;
    Rng rng(14);
    Matrix<double> log_a = uniform<double>(B * T, D, 0.2, 1.0, rng).array().log().matrix();
    Matrix<double> log_b = uniform<double>(B * T, D, 0.05, 2.0, rng).array().log().matrix();
    Matrix<double> log_h0 = uniform<double>(B, D, -2, 1, rng);
    const Matrix<double> w = uniform<double>(B * T, D, -1, 1, rng), w_last = uniform<double>(B, D, -1, 1, rng);
    auto forward = [&](Matrix<double>& lh, Matrix<double>& last) {
        lh.resize(B * T, D);
        last.resize(B, D);
        log_scan_forward<double>(lh, last, log_a, log_b, log_h0, B, T, kSequential);
    };
    auto loss = [&] {
        Matrix<double> lh, last;
        forward(lh, last);
        return (lh.array() * w.array()).sum() + (last.array() * w_last.array()).sum();
    };
    Matrix<double> dla(B * T, D), dlb(B * T, D), dlh0(B, D);
    log_scan_backward<double>(dla, dlb, dlh0, w, w_last, log_a, log_b, log_h0, B, T, kSequential);
    EXPECT_LT(finite_difference_error(log_a, dla, loss), 1e-7);
    EXPECT_LT(finite_difference_error(log_b, dlb, loss), 1e-7);
    EXPECT_LT(finite_difference_error(log_h0, dlh0, loss), 1e-7);
}

// ---------------------------------------------------------------------------------
// fp32 accuracy at T = 65,536 against an fp64 sequential reference (of the same
// fp32-rounded inputs). Relative error = max |err| / max |ref|.

double max_relative(const Matrix<double>& x, const Matrix<double>& ref) {
    return (x - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff();
}

struct Fp32Case {
    Matrix<float> a, b;
    Matrix<double> ref;  // fp64 sequential scan of the same inputs
};

Fp32Case fp32_case(Index T, Index D) {
    Rng rng(15);
    Fp32Case c;
    c.a = uniform<float>(T, D, 0.5, 1.0, rng);
    c.b = uniform<float>(T, D, 0.01, 1.0, rng);  // b > 0, so the log-space form applies too
    c.ref = reference_forward(c.a.cast<double>(), c.b.cast<double>(), nullptr, 1, T);
    return c;
}

TEST(ScanAccuracy, LinearSpaceFp32StaysWithin1e5AtT65536) {
    const Index T = 65536, D = 64;
    const Fp32Case c = fp32_case(T, D);
    ThreadGuard guard;
    set_num_threads(2);
    const Matrix<float> none;
    for (ScanOptions o : {kSequential, ScanOptions{ScanMode::Parallel, ScanSplit::Auto, 0},
                          ScanOptions{ScanMode::Parallel, ScanSplit::Channels, 0},
                          ScanOptions{ScanMode::Parallel, ScanSplit::Time, 0}}) {
        const Forward<float> f = run_forward(c.a, c.b, none, 1, T, o);
        const double err = max_relative(f.h.cast<double>(), c.ref);
        std::printf("  linear-space fp32 scan (%s, %s), T=%ld: relative error %.3e\n",
                    o.mode == ScanMode::Sequential ? "sequential" : "parallel", split_name(o.split).c_str(),
                    static_cast<long>(T), err);
        EXPECT_LT(err, 1e-5);
    }
}

// The paper's log-space form in fp32: the error grows with T because cumsum(log a)
// grows like T and log h = a* + LSE cancels two large numbers. Recorded, loosely bounded.
TEST(ScanAccuracy, LogSpaceFp32ErrorIsRecorded) {
    const Index D = 64;
    for (Index T : {4096, 65536}) {
        const Fp32Case c = fp32_case(T, D);
        const Matrix<float> log_a = c.a.array().log().matrix(), log_b = c.b.array().log().matrix();
        Matrix<float> log_h(T, D), last(1, D), none;
        log_scan_forward<float>(log_h, last, log_a, log_b, none, 1, T, ScanOptions{});
        const double err = max_relative(log_h.cast<double>().array().exp().matrix(), c.ref);
        std::printf("  log-space fp32 scan, T=%ld: relative error %.3e (linear space stays below 1e-5)\n",
                    static_cast<long>(T), err);
        ::testing::Test::RecordProperty("log_space_fp32_relative_error_T" + std::to_string(T), std::to_string(err));
        EXPECT_LT(err, T == 4096 ? 1e-2 : 1e-1);
        EXPECT_GT(err, 1e-5) << "log space unexpectedly as accurate as linear space: update the documentation";
    }
}

// ---------------------------------------------------------------------------------
// Padded batches (lengths) and the reverse direction.

// Every way a scan runs: sequential, each split forced (and Auto) on 2 and 3 threads, and
// the time split in rounds of small pieces.
struct ScanRun {
    int threads;
    ScanOptions options;
    std::string name;
};

std::vector<ScanRun> every_run() {
    std::vector<ScanRun> runs{{1, kSequential, "sequential"}};
    for (int threads : {2, 3})
        for (ScanSplit split : {ScanSplit::Channels, ScanSplit::Time, ScanSplit::Auto})
            runs.push_back({threads, ScanOptions{ScanMode::Parallel, split, 0},
                            split_name(split) + " on " + std::to_string(threads) + " threads"});
    runs.push_back({3, ScanOptions{ScanMode::Parallel, ScanSplit::Time, 4}, "Time in pieces of 4 on 3 threads"});
    return runs;
}

// B = 5 sequences of T = 37 steps: one full, one of a single step, the others odd.
const std::vector<Index> kLengths{37, 1, 20, 9, 36};

// m with every row past an end (row s*T + t, t >= lengths[s]) set to `value`.
template <typename Scalar>
Matrix<Scalar> with_padding(Matrix<Scalar> m, Index T, const std::vector<Index>& lengths, Scalar value) {
    for (std::size_t s = 0; s < lengths.size(); ++s)
        m.middleRows(static_cast<Index>(s) * T + lengths[s], T - lengths[s]).setConstant(value);
    return m;
}

// m with each sequence's real rows in reverse order; the rows past its end stay put.
template <typename Scalar>
Matrix<Scalar> reverse_each(const Matrix<Scalar>& m, Index T, const std::vector<Index>& lengths) {
    Matrix<Scalar> out = m;
    for (std::size_t s = 0; s < lengths.size(); ++s) {
        const Index first = static_cast<Index>(s) * T;
        for (Index t = 0; t < lengths[s]; ++t) out.row(first + t) = m.row(first + lengths[s] - 1 - t);
    }
    return out;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A padded batch is the whole batch with a = 1, b = 0 (and dL/dh = 0) past each end,
// where the state passes through unchanged, except that the scan stops at each end: h,
// dL/da and dL/db are zero past it, and what a, b and dL/dh hold there is never read
// (NaN here). Every split, in pieces of the sequences' own lengths.
TEST(ScanLengths, EachSequenceStopsAtItsEndAsIfAWereOneAndBZeroPastIt) {
    const Index B = 5, T = 37, D = 19;
    const std::vector<Index>& L = kLengths;
    Rng rng(23);
    const Matrix<double> a = decays<double>(B * T, D, rng);
    const Matrix<double> b = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> dh = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> h0 = uniform<double>(B, D, -1, 1, rng);
    const Matrix<double> dh_last = uniform<double>(B, D, -1, 1, rng);
    const Matrix<double> a_carry = with_padding(a, T, L, 1.0), b_carry = with_padding(b, T, L, 0.0);
    const Forward<double> ref = run_forward(a_carry, b_carry, h0, B, T, kSequential);
    const Backward<double> gref = run_backward(with_padding(dh, T, L, 0.0), dh_last, a_carry, ref.h, h0, B, T, kSequential);

    const Matrix<double> a_nan = with_padding(a, T, L, kNaN), b_nan = with_padding(b, T, L, kNaN);
    const Matrix<double> dh_nan = with_padding(dh, T, L, kNaN);
    ThreadGuard guard;
    for (const ScanRun& run : every_run()) {
        SCOPED_TRACE(run.name);
        set_num_threads(run.threads);
        const Forward<double> f = run_forward(a_nan, b_nan, h0, B, T, run.options, L);
        EXPECT_LT(relative_error(f.h, with_padding(ref.h, T, L, 0.0)), 1e-12);
        EXPECT_TRUE(padding_is_zero(f.h, T, L));
        EXPECT_LT(relative_error(f.last, ref.last), 1e-12);  // the state carried to T-1 is the state at each end
        const Backward<double> g = run_backward(dh_nan, dh_last, a_nan, f.h, h0, B, T, run.options, L);
        EXPECT_LT(relative_error(g.db, with_padding(gref.db, T, L, 0.0)), 1e-12);
        EXPECT_LT(relative_error(g.da, with_padding(gref.da, T, L, 0.0)), 1e-12);
        EXPECT_LT(relative_error(g.dh0, gref.dh0), 1e-12);
    }
}

// In log space the carry is log a = 0 and log b = -inf, which log_add_exp adds exactly
// (lse + log1p(exp(-inf)) = lse): the lengths give the same bits on every real step and at
// each end, and log h = -inf (h = 0) past it. Its backward agrees within rounding.
TEST(ScanLengths, LogSpaceEqualsLogAZeroAndLogBMinusInfinityPastEachEnd) {
    const Index B = 5, T = 37, D = 19;
    const std::vector<Index>& L = kLengths;
    constexpr double inf = std::numeric_limits<double>::infinity();
    Rng rng(24);
    const Matrix<double> log_a = uniform<double>(B * T, D, 0.2, 1.0, rng).array().log().matrix();
    const Matrix<double> log_b = uniform<double>(B * T, D, -2, 1, rng);
    const Matrix<double> log_h0 = uniform<double>(B, D, -2, 1, rng);
    const Matrix<double> w = uniform<double>(B * T, D, -1, 1, rng), w_last = uniform<double>(B, D, -1, 1, rng);
    const Matrix<double> la_carry = with_padding(log_a, T, L, 0.0), lb_carry = with_padding(log_b, T, L, -inf);
    ThreadGuard guard;
    for (const ScanRun& run : every_run()) {
        if (run.options.split == ScanSplit::Time) continue;  // the log-space scan splits over channels only
        SCOPED_TRACE(run.name);
        set_num_threads(run.threads);
        Matrix<double> ref(B * T, D), ref_last(B, D), lh(B * T, D), last(B, D);
        log_scan_forward<double>(ref, ref_last, la_carry, lb_carry, log_h0, B, T, run.options);
        log_scan_forward<double>(lh, last, with_padding(log_a, T, L, kNaN), with_padding(log_b, T, L, kNaN), log_h0, B,
                                 T, run.options, L);
        EXPECT_EQ(with_padding(lh, T, L, 0.0), with_padding(ref, T, L, 0.0));
        EXPECT_EQ(last, ref_last);
        EXPECT_EQ(lh, with_padding(lh, T, L, -inf));

        Matrix<double> dla_ref(B * T, D), dlb_ref(B * T, D), dlh0_ref(B, D), dla(B * T, D), dlb(B * T, D), dlh0(B, D);
        log_scan_backward<double>(dla_ref, dlb_ref, dlh0_ref, with_padding(w, T, L, 0.0), w_last, la_carry, lb_carry,
                                  log_h0, B, T, run.options);
        log_scan_backward<double>(dla, dlb, dlh0, with_padding(w, T, L, kNaN), w_last, with_padding(log_a, T, L, kNaN),
                                  with_padding(log_b, T, L, kNaN), log_h0, B, T, run.options, L);
        EXPECT_LT(relative_error(dla, with_padding(dla_ref, T, L, 0.0)), 1e-12);
        EXPECT_LT(relative_error(dlb, with_padding(dlb_ref, T, L, 0.0)), 1e-12);
        EXPECT_LT(relative_error(dlh0, dlh0_ref), 1e-12);
    }
}

// ScanOptions::reverse runs h_t = a_t h_{t+1} + b_t from each sequence's last step down
// to step 0: the forward scan of each sequence reversed, read back in time order, with
// h_last = h at step 0. Its backward likewise; with and without lengths, every split.
TEST(ScanReverse, EqualsTheForwardScanOfEachSequenceReversed) {
    const Index B = 5, T = 37, D = 19;
    Rng rng(25);
    const Matrix<double> a = decays<double>(B * T, D, rng);
    const Matrix<double> b = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> dh = uniform<double>(B * T, D, -1, 1, rng);
    const Matrix<double> h0 = uniform<double>(B, D, -1, 1, rng);
    const Matrix<double> dh_last = uniform<double>(B, D, -1, 1, rng);
    ThreadGuard guard;
    for (const bool padded : {false, true}) {
        const std::vector<Index> L = padded ? kLengths : std::vector<Index>(B, T);
        const std::span<const Index> lengths = padded ? std::span<const Index>(L) : std::span<const Index>();
        const Matrix<double> ar = reverse_each(a, T, L), br = reverse_each(b, T, L), dhr = reverse_each(dh, T, L);
        const Forward<double> ref = run_forward(ar, br, h0, B, T, kSequential, lengths);
        const Backward<double> gref = run_backward(dhr, dh_last, ar, ref.h, h0, B, T, kSequential, lengths);
        for (const ScanRun& run : every_run()) {
            SCOPED_TRACE(run.name + (padded ? ", padded" : ""));
            set_num_threads(run.threads);
            ScanOptions o = run.options;
            o.reverse = true;
            const Forward<double> f = run_forward(a, b, h0, B, T, o, lengths);
            EXPECT_LT(relative_error(f.h, reverse_each(ref.h, T, L)), 1e-12);
            EXPECT_LT(relative_error(f.last, ref.last), 1e-12);
            const Backward<double> g = run_backward(dh, dh_last, a, f.h, h0, B, T, o, lengths);
            EXPECT_LT(relative_error(g.da, reverse_each(gref.da, T, L)), 1e-12);
            EXPECT_LT(relative_error(g.db, reverse_each(gref.db, T, L)), 1e-12);
            EXPECT_LT(relative_error(g.dh0, gref.dh0), 1e-12);
        }

        // The log-space scan, reversed the same way (compared as h, which is 0 past each end).
        const Matrix<double> log_a = a.array().log().matrix();
        const Matrix<double> log_b = uniform<double>(B * T, D, -2, 1, rng), log_h0 = h0.array().abs().log().matrix();
        Matrix<double> lref(B * T, D), lref_last(B, D), lh(B * T, D), last(B, D);
        log_scan_forward<double>(lref, lref_last, reverse_each(log_a, T, L), reverse_each(log_b, T, L), log_h0, B, T,
                                 kSequential, lengths);
        ScanOptions o{ScanMode::Parallel, ScanSplit::Channels, 0};
        o.reverse = true;
        set_num_threads(3);
        log_scan_forward<double>(lh, last, log_a, log_b, log_h0, B, T, o, lengths);
        EXPECT_LT(relative_error(lh.array().exp().matrix(), reverse_each(lref, T, L).array().exp().matrix()), 1e-12);
        EXPECT_LT(relative_error(last, lref_last), 1e-12);
        const Matrix<double> w = uniform<double>(B * T, D, -1, 1, rng);
        Matrix<double> dla_ref(B * T, D), dlb_ref(B * T, D), dlh0_ref(B, D), dla(B * T, D), dlb(B * T, D), dlh0(B, D);
        log_scan_backward<double>(dla_ref, dlb_ref, dlh0_ref, reverse_each(w, T, L), dh_last, reverse_each(log_a, T, L),
                                  reverse_each(log_b, T, L), log_h0, B, T, kSequential, lengths);
        log_scan_backward<double>(dla, dlb, dlh0, w, dh_last, log_a, log_b, log_h0, B, T, o, lengths);
        EXPECT_LT(relative_error(dla, reverse_each(dla_ref, T, L)), 1e-12);
        EXPECT_LT(relative_error(dlb, reverse_each(dlb_ref, T, L)), 1e-12);
        EXPECT_LT(relative_error(dlh0, dlh0_ref), 1e-12);
    }
}

// The Sequence calls take the lengths from their first operand and hand them on.
TEST(ScanLengths, SequenceCallsScanAPaddedBatchAndKeepItsLengths) {
    const Index B = 5, T = 37, D = 19;
    Rng rng(26);
    Sequence<double> a(decays<double>(B * T, D, rng), B, T);
    a.lengths = kLengths;
    const Sequence<double> b(uniform<double>(B * T, D, -1, 1, rng), B, T);
    const Matrix<double> h0 = uniform<double>(B, D, -1, 1, rng);
    const ScanResult<double> r = scan(a, b, &h0);
    const Forward<double> f = run_forward(a.data, b.data, h0, B, T, ScanOptions{}, kLengths);
    EXPECT_EQ(r.h.lengths, kLengths);
    EXPECT_EQ(r.h.data, f.h);
    EXPECT_EQ(r.h_last, f.last);
    const Sequence<double> dh(uniform<double>(B * T, D, -1, 1, rng), B, T);
    const ScanGrad<double> g = scan_grad(dh, static_cast<const Matrix<double>*>(nullptr), a, r.h, &h0);
    const Backward<double> gk = run_backward(dh.data, Matrix<double>(), a.data, f.h, h0, B, T, ScanOptions{}, kLengths);
    EXPECT_EQ(g.da.lengths, kLengths);
    EXPECT_EQ(g.da.data, gk.da);
    EXPECT_EQ(g.db.data, gk.db);
    EXPECT_EQ(g.dh0, gk.dh0);
}

// ---------------------------------------------------------------------------------
// Bad input.

TEST(Scan, BadShapesThrowNamingScanAndShapes) {
    Rng rng(16);
    const Index B = 3, T = 7, D = 37;
    const Matrix<double> a = uniform<double>(B * T, D, 0, 1, rng), b = a, none;
    Matrix<double> h(B * T, D), last(B, D);
    expect_shape_error([&] { scan_forward<double>(h, last, a, Matrix<double>(B * T, D - 1), none, B, T); },
                       {"scan_forward", "b", "(21, 36)", "(21, 37)"});
    expect_shape_error([&] { scan_forward<double>(h, last, a, b, Matrix<double>(2, D), B, T); },
                       {"scan_forward", "h0", "(2, 37)", "(3, 37)"});
    expect_shape_error([&] { scan_forward<double>(h, last, a, b, none, B, T + 1); },
                       {"scan_forward", "(21, 37)", "(24, 37)", "T=8"});
    expect_shape_error([&] { scan_forward<double>(h, last, a, b, none, 0, T); }, {"scan_forward", "B=0"});
    Matrix<double> da(B * T, D), db(B * T, D), dh0(B, D);
    expect_shape_error([&] { scan_backward<double>(da, db, dh0, Matrix<double>(B * T, 5), none, a, h, none, B, T); },
                       {"scan_backward", "dh", "(21, 5)", "(21, 37)"});
    expect_shape_error([&] { scan_backward<double>(da, db, dh0, h, Matrix<double>(B, 4), a, h, none, B, T); },
                       {"scan_backward", "dh_last", "(3, 4)", "(3, 37)"});
    const Sequence<double> sa(a, B, T), sb(Matrix<double>(B * T, D - 1), B, T);
    expect_shape_error([&] { scan(sa, sb); }, {"scan", "D=36", "D=37"});
    expect_shape_error([&] { log_scan(sa, sb); }, {"log_scan", "D=36", "D=37"});
    expect_shape_error([&] { log_scan_forward<double>(h, last, a, Matrix<double>(B * T + 1, D), none, B, T); },
                       {"log_scan_forward", "log_b", "(22, 37)", "(21, 37)"});
}

TEST(ScanLengths, BadLengthsThrowNamingTheCallAndTheLength) {
    Rng rng(27);
    const Index B = 3, T = 7, D = 5;
    const Matrix<double> a = uniform<double>(B * T, D, 0, 1, rng), b = a, none;
    Matrix<double> h(B * T, D), last(B, D), da(B * T, D), db(B * T, D), dh0(B, D);
    const std::vector<Index> two{7, 7}, zero{7, 0, 2}, long_one{8, 1, 1};
    expect_shape_error([&] { scan_forward<double>(h, last, a, b, none, B, T, {}, two); },
                       {"scan_forward", "2 lengths", "B=3"});
    expect_shape_error([&] { scan_forward<double>(h, last, a, b, none, B, T, {}, zero); },
                       {"scan_forward", "lengths[1] is 0", "T=7"});
    expect_shape_error([&] { scan_backward<double>(da, db, dh0, a, none, a, h, none, B, T, {}, long_one); },
                       {"scan_backward", "lengths[0] is 8", "T=7"});
    expect_shape_error([&] { log_scan_forward<double>(h, last, a, b, none, B, T, {}, zero); },
                       {"log_scan_forward", "lengths[1] is 0"});
    expect_shape_error([&] { log_scan_backward<double>(da, db, dh0, a, none, a, b, none, B, T, {}, two); },
                       {"log_scan_backward", "2 lengths"});
    Sequence<double> sa(a, B, T), sb(b, B, T);
    sa.lengths = {7, 2, 3};
    sb.lengths = {7, 2, 4};
    expect_shape_error([&] { scan(sa, sb); }, {"scan", "b's lengths differ from a's"});
    sa.lengths = zero;
    expect_shape_error([&] { scan(sa, Sequence<double>(b, B, T)); }, {"scan", "lengths[1] is 0"});
}

}  // namespace
