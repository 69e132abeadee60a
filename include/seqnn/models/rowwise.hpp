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

/// What row-wise layers share: no state tensors, a (B, out) step workspace-free path.
template <typename Scalar>
class RowwiseLayer : public Layer<Scalar> {
public:
    State<Scalar> initial_state(Index batch) const override {
        if (batch <= 0) fail(this->kind() + ".initial_state", "batch must be positive, got " + std::to_string(batch));
        return {};
    }

    Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const override {
        check_sequence(this->kind() + ".forward", "input", x, this->input_size());
        if (ctx) {
            ctx->owner.clear();  // set again once the forward has succeeded
            ctx->batch = x.batch;
            ctx->steps = x.steps;
        }
        Sequence<Scalar> y(x.batch, x.steps, this->output_size());
        rows_forward(x.data, y.data, ctx);  // (B*T, in) -> (B*T, out)
        if (state) state->position += x.steps;
        if (ctx) ctx->owner = signature();
        return y;
    }

    void step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (x.cols() != this->input_size() || x.rows() <= 0)
            fail(this->kind() + ".step", "input has shape " + shape_string(x) + ", expected (B, " +
                                             std::to_string(this->input_size()) + ") with B > 0");
        if (y.rows() != x.rows() || y.cols() != this->output_size()) y.resize(x.rows(), this->output_size());
        rows_step(x, state, y);
        state.position += 1;
    }

    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                              const State<Scalar>* d_final = nullptr, State<Scalar>* d_initial = nullptr) override {
        (void)d_final;
        check_context_owner(this->kind() + ".backward", ctx, signature());
        check_sequence(this->kind() + ".backward", "dy", dy, this->output_size());
        if (dy.batch != ctx.batch || dy.steps != ctx.steps)
            fail(this->kind() + ".backward", "dy " + shape_string(dy) + " does not match the forward's (B=" +
                                                 std::to_string(ctx.batch) + ", T=" + std::to_string(ctx.steps) + ")");
        if (d_initial) *d_initial = State<Scalar>{};
        return Sequence<Scalar>(rows_backward(dy.data, ctx), dy.batch, dy.steps);
    }

    /// The layer's kind and sizes, e.g. "Linear(5 -> 9)": the owner a training forward
    /// writes into its Context and backward expects there.
    virtual std::string signature() const {
        return this->kind() + "(" + std::to_string(this->input_size()) + " -> " + std::to_string(this->output_size()) +
               ")";
    }

protected:
    /// y = f(x) on N rows; with a context, keeps what rows_backward needs.
    virtual void rows_forward(const Matrix<Scalar>& x, Matrix<Scalar>& y, Context<Scalar>* ctx) const = 0;
    /// The same on the B rows of one step; scratch lives in state.workspace.
    virtual void rows_step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const = 0;
    /// dx from dy on N rows, with the context rows_forward filled.
    virtual Matrix<Scalar> rows_backward(const Matrix<Scalar>& dy, const Context<Scalar>& ctx) = 0;
};

/// A Linear, RMSNorm or LayerNorm as a layer.
template <typename Scalar, typename Block>
class Rowwise : public RowwiseLayer<Scalar> {
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

protected:
    void rows_forward(const Matrix<Scalar>& x, Matrix<Scalar>& y, Context<Scalar>* ctx) const override {
        block_.forward(x, y);
        if (ctx) ctx->save("input", x);
    }
    void rows_step(const Matrix<Scalar>& x, State<Scalar>&, Matrix<Scalar>& y) const override { block_.forward(x, y); }
    Matrix<Scalar> rows_backward(const Matrix<Scalar>& dy, const Context<Scalar>& ctx) override {
        return block_.backward(ctx.get("input"), dy);
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
/// A LayerNorm as a sequence layer.
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_layer_norm_layer(Index dim) {
    return std::make_unique<Rowwise<Scalar, LayerNorm<Scalar>>>("LayerNorm", LayerNorm<Scalar>(dim));
}

/// The Transformer / minGRU-LM MLP: y = W2 gelu(W1 x + b1) + b2, hidden = mult * D.
template <typename Scalar>
class FeedForward : public RowwiseLayer<Scalar> {
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

    /// No state tensors; workspace: pre and act (B, H) for step.
    State<Scalar> initial_state(Index batch) const override {
        State<Scalar> s = RowwiseLayer<Scalar>::initial_state(batch);
        s.workspace = {Matrix<Scalar>(batch, hidden_size()), Matrix<Scalar>(batch, hidden_size())};
        return s;
    }

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

protected:
    void rows_forward(const Matrix<Scalar>& x, Matrix<Scalar>& y, Context<Scalar>* ctx) const override {
        Matrix<Scalar> pre(x.rows(), hidden_size()), act;
        forward_rows(x, pre, act, y);
        if (ctx) {
            ctx->save("input", x);
            ctx->save("pre", std::move(pre));
            ctx->save("act", std::move(act));
        }
    }
    /// The step's (B, H) buffers pre and act live in the state's workspace.
    void rows_step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (state.workspace.size() != 2 || state.workspace[0].rows() != x.rows())
            state.workspace = initial_state(x.rows()).workspace;
        forward_rows(x, state.workspace[0], state.workspace[1], y);
    }
    Matrix<Scalar> rows_backward(const Matrix<Scalar>& dy, const Context<Scalar>& ctx) override {
        return backward_rows(ctx.get("input"), ctx.get("pre"), ctx.get("act"), dy);
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
