// Residual: y = x + f(x) for any layer f whose output size is its input size.
// An optional norm in front gives the pre-norm block of Transformers and of the
// minGRU language model: y = x + f(norm(x)).
//
//   names:  f's parameters are "fn.<its name>", the norm's "norm.<its name>".
//   state:  f's state, as the one child state (the norm is stateless).
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/threading.hpp"
#include "seqnn/models/rowwise.hpp"

#include <memory>
#include <optional>
#include <string>

namespace seqnn {

/// y = x + f(norm(x)), the norm optional.
template <typename Scalar>
class Residual : public Layer<Scalar> {
public:
    /// Wraps f, and optionally an RMSNorm before it.
    explicit Residual(std::unique_ptr<Layer<Scalar>> fn, std::optional<RMSNorm<Scalar>> norm = std::nullopt)
        : fn_(std::move(fn)), norm_(std::move(norm)) {
        if (!fn_) fail("Residual", "the inner layer is null");
        if (fn_->input_size() != fn_->output_size())
            fail("Residual", "the inner layer (" + fn_->kind() + ") maps " + std::to_string(fn_->input_size()) +
                                 " features to " + std::to_string(fn_->output_size()) +
                                 "; a residual connection needs them equal");
        if (norm_ && norm_->dim() != fn_->input_size())
            fail("Residual", "the norm has dim " + std::to_string(norm_->dim()) + ", expected " +
                                 std::to_string(fn_->input_size()));
    }

    std::string kind() const override { return "Residual(" + fn_->kind() + ")"; }
    Index input_size() const override { return fn_->input_size(); }
    Index output_size() const override { return fn_->output_size(); }
    /// The wrapped layer f.
    Layer<Scalar>& inner() { return *fn_; }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        if (norm_) norm_->collect_parameters(prefix + "norm.", out);
        fn_->collect_parameters(prefix + "fn.", out);
    }

    /// "Residual(<f's kind>, D -> D, norm)": the owner a training forward writes into its
    /// Context and backward expects there (f checks its own context in turn).
    std::string signature() const override {
        return "Residual(" + fn_->kind() + ", " + std::to_string(input_size()) + " -> " +
               std::to_string(output_size()) + (norm_ ? ", norm)" : ")");
    }

    /// What a training forward keeps: the input, when the norm needs it in backward.
    struct Saved {
        Matrix<Scalar> input;  ///< (B*T, D)
    };

protected:
    /// f's state as the one child; workspace: one (B, D) buffer for the normed input.
    State<Scalar> make_state(Index batch) const override {
        State<Scalar> s;
        s.children.push_back(fn_->initial_state(batch));
        if (norm_) s.workspace.push_back(Matrix<Scalar>(batch, input_size()));
        return s;
    }

    void validate_state(const State<Scalar>& state, Index batch, Call call) const override {
        if (!state.tensors.empty() || state.children.size() != 1)
            fail(this->where(call), "the state has " + std::to_string(state.children.size()) +
                                        " child states, expected 1 (the inner layer's)");
        fn_->check_state(state.children[0], batch, call);
    }

    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        if (ctx) ctx->make_children(1);
        State<Scalar>* inner_state = state ? &state->children[0] : nullptr;
        Context<Scalar>* inner_ctx = ctx ? &ctx->children[0] : nullptr;
        Sequence<Scalar> y;
        if (norm_) {
            if (ctx) keep_for_backward<Saved>(*ctx).input = x.data;
            const Sequence<Scalar> normed(norm_->forward(x.data), x.batch, x.steps);  // (B*T, D)
            y = fn_->forward(normed, inner_state, inner_ctx);
        } else {
            y = fn_->forward(x, inner_state, inner_ctx);
        }
        parallel_add<Scalar>(y.data, x.data);  // (B*T, D)
        return y;
    }

    /// The normed input goes through the state's workspace.
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (!norm_) {
            fn_->step(x, state.children[0], y);
            y += x;
            return;
        }
        const Index B = x.rows();
        if (state.workspace.size() != 1 || state.workspace[0].rows() != B) state.workspace = make_state(B).workspace;
        Matrix<Scalar>& normed = state.workspace[0];
        norm_->forward(x, normed);  // (B, D)
        fn_->step(normed, state.children[0], y);
        y += x;
    }

    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                   const State<Scalar>* d_final, State<Scalar>* d_initial) override {
        if (ctx.children.size() != 1)
            fail(this->where(Call::Backward), "the context holds no training forward of this layer");
        if (d_initial) d_initial->children.resize(1);
        Sequence<Scalar> dx = fn_->backward(dy, ctx.children[0], d_final ? &d_final->children[0] : nullptr,
                                            d_initial ? &d_initial->children[0] : nullptr);  // through f
        if (norm_) dx.data = norm_->backward(saved_for_backward<Saved>(ctx).input, dx.data);  // through the norm
        dx.data += dy.data;                                                                     // the skip path
        return dx;
    }

private:
    std::unique_ptr<Layer<Scalar>> fn_;
    std::optional<RMSNorm<Scalar>> norm_;
};

}  // namespace seqnn
