// The large matrix products of kernels/matmul.hpp through whichever backend the build
// uses (Eigen, or BLIS with SEQNN_USE_BLIS): matmul_rows (c = a b + bias) and
// add_transposed_product (c += a^T b) against plain loops in double and float, on odd
// sizes below and above kBlisMinFlops, with strided operands (blocks, Maps with an outer
// stride, transposes), on 1 and several threads and inside a running parallel region;
// matmul_rows's bits on any thread count (the same with the row split, close with BLIS);
// and a scalar type BLIS has no gemm for.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

using namespace seqnn;
using seqnn::testing::float_tolerance;
using seqnn::testing::random_matrix;
using seqnn::testing::reference_product;
using seqnn::testing::relative_error;
using seqnn::testing::ThreadGuard;

namespace {

struct Shape {
    Index m, k, n;  // (m, k) x (k, n) for matmul_rows; (m, k)^T x (m, n) for add_transposed_product
};

// Tiny and odd ones (a single row, a single column, depth 1) and two above kBlisMinFlops.
const Shape kShapes[] = {{1, 1, 1}, {7, 3, 5}, {1, 33, 17}, {65, 1, 9}, {131, 67, 29},
                         {2053, 181, 199}, {1031, 263, 257}};

bool above_threshold(const Shape& s) { return 2.0 * double(s.m) * double(s.k) * double(s.n) >= kBlisMinFlops; }

template <typename Scalar>
double tolerance(Index length) {
    return std::is_same_v<Scalar, float> ? float_tolerance(length) : 1e-13;
}

// Operands that are views into larger matrices: every operand has an outer stride that is
// not its width, and a, w and c start away from their buffer's first element.
template <typename Scalar>
struct StridedOperands {
    Matrix<Scalar> a_store, w_store, c_store;
    Shape s;

    StridedOperands(const Shape& shape, Rng& rng) : s(shape) {
        a_store = random_matrix<Scalar>(s.m + 3, s.k + 5, rng);
        w_store = random_matrix<Scalar>(s.n + 2, s.k + 7, rng);  // w (N, K), a Linear's weight
        c_store = random_matrix<Scalar>(s.m + 4, s.n + 3, rng);
    }
    auto a() const { return a_store.block(2, 3, s.m, s.k); }
    auto w() const { return w_store.block(1, 4, s.n, s.k); }
    // c as a Map with an outer stride, starting at (1, 2) of c_store.
    StridedRows<Scalar> c() {
        return StridedRows<Scalar>(c_store.data() + c_store.cols() + 2, s.m, s.n, Eigen::OuterStride<>(c_store.cols()));
    }
};

template <typename F>
auto with_threads(int threads, const F& f) {
    ThreadGuard guard;
    set_num_threads(threads);
    return f();
}

int many_threads() { return std::max(num_threads(), 4); }

template <typename Scalar>
void check_matmul_rows(const Shape& s, int threads, Rng& rng) {
    StridedOperands<Scalar> op(s, rng);
    const Matrix<Scalar> bias = random_matrix<Scalar>(1, s.n, rng);
    const Matrix<Scalar> c_before = op.c_store;
    with_threads(threads, [&] {
        matmul_rows<Scalar>(op.a(), op.w().transpose(), op.c(), bias.data());  // (M, K) x (K, N)
        return 0;
    });
    const std::string where = std::to_string(s.m) + "x" + std::to_string(s.k) + "x" + std::to_string(s.n) + ", " +
                              std::to_string(threads) + " threads";
    const Matrix<double> expected =
        reference_product(op.a(), op.w().transpose()).rowwise() + bias.row(0).template cast<double>();
    EXPECT_LT(relative_error(op.c(), expected), tolerance<Scalar>(s.k)) << where;
    // Nothing outside c changed.
    Matrix<Scalar> outside = op.c_store, outside_before = c_before;
    outside.block(1, 2, s.m, s.n).setZero();
    outside_before.block(1, 2, s.m, s.n).setZero();
    EXPECT_EQ(relative_error(outside, outside_before), 0.0) << where;

    // b a plain (N, N) matrix (not a transpose), no bias: (M, N) x (N, N).
    Matrix<Scalar> d(s.m, s.n);
    const Matrix<Scalar> a2 = random_matrix<Scalar>(s.m, s.n, rng);
    const Matrix<Scalar> w2 = random_matrix<Scalar>(s.n, s.n, rng);
    with_threads(threads, [&] {
        matmul_rows<Scalar>(a2, w2, d);
        return 0;
    });
    EXPECT_LT(relative_error(d, reference_product(a2, w2)), tolerance<Scalar>(s.n)) << where << ", plain b";
}

template <typename Scalar>
void check_add_transposed_product(const Shape& s, int threads, Rng& rng) {
    // a (M, K) and b (M, N), both blocks of larger matrices; c (K, N) a strided Map.
    const Matrix<Scalar> a_store = random_matrix<Scalar>(s.m + 2, s.k + 3, rng);
    const Matrix<Scalar> b_store = random_matrix<Scalar>(s.m + 5, s.n + 1, rng);
    Matrix<Scalar> c_store = random_matrix<Scalar>(s.k + 1, s.n + 6, rng);
    const auto a = a_store.block(1, 2, s.m, s.k);
    const auto b = b_store.block(3, 1, s.m, s.n);
    StridedRows<Scalar> c(c_store.data() + 4, s.k, s.n, Eigen::OuterStride<>(c_store.cols()));
    const Matrix<double> expected = c.template cast<double>() + reference_product(a.transpose(), b);
    const Matrix<Scalar> c_before = c_store;
    with_threads(threads, [&] {
        add_transposed_product<Scalar>(a, b, c);  // (K, M) x (M, N), accumulated
        return 0;
    });
    const std::string where = std::to_string(s.m) + "x" + std::to_string(s.k) + "x" + std::to_string(s.n) + ", " +
                              std::to_string(threads) + " threads";
    EXPECT_LT(relative_error(c, expected), tolerance<Scalar>(s.m)) << where;
    Matrix<Scalar> outside = c_store, outside_before = c_before;
    outside.block(0, 4, s.k, s.n).setZero();
    outside_before.block(0, 4, s.k, s.n).setZero();
    EXPECT_EQ(relative_error(outside, outside_before), 0.0) << where;
}

template <typename Scalar>
void check_all_shapes(std::uint64_t seed) {
    Rng rng(seed);
    for (const Shape& s : kShapes)
        for (int threads : {1, many_threads()}) {
            check_matmul_rows<Scalar>(s, threads, rng);
            check_add_transposed_product<Scalar>(s, threads, rng);
        }
}

}  // namespace

#ifndef SEQNN_BLIS_MIN_FLOPS  // the default threshold (CI's BLIS stage sends every product to BLIS)
TEST(MatmulBackend, TheThresholdLiesBetweenTheTestShapes) {
    int above = 0;
    for (const Shape& s : kShapes) above += above_threshold(s) ? 1 : 0;
    EXPECT_EQ(above, 2);
}
#endif

TEST(MatmulBackend, MatchesPlainLoopsInDoubleOnStridedOperands) { check_all_shapes<double>(101); }

TEST(MatmulBackend, MatchesPlainLoopsInFloatOnStridedOperands) { check_all_shapes<float>(102); }

// Inside a running parallel region each thread's product runs on that thread (threads_for
// gives 1; BLIS gets a team of one) and is right.
TEST(MatmulBackend, EachThreadOfARunningRegionGetsItsOwnProductRight) {
    Rng rng(103);
    const Shape s = kShapes[5];
    const Matrix<float> a = random_matrix<float>(s.m, s.k, rng), b = random_matrix<float>(s.m, s.n, rng);
    const Matrix<float> w = random_matrix<float>(s.n, s.k, rng);
    const Matrix<double> expected_grad = reference_product(a.transpose(), b);
    const Matrix<double> expected_rows = reference_product(a, w.transpose());
    constexpr int kTeam = 2;
    Matrix<float> grads[kTeam], rows[kTeam];
    for (int i = 0; i < kTeam; ++i) {
        grads[i] = Matrix<float>::Zero(s.k, s.n);
        rows[i].resize(s.m, s.n);
    }
    with_threads(kTeam, [&] {
        parallel_team(kTeam, [&](int thread, int team) {
            for (int i = thread; i < kTeam; i += team) {
                add_transposed_product<float>(a, b, grads[i]);
                matmul_rows<float>(a, w.transpose(), rows[i]);
            }
        });
        return 0;
    });
    for (int i = 0; i < kTeam; ++i) {
        EXPECT_LT(relative_error(grads[i], expected_grad), float_tolerance(s.m)) << "thread " << i;
        EXPECT_LT(relative_error(rows[i], expected_rows), float_tolerance(s.k)) << "thread " << i;
    }
}

// matmul_rows's row split promises the bits of one thread on any thread count. BLIS does
// not: its split of c depends on the thread count (a (2053, 181) x (181, 199) float
// product differed by up to 1e-7 of its largest entry from 2 threads on). With BLIS the
// products above kBlisMinFlops must agree to a float's rounding over K terms instead.
TEST(MatmulBackend, MatmulRowsGivesTheBitsOfOneThreadOnAnyThreadCount) {
    Rng rng(104);
    for (const Shape& s : {kShapes[4], kShapes[5], kShapes[6]}) {
        const Matrix<float> a = random_matrix<float>(s.m, s.k, rng), w = random_matrix<float>(s.n, s.k, rng);
        const auto product = [&](int threads) {
            return with_threads(threads, [&] {
                Matrix<float> c(s.m, s.n);
                matmul_rows<float>(a, w.transpose(), c);
                return c;
            });
        };
        const Matrix<float> serial = product(1);
        for (int threads : {2, 3, many_threads()}) {
#ifdef SEQNN_USE_BLIS
            if (above_threshold(s)) {
                EXPECT_LT(relative_error(product(threads), serial), float_tolerance(s.k))
                    << s.m << " rows, " << threads << " threads";
                continue;
            }
#endif
            EXPECT_EQ(relative_error(product(threads), serial), 0.0) << s.m << " rows, " << threads << " threads";
        }
    }
}

// A scalar type BLIS has no gemm for stays on Eigen, whatever the build.
TEST(MatmulBackend, OtherScalarTypesUseEigen) {
    Rng rng(106);
    const Shape s = kShapes[4];
    const Matrix<long double> a = random_matrix<double>(s.m, s.k, rng).cast<long double>();
    const Matrix<long double> b = random_matrix<double>(s.m, s.n, rng).cast<long double>();
    const Matrix<long double> w = random_matrix<double>(s.n, s.k, rng).cast<long double>();
    Matrix<long double> grad = Matrix<long double>::Zero(s.k, s.n), rows(s.m, s.n);
    add_transposed_product<long double>(a, b, grad);
    matmul_rows<long double>(a, w.transpose(), rows);
    EXPECT_LT(relative_error(grad, reference_product(a.transpose(), b)), 1e-13);
    EXPECT_LT(relative_error(rows, reference_product(a, w.transpose())), 1e-13);
}
