// Row-wise blocks as sequence layers, so that they stack with recurrent layers in a
// Sequential: each step is transformed on its own, there is no state.
//   Rowwise<Scalar, Block>: Linear, RMSNorm or LayerNorm (anything with
//       forward(x, y), backward(x, dy) and collect_parameters), named as the block;
//   FeedForward: Linear(D, mult*D) -> GELU -> Linear(mult*D, D), named like
//       nn.Sequential(Linear, GELU, Linear): "0.weight", "0.bias", "2.weight", "2.bias".
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/nn/activations.hpp"
#include "seqnn/nn/layer_norm.hpp"
#include "seqnn/nn/linear.hpp"
#include "seqnn/nn/rms_norm.hpp"

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
        Sequence<Scalar> y(x.batch, x.steps, output_size());
        block_.forward(x.data, y.data);  // (B*T, in) -> (B*T, out)
        if (ctx) keep_for_backward<Saved>(*ctx).input = x.data;
        return y;
    }
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>&, Matrix<Scalar>& y) const override { block_.forward(x, y); }
    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx, const State<Scalar>*,
                                   State<Scalar>*) override {
        return Sequence<Scalar>(block_.backward(saved_for_backward<Saved>(ctx).input, dy.data), dy.batch, dy.steps);
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
/// The Transformer / minGRU-LM MLP: y = W2 gelu(W1 x + b1) + b2, hidden = mult * D.
template <typename Scalar>
class FeedForward : public Layer<Scalar> {
public:
    /// Linear(dim -> mult*dim), GELU, Linear back to dim.
    FeedForward(Index dim, double mult, Rng& rng)
        : up_(dim, checked_hidden(dim, mult), true, rng), down_(checked_hidden(dim, mult), dim, true, rng) {}

    std::string kind() const override { return "FeedForward"; }
    Index input_size() const override { return up_.in_features(); }
    Index output_size() const override { return down_.out_features(); }
    /// The hidden width.
    Index hidden_size() const { return up_.out_features(); }
    /// The first Linear.
    Linear<Scalar>& up() { return up_; }
    /// The second Linear.
    Linear<Scalar>& down() { return down_; }


    /// "FeedForward(D -> H -> D)".
    std::string signature() const override {
        return "FeedForward(" + std::to_string(input_size()) + " -> " + std::to_string(hidden_size()) + " -> " +
               std::to_string(output_size()) + ")";
    }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        up_.collect_parameters(prefix + "0.", out);
        down_.collect_parameters(prefix + "2.", out);
    }

    /// Forward on N rows; `pre` (N, H) receives W1 x + b1 and `act` (N, H) its GELU.
    void forward_rows(ConstMatrixRef<Scalar> x, Matrix<Scalar>& pre, Matrix<Scalar>& act, MatrixRef<Scalar> y) const {
        up_.forward(x, pre);       // (N, D) x (D, H)
        act = pre;                 // no allocation when act already has pre's shape
        activation_forward<Scalar>(Activation::GELU, act);
        down_.forward(act, y);     // (N, H) x (H, D)
    }
    /// Backward on N rows, from the forward's x, pre and act: returns dL/dx (N, D).
    Matrix<Scalar> backward_rows(ConstMatrixRef<Scalar> x, const Matrix<Scalar>& pre, const Matrix<Scalar>& act,
                                 ConstMatrixRef<Scalar> dy) {
        Matrix<Scalar> d_act = down_.backward(act, dy);                      // (N, D) x (D, H)
        activation_backward<Scalar>(Activation::GELU, pre, act, d_act);      // through the GELU
        return up_.backward(x, d_act);                                       // (N, H) x (H, D)
    }

    /// What a training forward keeps: its input, pre and act.
    struct Saved {
        Matrix<Scalar> input;  ///< (B*T, D)
        Matrix<Scalar> pre;    ///< (B*T, H): W1 x + b1
        Matrix<Scalar> act;    ///< (B*T, H): its GELU
    };

protected:
    /// No state tensors; workspace: pre and act (B, H) for step.
    State<Scalar> make_state(Index batch) const override {
        State<Scalar> s;
        s.workspace = {Matrix<Scalar>(batch, hidden_size()), Matrix<Scalar>(batch, hidden_size())};
        return s;
    }
    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>*, Context<Scalar>* ctx) const override {
        Sequence<Scalar> y(x.batch, x.steps, output_size());
        Matrix<Scalar> local_pre, local_act;
        Saved* saved = ctx ? &keep_for_backward<Saved>(*ctx) : nullptr;
        Matrix<Scalar>& pre = saved ? saved->pre : local_pre;
        Matrix<Scalar>& act = saved ? saved->act : local_act;
        pre.resize(x.data.rows(), hidden_size());
        forward_rows(x.data, pre, act, y.data);
        if (saved) saved->input = x.data;
        return y;
    }
    /// The step's (B, H) buffers pre and act live in the state's workspace.
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (state.workspace.size() != 2 || state.workspace[0].rows() != x.rows()) state.workspace = make_state(x.rows()).workspace;
        forward_rows(x, state.workspace[0], state.workspace[1], y);
    }
    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx, const State<Scalar>*,
                                   State<Scalar>*) override {
        const Saved& saved = saved_for_backward<Saved>(ctx);
        return Sequence<Scalar>(backward_rows(saved.input, saved.pre, saved.act, dy.data), dy.batch, dy.steps);
    }

private:
    static Index checked_hidden(Index dim, double mult) {
        if (dim <= 0) fail("FeedForward", "dim must be positive, got dim=" + std::to_string(dim));
        return checked_scaled_size("FeedForward", "mult", dim, mult);
    }

    Linear<Scalar> up_;
    Linear<Scalar> down_;
};

}  // namespace seqnn
