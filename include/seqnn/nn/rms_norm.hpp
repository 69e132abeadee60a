// RMSNorm over the last dimension, PyTorch's torch.nn.RMSNorm(D, eps, elementwise_affine):
//   y = x * rstd * weight,   rstd = 1 / sqrt(mean(x^2) + eps),
// with the mean over each row's D features. weight (D) starts at 1. The default eps
// is std::numeric_limits<Scalar>::epsilon(), what PyTorch uses when eps is None
// (torch.finfo(dtype).eps). The row loops are nn/row_norm.hpp's.
#pragma once

#include "seqnn/nn/row_norm.hpp"

#include <cmath>
#include <limits>
#include <string>

namespace seqnn {

/// Root-mean-square normalisation over each row, nn.RMSNorm.
template <typename Scalar>
class RMSNorm : public RowNorm<Scalar, RMSNorm<Scalar>> {
    using Base = RowNorm<Scalar, RMSNorm<Scalar>>;
    friend Base;

public:
    RMSNorm() = default;
    /// An RMSNorm over rows of `dim` elements, with PyTorch's defaults.
    explicit RMSNorm(Index dim, Scalar eps = default_eps(), bool elementwise_affine = true)
        : Base(dim, eps, elementwise_affine) {}

    /// Appends `weight` after `prefix`.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) {
        if (this->has_weight()) out.push_back({prefix + "weight", &this->weight});
    }

private:
    static constexpr const char* kName = "RMSNorm";
    static constexpr bool kCentred = false;
    static Scalar default_eps() { return std::numeric_limits<Scalar>::epsilon(); }

    // out[i] = x[i] * rstd; returns rstd. out may be x.
    Scalar normalize_row(const ConstMatrixRef<Scalar>& x, Index i, MatrixRef<Scalar> out) const {
        const Scalar mean_square = x.row(i).squaredNorm() / Scalar(this->dim_);
        const Scalar rstd = Scalar(1) / std::sqrt(mean_square + this->eps_);
        out.row(i) = x.row(i) * rstd;
        return rstd;
    }
};

}  // namespace seqnn
