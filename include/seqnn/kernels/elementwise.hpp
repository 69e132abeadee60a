// Threaded element-wise passes over (N, D) matrices, split by rows (parallel_for): add,
// copy, and the column sums of a bias's or a norm's gradient.
#pragma once

#include "seqnn/core/parallel.hpp"
#include "seqnn/core/types.hpp"

#include <Eigen/Core>

namespace seqnn {

/// m += addend (N, D), split by rows across threads.
template <typename Scalar>
void parallel_add(MatrixRef<Scalar> m, ConstMatrixRef<Scalar> addend) {
    parallel_for(m.rows(), streamed_work(m.cols()), [&](Index r0, Index r1) {
        m.middleRows(r0, r1 - r0) += addend.middleRows(r0, r1 - r0);
    });
}

/// dst = src (N, D), split by rows across threads; dst is resized to src's shape. A new
/// dst is first touched by the threads that will use its rows.
template <typename Scalar>
void parallel_copy(Matrix<Scalar>& dst, ConstMatrixRef<Scalar> src) {
    if (dst.rows() != src.rows() || dst.cols() != src.cols()) dst.resize(src.rows(), src.cols());
    parallel_for(src.rows(), streamed_work(src.cols()), [&](Index r0, Index r1) {
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

/// Columns per block of add_column_sums: a cache line of floats, whole SIMD packets.
inline constexpr Index kColumnBlock = 16;

/// out (1, C) += the column sums of m (N, C), an Eigen matrix or array expression
/// (say dy, or dy * xhat for a norm's weight gradient). Split by 16-column blocks, so
/// each column's sum takes the same path, and gives the same bits, for any thread count.
template <typename Expr, typename Out>
void add_column_sums(const Expr& m, Out&& out) {
    using Scalar = typename Expr::Scalar;
    const auto sum_columns = [&](Index c0, Index c1) {
        // Row by row, in order: contiguous reads of a row-major matrix, vectorised across columns.
        Eigen::Array<Scalar, 1, Eigen::Dynamic> sums = Eigen::Array<Scalar, 1, Eigen::Dynamic>::Zero(c1 - c0);
        for (Index r = 0; r < m.rows(); ++r) sums += m.row(r).segment(c0, c1 - c0).array();
        out.middleCols(c0, c1 - c0).array() += sums;
    };
    parallel_for(m.cols(), streamed_work(m.rows()), sum_columns, kColumnBlock);
}

}  // namespace seqnn
