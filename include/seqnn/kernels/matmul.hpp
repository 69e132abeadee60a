// Products of a tall activation matrix and a small weight matrix, c = a b with a (M, K),
// M = B*T rows, and b (K, N) a weight or its transpose: the projections of every layer.
//
// The rows are split across threads and each thread multiplies its own block with
// Eigen's serial GEMM, packing b for itself. Eigen's own parallel GEMM instead splits the
// work into column panels whose threads share packed blocks and wait on each other; on
// 16 cores, at the Transformer block's and char_lm's shapes (M = 16384, K and N from
// 256 to 1536), it ran at 485-771 GFLOP/s where the row split ran at 756-870
// (bench_scan: BM_GemmEigen against BM_GemmRowSplit).
//
// The blocks start at multiples of 16 rows (parallel_aligned_blocks), so every row goes
// through the same micro-kernel path as in a one-thread product (a block that ended at a
// row count not a multiple of Eigen's 4-row panels would send its last rows through the
// remainder path, which rounds differently): the same bits on any thread count.
//
// Short matrices (a decoding step's B rows) keep Eigen's own GEMM, which splits the
// columns instead: fewer than kMinRowsPerThread rows a thread would leave its
// micro-kernel (48 rows for float on AVX-512) mostly idle.
#pragma once

#include "seqnn/core/parallel_rows.hpp"
#include "seqnn/core/types.hpp"

namespace seqnn {

inline constexpr Index kMinRowsPerThread = 64;

// Whether matmul_rows splits an (M, ...) product by rows on this thread count.
inline bool split_matmul_by_rows(Index rows, Index cols) {
#ifdef _OPENMP
    return rows >= kMinRowsPerThread * omp_get_max_threads() && worth_parallel(rows, cols);
#else
    (void)rows;
    (void)cols;
    return false;
#endif
}

// c = a b: (M, K) x (K, N) -> (M, N). `b` is any Eigen expression of a (K, N) matrix,
// such as weight.transpose(); c must not alias a or b.
template <typename Scalar, typename Rhs>
void matmul_rows(ConstMatrixRef<Scalar> a, const Rhs& b, MatrixRef<Scalar> c) {
    if (split_matmul_by_rows(a.rows(), c.cols())) {
        parallel_aligned_blocks(a.rows(), c.cols(), [&](Index r0, Index r1) {
            c.middleRows(r0, r1 - r0).noalias() = a.middleRows(r0, r1 - r0) * b;  // (rows, K) x (K, N)
        });
    } else {
        c.noalias() = a * b;
    }
}

}  // namespace seqnn
