// Row-wise blocks as sequence layers, so that they stack with recurrent layers in a
// Sequential or sit in a block as its norms: each step is transformed on its own, there is
// no state. Rowwise<Scalar, Block> wraps a Linear, RMSNorm or LayerNorm (anything with
// forward(x, y), backward(x, dy) and collect_parameters), named as the block.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/scratch.hpp"
#include "seqnn/nn/layer_norm.hpp"
#include "seqnn/nn/linear.hpp"
#include "seqnn/nn/rms_norm.hpp"

#include <memory>
#include <string>
#include <utility>

namespace seqnn {

/// A Linear, RMSNorm or LayerNorm as a layer.
template <typename Scalar, typename Block>
class Rowwise : public Layer<Scalar> {
public:
    /// Wraps a row-wise block under the name `kind`.
    Rowwise(std::string kind, Block block) : kind_(std::move(kind)), block_(std::move(block)) {}

    std::string kind() const override { return kind_; }
    Index input_size() const override {
        if constexpr (requires(const Block& b) { b.in_features(); })
            return block_.in_features();
        else
            return block_.dim();
    }
    Index output_size() const override {
        if constexpr (requires(const Block& b) { b.out_features(); })
            return block_.out_features();
        else
            return block_.dim();
    }
    /// The wrapped block.
    Block& block() { return block_; }
    /// The wrapped block, read-only.
    const Block& block() const { return block_; }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        block_.collect_parameters(prefix, out);
    }

    /// What a training forward keeps: its input.
    struct Saved {
        Matrix<Scalar> input;  ///< (B*T, in)
    };

protected:
    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>*, Context<Scalar>* ctx) const override {
        Sequence<Scalar> y(reused_matrix<Scalar>(x.data.rows(), output_size()), x.batch, x.steps);  // all written
        block_.forward(x.data, y.data);  // (B*T, in) -> (B*T, out)
        if (ctx) keep_for_backward<Saved>(*ctx).input = x.data;
        return y;
    }
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>&, Matrix<Scalar>& y) const override { block_.forward(x, y); }
    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx, const State<Scalar>*,
                                   State<Scalar>*) override {
        const Matrix<Scalar>& x = saved_for_backward<Saved>(ctx).input;
        Sequence<Scalar> dx(reused_matrix<Scalar>(x.rows(), input_size()), dy.batch, dy.steps);
        block_.backward(x, dy.data, dx.data);  // (B*T, out) -> (B*T, in)
        return dx;
    }

private:
    std::string kind_;
    Block block_;
};

/// A Linear as a sequence layer.
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_linear_layer(Index in, Index out, bool bias, Rng& rng) {
    return std::make_unique<Rowwise<Scalar, Linear<Scalar>>>("Linear", Linear<Scalar>(in, out, bias, rng));
}
/// An RMSNorm as a sequence layer.
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_rms_norm_layer(Index dim) {
    return std::make_unique<Rowwise<Scalar, RMSNorm<Scalar>>>("RMSNorm", RMSNorm<Scalar>(dim));
}
/// A LayerNorm as a sequence layer (PyTorch's nn.LayerNorm(dim, eps, bias=bias)).
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_layer_norm_layer(Index dim, double eps = 1e-5, bool bias = true) {
    return std::make_unique<Rowwise<Scalar, LayerNorm<Scalar>>>("LayerNorm",
                                                                 LayerNorm<Scalar>(dim, static_cast<Scalar>(eps), true, bias));
}

}  // namespace seqnn
