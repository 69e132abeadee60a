// RMSNorm over the last dimension, PyTorch's torch.nn.RMSNorm(D, eps, elementwise_affine):
//   y = x * rstd * weight,   rstd = 1 / sqrt(mean(x^2) + eps),
// with the mean over each row's D features. weight (D) starts at 1. The default eps
// is std::numeric_limits<Scalar>::epsilon(), what PyTorch uses when eps is None
// (torch.finfo(dtype).eps).
//
// forward keeps nothing: backward takes the forward's input x and recomputes each
// row's rstd, so forward is const and one object may serve several threads at once.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/kernels/elementwise.hpp"

#include <cmath>
#include <limits>
#include <string>

namespace seqnn {

/// Root-mean-square normalisation over each row, nn.RMSNorm.
template <typename Scalar>
class RMSNorm {
public:
    Parameter<Scalar> weight;  ///< (D), empty without elementwise_affine

    RMSNorm() = default;
    /// An RMSNorm over rows of `dim` elements, with PyTorch's defaults.
    explicit RMSNorm(Index dim, Scalar eps = std::numeric_limits<Scalar>::epsilon(), bool elementwise_affine = true)
        : dim_(dim), eps_(eps) {
        if (dim <= 0) fail("RMSNorm", "dim must be positive, got " + std::to_string(dim));
        if (!(eps >= Scalar(0))) fail("RMSNorm", "eps must be >= 0, got " + std::to_string(eps));
        if (elementwise_affine) {
            weight = Parameter<Scalar>(dim);
            weight.value.setOnes();
        }
    }

    /// The row width.
    Index dim() const { return dim_; }
    /// The epsilon added to the mean square.
    Scalar eps() const { return eps_; }
    /// Whether it has a weight (elementwise_affine).
    bool has_weight() const { return weight.size() > 0; }

    /// y = RMSNorm(x): (N, D) -> (N, D). y may be a view, or x itself (in place).
    void forward(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) const {
        check_input(x.rows(), x.cols());
        check_matrix("RMSNorm", "output y", y, x.rows(), dim_);
        const Index n = x.rows();
        parallel_for(n, streamed_work(dim_), [&](Index r0, Index r1) {
            for (Index i = r0; i < r1; ++i) {
                normalize_row(x, i, y);  // y[i] = xhat[i]
                if (has_weight()) y.row(i).array() *= weight.row().array();
            }
        });
    }

    /// y = x / sqrt(mean(x^2) + eps) * weight, row by row.
    Matrix<Scalar> forward(ConstMatrixRef<Scalar> x) const {
        Matrix<Scalar> y(x.rows(), dim_);
        forward(x, y);
        return y;
    }

    /// Given the forward's input x (N, D) and dL/dy (N, D): with xhat = x * rstd,
    /// dweight += sum_rows dy * xhat, and returns dL/dx (N, D):
    ///   dxhat = dy * weight,   dx = rstd * (dxhat - xhat * mean(dxhat * xhat)).
    Matrix<Scalar> backward(ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> dy) {
        check_input(x.rows(), x.cols());
        if (dy.rows() != x.rows() || dy.cols() != dim_)
            fail("RMSNorm.backward",
                 "dy has shape " + shape_string(dy) + ", expected " + shape_string(x.rows(), dim_) + " like x");
        const Index n = x.rows();
        Matrix<Scalar> dx(n, dim_);                    // holds xhat until the last loop
        Eigen::Matrix<Scalar, Eigen::Dynamic, 1> rstd(n);  // (N)
        parallel_for(n, streamed_work(dim_), [&](Index r0, Index r1) {
            for (Index i = r0; i < r1; ++i) rstd(i) = normalize_row(x, i, dx);  // dx[i] = xhat[i]
        });

        if (has_weight()) add_column_sums(dy.array() * dx.array(), weight.grad);  // (1, D)

        parallel_for(n, streamed_work(dim_), [&](Index r0, Index r1) {
            for (Index i = r0; i < r1; ++i) {
                auto xhat = dx.row(i).array();  // overwritten in place by dx[i]
                if (has_weight()) {
                    const auto w = weight.row().array();
                    const Scalar mean_dxhat_xhat = (dy.row(i).array() * w * xhat).mean();
                    xhat = rstd(i) * (dy.row(i).array() * w - xhat * mean_dxhat_xhat);
                } else {
                    const Scalar mean_dxhat_xhat = (dy.row(i).array() * xhat).mean();
                    xhat = rstd(i) * (dy.row(i).array() - xhat * mean_dxhat_xhat);
                }
            }
        });
        return dx;
    }

    /// Appends `weight` after `prefix`.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) {
        if (has_weight()) out.push_back({prefix + "weight", &weight});
    }

private:
    // out[i] = x[i] * rstd; returns rstd. out may be x.
    Scalar normalize_row(const ConstMatrixRef<Scalar>& x, Index i, MatrixRef<Scalar> out) const {
        const Scalar mean_square = x.row(i).squaredNorm() / Scalar(dim_);
        const Scalar rstd = Scalar(1) / std::sqrt(mean_square + eps_);
        out.row(i) = x.row(i) * rstd;
        return rstd;
    }

    void check_input(Index rows, Index cols) const {
        if (cols != dim_)
            fail("RMSNorm", "input has shape " + shape_string(rows, cols) + ", expected (N, " + std::to_string(dim_) +
                                ")");
    }

    Index dim_ = 0;
    Scalar eps_ = std::numeric_limits<Scalar>::epsilon();
};

}  // namespace seqnn
