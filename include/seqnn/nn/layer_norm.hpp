// LayerNorm over the last dimension, PyTorch's nn.LayerNorm(D, eps, elementwise_affine, bias):
//   y = (x - mean) * rstd * weight + bias,   rstd = 1 / sqrt(var + eps),
// with mean and the biased variance (divided by D) taken over each row's D features.
// weight (D) starts at 1 and bias (D) at 0.
//
// forward keeps nothing: backward takes the forward's input x and recomputes each
// row's mean and rstd (one pass over x, cheap next to the GEMMs around a norm), so
// forward is const and one object may serve several threads at once.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/kernels/elementwise.hpp"

#include <cmath>
#include <string>

namespace seqnn {

/// Layer normalisation over each row, nn.LayerNorm.
template <typename Scalar>
class LayerNorm {
public:
    Parameter<Scalar> weight;  ///< (D), empty without elementwise_affine
    Parameter<Scalar> bias;    ///< (D), empty without elementwise_affine or without bias

    LayerNorm() = default;
    /// A LayerNorm over rows of `dim` elements, with PyTorch's defaults.
    explicit LayerNorm(Index dim, Scalar eps = Scalar(1e-5), bool elementwise_affine = true, bool with_bias = true)
        : dim_(dim), eps_(eps) {
        if (dim <= 0) fail("LayerNorm", "dim must be positive, got " + std::to_string(dim));
        if (!(eps >= Scalar(0))) fail("LayerNorm", "eps must be >= 0, got " + std::to_string(eps));
        if (elementwise_affine) {
            weight = Parameter<Scalar>(dim);
            weight.value.setOnes();
            if (with_bias) bias = Parameter<Scalar>(dim);  // zeros
        }
    }

    /// The row width.
    Index dim() const { return dim_; }
    /// The epsilon added to the variance.
    Scalar eps() const { return eps_; }
    /// Whether it has a weight (elementwise_affine).
    bool has_weight() const { return weight.size() > 0; }
    /// Whether it has a bias.
    bool has_bias() const { return bias.size() > 0; }

    /// y = LayerNorm(x): (N, D) -> (N, D). y may be a view, or x itself (in place).
    void forward(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) const {
        check_input(x.rows(), x.cols());
        check_matrix("LayerNorm", "output y", y, x.rows(), dim_);
        const Index n = x.rows();
        parallel_for(n, streamed_work(dim_), [&](Index r0, Index r1) {
            for (Index i = r0; i < r1; ++i) {
                normalize_row(x, i, y);  // y[i] = xhat[i]
                if (has_weight()) y.row(i).array() *= weight.row().array();
                if (has_bias()) y.row(i) += bias.row();
            }
        });
    }

    /// y = (x - mean) / sqrt(var + eps) * weight + bias, row by row.
    Matrix<Scalar> forward(ConstMatrixRef<Scalar> x) const {
        Matrix<Scalar> y(x.rows(), dim_);
        forward(x, y);
        return y;
    }

    /// Given the forward's input x (N, D) and dL/dy (N, D): with xhat = (x - mean) * rstd,
    /// dweight += sum_rows dy * xhat, dbias += sum_rows dy, and returns dL/dx (N, D):
    ///   dxhat = dy * weight,   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    Matrix<Scalar> backward(ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> dy) {
        Matrix<Scalar> dx(x.rows(), dim_);
        backward(x, dy, dx);
        return dx;
    }

    /// The same, writing dL/dx into dx (N, D), which must not overlap x or dy.
    void backward(ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> dy, MatrixRef<Scalar> dx) {
        check_input(x.rows(), x.cols());
        if (dy.rows() != x.rows() || dy.cols() != dim_)
            fail("LayerNorm.backward",
                 "dy has shape " + shape_string(dy) + ", expected " + shape_string(x.rows(), dim_) + " like x");
        check_matrix("LayerNorm.backward", "dx", dx, x.rows(), dim_);
        const Index n = x.rows();  // dx holds xhat until the last loop
        Eigen::Matrix<Scalar, Eigen::Dynamic, 1> rstd(n);  // (N)
        parallel_for(n, streamed_work(dim_), [&](Index r0, Index r1) {
            for (Index i = r0; i < r1; ++i) rstd(i) = normalize_row(x, i, dx);  // dx[i] = xhat[i]
        });

        if (has_weight()) add_column_sums(dy.array() * dx.array(), weight.grad);  // (1, D)
        if (has_bias()) add_column_sums(dy, bias.grad);                            // (1, D)

        parallel_for(n, streamed_work(dim_), [&](Index r0, Index r1) {
            for (Index i = r0; i < r1; ++i) {
                auto xhat = dx.row(i).array();  // overwritten in place by dx[i]
                if (has_weight()) {
                    const auto w = weight.row().array();
                    const Scalar mean_dxhat = (dy.row(i).array() * w).mean();
                    const Scalar mean_dxhat_xhat = (dy.row(i).array() * w * xhat).mean();
                    xhat = rstd(i) * (dy.row(i).array() * w - mean_dxhat - xhat * mean_dxhat_xhat);
                } else {
                    const Scalar mean_dxhat = dy.row(i).mean();
                    const Scalar mean_dxhat_xhat = (dy.row(i).array() * xhat).mean();
                    xhat = rstd(i) * (dy.row(i).array() - mean_dxhat - xhat * mean_dxhat_xhat);
                }
            }
        });
    }

    /// Appends `weight` and `bias` after `prefix`.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) {
        if (has_weight()) out.push_back({prefix + "weight", &weight});
        if (has_bias()) out.push_back({prefix + "bias", &bias});
    }

private:
    // out[i] = (x[i] - mean) * rstd, two passes over the row so that float keeps its
    // accuracy when the mean is large against the spread; returns rstd. out may be x.
    Scalar normalize_row(const ConstMatrixRef<Scalar>& x, Index i, MatrixRef<Scalar> out) const {
        const Scalar mean = x.row(i).mean();
        const Scalar var = (x.row(i).array() - mean).square().mean();
        const Scalar rstd = Scalar(1) / std::sqrt(var + eps_);
        out.row(i).array() = (x.row(i).array() - mean) * rstd;
        return rstd;
    }

    void check_input(Index rows, Index cols) const {
        if (cols != dim_)
            fail("LayerNorm", "input has shape " + shape_string(rows, cols) + ", expected (N, " + std::to_string(dim_) +
                                  ")");
    }

    Index dim_ = 0;
    Scalar eps_ = Scalar(1e-5);
};

}  // namespace seqnn
