/// @file
/// Products of a tall activation matrix and a small weight matrix, c = a b with a (M, K),
/// M = B*T rows, and b (K, N) a weight or its transpose: the projections of every layer.
///
/// The rows are split across threads and each thread multiplies its own block with
/// Eigen's serial GEMM, packing b for itself. Eigen's own parallel GEMM instead splits the
/// work into panels whose threads share packed blocks and wait on each other
/// (bench_scan's BM_MatmulRows and BM_Gemm compare the two).
///
/// The blocks start at multiples of 16 rows (parallel_for's align), so every row goes
/// through the same micro-kernel path as in a one-thread product (Eigen takes the rows in
/// panels of 4; a block ending elsewhere would send its last rows through the remainder
/// path, which rounds differently): the same bits on any thread count.
///
/// The threads follow core/parallel.hpp's rule on the product's 2 M K N flops, with at
/// least kMinRowsPerThread rows a thread: with fewer, each thread would pack the whole
/// weight for a few rows of work. A product that gets one thread (a decoding step's B
/// rows) keeps Eigen's own GEMM, which splits the columns instead when Eigen threads it.
/// Eigen's parallel GEMM makes no promise about bits across thread counts, so the one
/// above holds for the row split only.
///
/// add_transposed_product is the other shape, c += a^T b with a (M, K) and b (M, N): the
/// weight gradients, a sum over the M = B*T rows.
///
/// Optional BLIS backend (CMake option SEQNN_USE_BLIS, which defines SEQNN_USE_BLIS and
/// links libblis): float and double products of at least kBlisMinFlops go to BLIS's typed
/// gemm (bli_sgemm_ex / bli_dgemm_ex), which takes each operand's row and column strides,
/// so row-major matrices, transposes and strided Refs go in as they are, without a copy.
/// BLIS runs on the threads threads_for gives the product's flops (1 inside a parallel
/// region), through an rntm_t; a BLIS built without threads runs serially. Other scalar
/// types, operands without direct access and smaller products stay on Eigen. blis.h is a
/// C header that defines macros such as TRUE, FALSE and restrict for whoever includes
/// this one.
#pragma once

#include "seqnn/core/parallel.hpp"
#include "seqnn/core/types.hpp"

#ifdef SEQNN_USE_BLIS
#include <blis.h>

#include <type_traits>
#endif

namespace seqnn {

/// Rows per thread below which matmul_rows does not give a thread a block.
inline constexpr Index kMinRowsPerThread = 64;
/// Rows per block boundary of the row split (Eigen's micro-kernel takes rows in panels of 4).
inline constexpr Index kMatmulRowAlign = 16;

/// The threads matmul_rows splits an (M, K) x (K, N) product over by rows; 1: it leaves
/// the product to Eigen.
inline int matmul_row_threads(Index rows, Index depth, Index cols) {
    return threads_for(2.0 * double(rows) * double(depth) * double(cols), rows / kMinRowsPerThread);
}

/// Products of at least this many flops (2 M K N) go to BLIS when SEQNN_USE_BLIS is on.
/// 2^27 flops is a (512, 256) x (256, 512) product. It is not a measured crossover:
/// bench_backends (docs/results.md) has BLIS slower than Eigen at 8 Mflop (M:16/K:256/N:1024:
/// 0.4x on 1 thread, 0.95x on 16) and 1.2-2.4x faster at 8.6 Gflop on 16 threads, with no
/// shape between. The threshold keeps decoding steps and small batches on Eigen; move it
/// once the layer benchmarks have measured the shapes between. Compiling with
/// -DSEQNN_BLIS_MIN_FLOPS=n sets it to n: CI's BLIS stage sets 1, so that every product of
/// the layer tests, far below 2^27 flops, goes through BLIS.
inline constexpr double kBlisMinFlops =
#ifdef SEQNN_BLIS_MIN_FLOPS
    double(SEQNN_BLIS_MIN_FLOPS);
#else
    double(1 << 27);
#endif

namespace matmul_detail {

#ifdef SEQNN_USE_BLIS
/// Whether BLIS's typed API has a gemm for Scalar.
template <typename Scalar>
inline constexpr bool blis_scalar = std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

/// c = a b + beta c through BLIS on `threads` threads: (m, k) x (k, n) -> (m, n), each
/// operand given by its data and its row and column strides (in elements).
template <typename Scalar>
void blis_gemm(Index m, Index n, Index k, const Scalar* a, Index rs_a, Index cs_a, const Scalar* b, Index rs_b,
               Index cs_b, Scalar beta, Scalar* c, Index rs_c, Index cs_c, int threads) {
    rntm_t rntm;
    bli_rntm_init(&rntm);
    bli_rntm_set_num_threads(static_cast<dim_t>(threads), &rntm);
    Scalar alpha = 1;
    // BLIS takes non-const pointers but reads a and b only.
    auto* a_ = const_cast<Scalar*>(a);
    auto* b_ = const_cast<Scalar*>(b);
    if constexpr (std::is_same_v<Scalar, float>)
        bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &alpha, a_, rs_a, cs_a, b_, rs_b, cs_b, &beta, c,
                     rs_c, cs_c, nullptr, &rntm);
    else
        bli_dgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &alpha, a_, rs_a, cs_a, b_, rs_b, cs_b, &beta, c,
                     rs_c, cs_c, nullptr, &rntm);
}
#endif

/// The flops of an (m, k) x (k, n) product.
inline double product_flops(Index m, Index k, Index n) { return 2.0 * double(m) * double(k) * double(n); }

}  // namespace matmul_detail

/// c = a b (+ bias on every row): (M, K) x (K, N) -> (M, N). `b` is any Eigen expression
/// of a (K, N) matrix, such as weight.transpose(); `bias` is N values or nullptr. Each
/// thread adds the bias to its own rows right after their product, while they are in
/// cache. c must not alias a or b.
///
/// With SEQNN_USE_BLIS, a float or double product of at least kBlisMinFlops whose b has
/// direct access (a matrix, a Map, a Ref, their transposes) is one BLIS gemm over all rows
/// instead, the bias added after it, split by rows. The promise of the same bits on any
/// thread count does not hold there: BLIS's split of c depends on the thread count and it
/// makes no such promise (in test_matmul_backend a (2053, 181) x (181, 199) float product
/// moved by up to 1e-7 of its largest entry from 2 threads on).
template <typename Scalar, typename Rhs>
void matmul_rows(ConstMatrixRef<Scalar> a, const Rhs& b, MatrixRef<Scalar> c, const Scalar* bias = nullptr) {
    const auto add_bias = [&](Index r0, Index r1) {
        c.middleRows(r0, r1 - r0).rowwise() += Eigen::Map<const RowVector<Scalar>>(bias, c.cols());
    };
#ifdef SEQNN_USE_BLIS
    if constexpr (matmul_detail::blis_scalar<Scalar> && (int(Rhs::Flags) & Eigen::DirectAccessBit) != 0) {
        const double flops = matmul_detail::product_flops(a.rows(), a.cols(), c.cols());
        if (flops >= kBlisMinFlops) {
            matmul_detail::blis_gemm<Scalar>(a.rows(), c.cols(), a.cols(), a.data(), a.rowStride(), a.colStride(),
                                             b.data(), b.rowStride(), b.colStride(), Scalar(0), c.data(),
                                             c.rowStride(), c.colStride(), threads_for(flops));  // (M, K) x (K, N)
            if (bias) parallel_for(c.rows(), streamed_work(c.cols()), add_bias);
            return;
        }
    }
#endif
    const auto product = [&](Index r0, Index r1) {
        c.middleRows(r0, r1 - r0).noalias() = a.middleRows(r0, r1 - r0) * b;  // (rows, K) x (K, N)
        if (bias) add_bias(r0, r1);
    };
    const int threads = matmul_row_threads(a.rows(), a.cols(), c.cols());
    if (threads > 1)
        parallel_blocks(threads, a.rows(), product, kMatmulRowAlign);
    else
        product(0, a.rows());
}

/// c += a^T b: (M, K)^T x (M, N) -> (K, N), the weight gradients' product, summed over
/// the M = B*T rows (dW += dY^T X). a and b may be strided views; c must not alias them.
/// Eigen's GEMM, threaded as Eigen threads it; with SEQNN_USE_BLIS, float and double
/// products of at least kBlisMinFlops go to one BLIS gemm with beta = 1.
template <typename Scalar>
void add_transposed_product(ConstMatrixRef<Scalar> a, ConstMatrixRef<Scalar> b, MatrixRef<Scalar> c) {
#ifdef SEQNN_USE_BLIS
    if constexpr (matmul_detail::blis_scalar<Scalar>) {
        const double flops = matmul_detail::product_flops(a.cols(), a.rows(), b.cols());
        if (flops >= kBlisMinFlops) {  // a^T is a with its strides swapped
            matmul_detail::blis_gemm<Scalar>(a.cols(), b.cols(), a.rows(), a.data(), a.colStride(), a.rowStride(),
                                             b.data(), b.rowStride(), b.colStride(), Scalar(1), c.data(),
                                             c.rowStride(), c.colStride(), threads_for(flops));  // (K, M) x (M, N)
            return;
        }
    }
#endif
    if (c.rows() > c.cols()) {
        // Eigen's GEMM blocks the rows of a column-major result and the columns of a row-major
        // one; blocking the longer side ran the LSTM's (1024, 16384) x (16384, 512) 1.2x
        // faster on one core. So a tall c gets its product in column-major order first.
        const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor> product =
            a.transpose() * b;  // (K, M) x (M, N)
        c += product;
        return;
    }
    c.noalias() += a.transpose() * b;  // (K, M) x (M, N)
}

}  // namespace seqnn
