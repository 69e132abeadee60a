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
#pragma once

#include "seqnn/core/parallel.hpp"
#include "seqnn/core/types.hpp"

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
    const int threads = matmul_row_threads(a.rows(), a.cols(), c.cols());
    if (threads > 1)
        parallel_blocks(threads, a.rows(), product, kMatmulRowAlign);
    else
        product(0, a.rows());
}

}  // namespace seqnn
