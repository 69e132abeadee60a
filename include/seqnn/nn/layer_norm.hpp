// LayerNorm over the last dimension, PyTorch's nn.LayerNorm(D, eps, elementwise_affine, bias):
//   y = (x - mean) * rstd * weight + bias,   rstd = 1 / sqrt(var + eps),
// with mean and the biased variance (divided by D) taken over each row's D features.
// weight (D) starts at 1 and bias (D) at 0. The row loops are nn/row_norm.hpp's.
#pragma once

#include "seqnn/nn/row_norm.hpp"

#include <cmath>
#include <string>

namespace seqnn {

/// Layer normalisation over each row, nn.LayerNorm.
template <typename Scalar>
class LayerNorm : public RowNorm<Scalar, LayerNorm<Scalar>> {
    using Base = RowNorm<Scalar, LayerNorm<Scalar>>;
    friend Base;

public:
    Parameter<Scalar> bias;  ///< (D), empty without elementwise_affine or without bias

    LayerNorm() = default;
    /// A LayerNorm over rows of `dim` elements, with PyTorch's defaults.
    explicit LayerNorm(Index dim, Scalar eps = default_eps(), bool elementwise_affine = true, bool with_bias = true)
        : Base(dim, eps, elementwise_affine) {
        if (elementwise_affine && with_bias) bias = Parameter<Scalar>(dim);  // zeros
    }

    /// Whether it has a bias.
    bool has_bias() const { return bias.size() > 0; }

    /// Appends `weight` and `bias` after `prefix`.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) {
        if (this->has_weight()) out.push_back({prefix + "weight", &this->weight});
        if (has_bias()) out.push_back({prefix + "bias", &bias});
    }

private:
    static constexpr const char* kName = "LayerNorm";
    static constexpr bool kCentred = true;
    static Scalar default_eps() { return Scalar(1e-5); }

    // out[i] = (x[i] - mean) * rstd, two passes over the row so that float keeps its
    // accuracy when the mean is large against the spread; returns rstd. out may be x.
    Scalar normalize_row(const ConstMatrixRef<Scalar>& x, Index i, MatrixRef<Scalar> out) const {
        const Scalar mean = x.row(i).mean();
        const Scalar var = (x.row(i).array() - mean).square().mean();
        const Scalar rstd = Scalar(1) / std::sqrt(var + this->eps_);
        out.row(i).array() = (x.row(i).array() - mean) * rstd;
        return rstd;
    }
};

}  // namespace seqnn
