// One switch for the library's threads. With OpenMP off everything runs on one thread.
#pragma once

#include "seqnn/core/parallel_rows.hpp"
#include "seqnn/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace seqnn {

/// Sets the thread count for seqnn's own parallel loops and for Eigen's GEMMs.
inline void set_num_threads(int n) {
    if (n < 1) n = 1;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    Eigen::setNbThreads(n);
}

/// The number of threads a parallel region started now would use (1 without OpenMP).
inline int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/// Whether seqnn was compiled with OpenMP.
inline bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

/// m += addend (N, D), split by rows across threads.
template <typename Scalar>
void parallel_add(MatrixRef<Scalar> m, ConstMatrixRef<Scalar> addend) {
    parallel_row_blocks(m.rows(), m.cols(), [&](Index r0, Index r1) {
        m.middleRows(r0, r1 - r0) += addend.middleRows(r0, r1 - r0);
    });
}

/// dst = src (N, D), split by rows across threads; dst is resized to src's shape. A new
/// dst is first touched by the threads that will use its rows.
template <typename Scalar>
void parallel_copy(Matrix<Scalar>& dst, ConstMatrixRef<Scalar> src) {
    if (dst.rows() != src.rows() || dst.cols() != src.cols()) dst.resize(src.rows(), src.cols());
    parallel_row_blocks(src.rows(), src.cols(), [&](Index r0, Index r1) {
        dst.middleRows(r0, r1 - r0) = src.middleRows(r0, r1 - r0);
    });
}

/// A copy of src, made as parallel_copy makes it.
template <typename Scalar>
Matrix<Scalar> parallel_copy_of(ConstMatrixRef<Scalar> src) {
    Matrix<Scalar> dst;
    parallel_copy<Scalar>(dst, src);
    return dst;
}

/// out (1, C) += the column sums of m (N, C), an Eigen matrix or array expression
/// (say dy, or dy * xhat for a norm's weight gradient). Split by 16-column blocks, so
/// each column's sum takes the same path, and gives the same bits, for any thread count.
template <typename Expr, typename Out>
void add_column_sums(const Expr& m, Out&& out) {
    using Scalar = typename Expr::Scalar;
    parallel_aligned_blocks(m.cols(), m.rows(), [&](Index c0, Index c1) {
        // Row by row, in order: contiguous reads of a row-major matrix, vectorised across columns.
        Eigen::Array<Scalar, 1, Eigen::Dynamic> sums = Eigen::Array<Scalar, 1, Eigen::Dynamic>::Zero(c1 - c0);
        for (Index r = 0; r < m.rows(); ++r) sums += m.row(r).segment(c0, c1 - c0).array();
        out.middleCols(c0, c1 - c0).array() += sums;
    });
}

}  // namespace seqnn
