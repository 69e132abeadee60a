// The MLP of a Transformer block and of the minGRU paper's language model:
//   y = W2 gelu(W1 x + b1) + b2,   W1 (H, D), W2 (D, H), hidden H = mult * D.
// GELU is the exact erf form (PyTorch's default). Its parameters are named like
// nn.Sequential(Linear, GELU, Linear) by default ("0.weight", "0.bias", "2.weight",
// "2.bias"); nn.TransformerEncoderLayer names them "linear1.*" and "linear2.*".
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/scratch.hpp"
#include "seqnn/nn/activations.hpp"
#include "seqnn/nn/linear.hpp"

#include <string>
#include <utility>

namespace seqnn {

/// The names of a FeedForward's two Linears, after the layer's prefix.
struct FeedForwardNames {
    std::string up = "0.";    ///< the first Linear (D -> H)
    std::string down = "2.";  ///< the second Linear (H -> D)
};

/// The Transformer / minGRU-LM MLP: y = W2 gelu(W1 x + b1) + b2, hidden = mult * D.
template <typename Scalar>
class FeedForward : public Layer<Scalar> {
public:
    /// Linear(dim -> mult*dim), GELU, Linear back to dim.
    FeedForward(Index dim, double mult, Rng& rng, FeedForwardNames names = {})
        : FeedForward(dim, checked_hidden(dim, mult), rng, std::move(names)) {}
    /// Linear(dim -> hidden), GELU, Linear back to dim; both with biases unless `bias` is false.
    FeedForward(Index dim, Index hidden, Rng& rng, FeedForwardNames names = {}, bool bias = true)
        : up_(checked_dim(dim), checked_width(hidden), bias, rng), down_(hidden, dim, bias, rng), names_(std::move(names)) {}

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
        up_.collect_parameters(prefix + names_.up, out);
        down_.collect_parameters(prefix + names_.down, out);
    }

    /// Forward on N rows; `pre` (N, H) receives W1 x + b1 and `act` (N, H) its GELU.
    void forward_rows(ConstMatrixRef<Scalar> x, Matrix<Scalar>& pre, Matrix<Scalar>& act, MatrixRef<Scalar> y) const {
        up_.forward(x, pre);       // (N, D) x (D, H)
        act = pre;                 // no allocation when act already has pre's shape
        activation_forward<Scalar>(Activation::GELU, act);
        down_.forward(act, y);     // (N, H) x (H, D)
    }
    /// Backward on N rows, from the forward's x, pre and act: writes dL/dx (N, D) into dx.
    /// dL/d(act) lives in this thread's scratch.
    void backward_rows(ConstMatrixRef<Scalar> x, const Matrix<Scalar>& pre, const Matrix<Scalar>& act,
                       ConstMatrixRef<Scalar> dy, MatrixRef<Scalar> dx) {
        auto d_act = scratch_matrix<Scalar>(ScratchSlot::A, act.rows(), act.cols());
        down_.backward(act, dy, d_act);                                  // (N, D) x (D, H)
        activation_backward<Scalar>(Activation::GELU, pre, act, d_act);  // through the GELU
        up_.backward(x, d_act, dx);                                      // (N, H) x (H, D)
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
    /// In training, pre and act go to the context's buffers (backward needs both); otherwise
    /// GELU runs in place on pre, in this thread's scratch, so inference allocates only y.
    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>*, Context<Scalar>* ctx) const override {
        const Index N = x.data.rows(), H = hidden_size();
        Sequence<Scalar> y(reused_matrix<Scalar>(N, output_size()), x.batch, x.steps);  // every entry is written
        if (ctx) {
            Saved& saved = keep_for_backward<Saved>(*ctx);
            forward_rows(x.data, resized(saved.pre, N, H), saved.act, y.data);
            saved.input = x.data;
            return y;
        }
        auto pre = scratch_matrix<Scalar>(ScratchSlot::A, N, H);  // (B*T, H)
        up_.forward(x.data, pre);  // (B*T, D) x (D, H)
        activation_forward<Scalar>(Activation::GELU, pre);
        down_.forward(pre, y.data);  // (B*T, H) x (H, D)
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
        Sequence<Scalar> dx(reused_matrix<Scalar>(dy.data.rows(), input_size()), dy.batch, dy.steps);
        backward_rows(saved.input, saved.pre, saved.act, dy.data, dx.data);
        return dx;
    }

private:
    static Index checked_dim(Index dim) {
        if (dim <= 0) fail("FeedForward", "dim must be positive, got dim=" + std::to_string(dim));
        return dim;
    }
    static Index checked_width(Index hidden) {
        if (hidden <= 0) fail("FeedForward", "the hidden width must be positive, got " + std::to_string(hidden));
        return hidden;
    }
    static Index checked_hidden(Index dim, double mult) {
        return checked_scaled_size("FeedForward", "mult", checked_dim(dim), mult);
    }

    Linear<Scalar> up_;
    Linear<Scalar> down_;
    FeedForwardNames names_;
};

}  // namespace seqnn
