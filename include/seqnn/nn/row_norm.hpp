// What LayerNorm and RMSNorm share: a row width D, an eps, an optional weight (D) that
// starts at 1, the threaded row loops of forward and backward, and their checks. The
// norm itself (nn/layer_norm.hpp, nn/rms_norm.hpp) supplies, as a CRTP derived class:
//   kName                      its name in messages
//   kCentred                   whether rows are centred (LayerNorm) or only scaled (RMSNorm)
//   normalize_row(x, i, out)   out[i] = xhat[i]; returns the row's rstd
//   default_eps()              PyTorch's default eps
// and, when it has one (has_bias()), a `bias` (D). The calls are resolved at compile
// time: the loops are what each norm would write out.
//
// forward keeps nothing: backward takes the forward's input x and recomputes each row's
// rstd (one pass over x, cheap next to the GEMMs around a norm), so forward is const and
// one object may serve several threads at once.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/kernels/elementwise.hpp"

#include <string>

namespace seqnn {

/// The shared part of LayerNorm and RMSNorm (Norm is the derived class).
template <typename Scalar, typename Norm>
class RowNorm {
public:
    Parameter<Scalar> weight;  ///< (D), empty without elementwise_affine

    /// The row width.
    Index dim() const { return dim_; }
    /// The epsilon added under the square root.
    Scalar eps() const { return eps_; }
    /// Whether it has a weight (elementwise_affine).
    bool has_weight() const { return weight.size() > 0; }

    /// y = norm(x): (N, D) -> (N, D). y may be a view, or x itself (in place).
    void forward(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) const {
        check_input(x.rows(), x.cols());
        check_matrix(Norm::kName, "output y", y, x.rows(), dim_);
        parallel_for(x.rows(), streamed_work(dim_), [&](Index r0, Index r1) {
            for (Index i = r0; i < r1; ++i) {
                self().normalize_row(x, i, y);  // y[i] = xhat[i]
                if (has_weight()) y.row(i).array() *= weight.row().array();
                if constexpr (Norm::kCentred)
                    if (self().has_bias()) y.row(i) += self().bias.row();
            }
        });
    }

    /// The norm of each row of x, (N, D).
    Matrix<Scalar> forward(ConstMatrixRef<Scalar> x) const {
        Matrix<Scalar> y(x.rows(), dim_);
        forward(x, y);
        return y;
    }

    /// Given the forward's input x (N, D) and dL/dy (N, D), adds the parameters' gradients
    /// (dweight += sum_rows dy * xhat, dbias += sum_rows dy) and returns dL/dx (N, D).
    Matrix<Scalar> backward(ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> dy) {
        Matrix<Scalar> dx(x.rows(), dim_);
        backward(x, dy, dx);
        return dx;
    }

    /// The same, writing dL/dx into dx (N, D), which must not overlap x or dy. With
    /// dxhat = dy * weight:
    ///   centred (LayerNorm): dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    ///   scaled (RMSNorm):    dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    void backward(ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> dy, MatrixRef<Scalar> dx) {
        const std::string where = std::string(Norm::kName) + ".backward";
        check_input(x.rows(), x.cols());
        if (dy.rows() != x.rows() || dy.cols() != dim_)
            fail(where, "dy has shape " + shape_string(dy) + ", expected " + shape_string(x.rows(), dim_) + " like x");
        check_matrix(where, "dx", dx, x.rows(), dim_);
        const Index n = x.rows();  // dx holds xhat until the last loop
        Eigen::Matrix<Scalar, Eigen::Dynamic, 1> rstd(n);  // (N)
        parallel_for(n, streamed_work(dim_), [&](Index r0, Index r1) {
            for (Index i = r0; i < r1; ++i) rstd(i) = self().normalize_row(x, i, dx);  // dx[i] = xhat[i]
        });

        if (has_weight()) add_column_sums(dy.array() * dx.array(), weight.grad);  // (1, D)
        if constexpr (Norm::kCentred)
            if (self().has_bias()) add_column_sums(dy, self().bias.grad);  // (1, D)

        parallel_for(n, streamed_work(dim_), [&](Index r0, Index r1) {
            for (Index i = r0; i < r1; ++i) {
                auto xhat = dx.row(i).array();  // overwritten in place by dx[i]
                if (has_weight()) {
                    const auto w = weight.row().array();
                    const Scalar mean_dxhat_xhat = (dy.row(i).array() * w * xhat).mean();
                    if constexpr (Norm::kCentred) {
                        const Scalar mean_dxhat = (dy.row(i).array() * w).mean();
                        xhat = rstd(i) * (dy.row(i).array() * w - mean_dxhat - xhat * mean_dxhat_xhat);
                    } else {
                        xhat = rstd(i) * (dy.row(i).array() * w - xhat * mean_dxhat_xhat);
                    }
                } else {
                    const Scalar mean_dxhat_xhat = (dy.row(i).array() * xhat).mean();
                    if constexpr (Norm::kCentred) {
                        const Scalar mean_dxhat = dy.row(i).mean();
                        xhat = rstd(i) * (dy.row(i).array() - mean_dxhat - xhat * mean_dxhat_xhat);
                    } else {
                        xhat = rstd(i) * (dy.row(i).array() - xhat * mean_dxhat_xhat);
                    }
                }
            }
        });
    }

protected:
    RowNorm() = default;
    /// Checks dim and eps; with elementwise_affine, a weight of ones.
    RowNorm(Index dim, Scalar eps, bool elementwise_affine) : dim_(dim), eps_(eps) {
        if (dim <= 0) fail(Norm::kName, "dim must be positive, got " + std::to_string(dim));
        if (!(eps >= Scalar(0))) fail(Norm::kName, "eps must be >= 0, got " + std::to_string(eps));
        if (elementwise_affine) {
            weight = Parameter<Scalar>(dim);
            weight.value.setOnes();
        }
    }

    /// Throws unless an input of (rows, cols) has D columns.
    void check_input(Index rows, Index cols) const {
        if (cols != dim_)
            fail(Norm::kName, "input has shape " + shape_string(rows, cols) + ", expected (N, " +
                                  std::to_string(dim_) + ")");
    }

    Index dim_ = 0;                     ///< D
    Scalar eps_ = Norm::default_eps();  ///< added to the variance (or mean square)

private:
    const Norm& self() const { return static_cast<const Norm&>(*this); }
    Norm& self() { return static_cast<Norm&>(*this); }
};

}  // namespace seqnn
