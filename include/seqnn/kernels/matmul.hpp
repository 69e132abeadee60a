/// @file
/// Products of a tall activation matrix and a small weight matrix, c = a b with a (M, K),
/// M = B*T rows, and b (K, N) a weight or its transpose: the projections of every layer.
///
/// The rows are split across threads and each thread multiplies its own block with
/// Eigen's serial GEMM, packing b for itself. Eigen's own parallel GEMM instead splits the
/// work into panels whose threads share packed blocks and wait on each other
/// (bench_scan's BM_MatmulRows and BM_Gemm compare the two).
///
/// The blocks start at multiples of 16 rows (parallel_aligned_blocks), so every row goes
/// through the same micro-kernel path as in a one-thread product (Eigen takes the rows in
/// panels of 4; a block ending elsewhere would send its last rows through the remainder
/// path, which rounds differently): the same bits on any thread count.
///
/// Short matrices (a decoding step's B rows) keep Eigen's own GEMM, which splits the
/// columns instead: with fewer than kMinRowsPerThread rows a thread, each thread would
/// pack the whole weight for a few rows of work. Eigen's parallel GEMM makes no promise
/// about bits across thread counts, so the one above holds for the row split only.
#pragma once

#include "seqnn/core/parallel_rows.hpp"
#include "seqnn/core/types.hpp"

namespace seqnn {

/// Rows per thread below which matmul_rows leaves the product to Eigen.
inline constexpr Index kMinRowsPerThread = 64;

/// Whether matmul_rows splits an (M, ...) product by rows on this thread count.
inline bool split_matmul_by_rows(Index rows, Index cols) {
#ifdef _OPENMP
    return rows >= kMinRowsPerThread * omp_get_max_threads() && worth_parallel(rows, cols);
#else
    (void)rows;
    (void)cols;
    return false;
#endif
}

/// c = a b (+ bias on every row): (M, K) x (K, N) -> (M, N). `b` is any Eigen expression
/// of a (K, N) matrix, such as weight.transpose(); `bias` is N values or nullptr. Each
/// thread adds the bias to its own rows right after their product, while they are in
/// cache. c must not alias a or b.
template <typename Scalar, typename Rhs>
void matmul_rows(ConstMatrixRef<Scalar> a, const Rhs& b, MatrixRef<Scalar> c, const Scalar* bias = nullptr) {
    const auto product = [&](Index r0, Index r1) {
        auto rows = c.middleRows(r0, r1 - r0);
        rows.noalias() = a.middleRows(r0, r1 - r0) * b;  // (rows, K) x (K, N)
        if (bias) rows.rowwise() += Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(bias, c.cols());
    };
    if (split_matmul_by_rows(a.rows(), c.cols()))
        parallel_aligned_blocks(a.rows(), c.cols(), product);
    else
        product(0, a.rows());
}

}  // namespace seqnn
