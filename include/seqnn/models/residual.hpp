// Residual: y = x + drop(f(norm(x))) for any layer f whose output size is its input size,
// the norm and the dropout optional. It is the pre-norm branch of a Transformer block and
// of the minGRU language model (models/block.hpp puts two or three of them in a row).
//
//   names:  f's parameters are "fn.<its name>", the norm's "norm.<its name>" (a block
//           names its residuals' parts itself).
//   state:  children {f's state, the norm's}; the norm's holds nothing but B.
//   step:   the normed input goes through the state's workspace; dropout is the
//           identity, as in inference.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/scratch.hpp"
#include "seqnn/kernels/elementwise.hpp"
#include "seqnn/layers/dropout.hpp"
#include "seqnn/layers/rowwise.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace seqnn {

/// y = x + drop(f(norm(x))), the norm and the dropout optional.
template <typename Scalar>
class Residual : public Layer<Scalar> {
public:
    /// Wraps f, with `norm` (any layer of f's width, typically a row-wise norm) before it and
    /// dropout of probability `dropout` (training only) after it.
    explicit Residual(std::unique_ptr<Layer<Scalar>> fn, std::unique_ptr<Layer<Scalar>> norm = nullptr,
                      double dropout = 0.0, std::uint64_t dropout_seed = 0)
        : fn_(checked_fn(std::move(fn))), norm_(std::move(norm)), drop_(fn_->input_size(), dropout, dropout_seed) {
        if (norm_ && (norm_->input_size() != fn_->input_size() || norm_->output_size() != fn_->input_size()))
            fail("Residual", "the norm (" + norm_->kind() + ") maps " + std::to_string(norm_->input_size()) + " -> " +
                                 std::to_string(norm_->output_size()) + " features, expected " +
                                 std::to_string(fn_->input_size()) + " -> " + std::to_string(fn_->input_size()));
    }
    /// Wraps f, with an RMSNorm before it.
    Residual(std::unique_ptr<Layer<Scalar>> fn, RMSNorm<Scalar> norm)
        : Residual(std::move(fn), std::make_unique<Rowwise<Scalar, RMSNorm<Scalar>>>("RMSNorm", std::move(norm))) {}

    std::string kind() const override { return "Residual(" + fn_->kind() + ")"; }
    Index input_size() const override { return fn_->input_size(); }
    Index output_size() const override { return fn_->output_size(); }
    /// The wrapped layer f.
    Layer<Scalar>& inner() { return *fn_; }
    /// The wrapped layer f, read-only.
    const Layer<Scalar>& inner() const { return *fn_; }
    /// The norm before f; null when there is none.
    Layer<Scalar>* norm() { return norm_.get(); }
    /// The dropout after f.
    Dropout<Scalar>& dropout() { return drop_; }
    /// The dropout after f, read-only.
    const Dropout<Scalar>& dropout() const { return drop_; }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        if (norm_) norm_->collect_parameters(prefix + "norm.", out);
        fn_->collect_parameters(prefix + "fn.", out);
    }

    /// "Residual(<f's signature>, norm, p=0.1)": the owner a training forward writes into its
    /// Context and backward expects there (f checks its own context in turn).
    std::string signature() const override {
        return "Residual(" + fn_->signature() + (norm_ ? ", " + norm_->signature() : std::string()) +
               (drop_.p() > 0 ? ", p=" + number_text(drop_.p()) : std::string()) + ")";
    }

protected:
    /// Children {f's state, the norm's}; workspace: one (B, D) buffer for the normed input.
    State<Scalar> make_state(Index batch) const override {
        State<Scalar> s;
        s.children.push_back(fn_->initial_state(batch));
        if (norm_) {
            s.children.push_back(norm_->initial_state(batch));
            s.workspace.push_back(Matrix<Scalar>(batch, input_size()));
        }
        return s;
    }

    void validate_state(const State<Scalar>& state, Index batch, Call call) const override {
        const std::size_t children = norm_ ? 2 : 1;
        if (!state.tensors.empty() || state.children.size() != children)
            fail(this->where(call), "the state has " + std::to_string(state.children.size()) + " child states and " +
                                        std::to_string(state.tensors.size()) + " tensors, expected " +
                                        std::to_string(children) + " child states (the inner layer's" +
                                        (norm_ ? ", the norm's)" : ")"));
        fn_->check_state(state.children[0], batch, call);
        if (norm_) norm_->check_state(state.children[1], batch, call);
    }

    void reserve_impl(State<Scalar>& state, Index length) const override { fn_->reserve(state.children[0], length); }

    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        if (ctx) ctx->make_children(3);  // f, norm, dropout
        Sequence<Scalar> y;
        if (norm_) {
            Sequence<Scalar> normed = norm_->forward(x, state ? &state->children[1] : nullptr,
                                                     ctx ? &ctx->children[1] : nullptr);  // (B*T, D)
            y = fn_->forward(normed, state ? &state->children[0] : nullptr, ctx ? &ctx->children[0] : nullptr);
            recycle_matrix(std::move(normed.data));  // f has read it (and kept its own copy for backward)
        } else {
            y = fn_->forward(x, state ? &state->children[0] : nullptr, ctx ? &ctx->children[0] : nullptr);
        }
        drop_.apply(y.data, ctx ? &ctx->children[2] : nullptr);
        parallel_add<Scalar>(y.data, x.data);  // (B*T, D)
        return y;
    }

    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (norm_) {
            const Index B = x.rows();
            if (state.workspace.size() != 1 || state.workspace[0].rows() != B)
                state.workspace = {Matrix<Scalar>(B, input_size())};
            Matrix<Scalar>& normed = state.workspace[0];  // (B, D)
            norm_->step(x, state.children[1], normed);
            fn_->step(normed, state.children[0], y);
        } else {
            fn_->step(x, state.children[0], y);
        }
        y += x;
    }

    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                   const State<Scalar>* d_final, State<Scalar>* d_initial) override {
        if (ctx.children.size() != 3)
            fail(this->where(Call::Backward), "the context holds no training forward of this layer");
        const Index B = ctx.batch;
        if (d_initial) d_initial->children.resize(norm_ ? 2 : 1);
        State<Scalar>* fn_initial = d_initial ? &d_initial->children[0] : nullptr;

        // y = x + drop(f(norm(x))): dx = dy + norm'(f'(drop'(dy))); dy is copied only to apply a mask
        Sequence<Scalar> masked;
        if (drop_.p() > 0) {
            masked = Sequence<Scalar>(reused_matrix<Scalar>(dy.data.rows(), dy.data.cols()), dy.batch, dy.steps);
            masked.lengths = dy.lengths;
            parallel_copy<Scalar>(masked.data, dy.data);  // (B*T, D)
            drop_.apply_backward(masked.data, ctx.children[2]);
        }
        Sequence<Scalar> dx = fn_->backward(drop_.p() > 0 ? masked : dy, ctx.children[0],
                                            d_final ? &d_final->children[0] : nullptr, fn_initial);
        recycle_matrix(std::move(masked.data));
        if (fn_initial && fn_initial->empty()) *fn_initial = fn_->initial_state(B);
        if (norm_) {
            Sequence<Scalar> d_normed = std::move(dx);
            dx = norm_->backward(d_normed, ctx.children[1]);
            recycle_matrix(std::move(d_normed.data));
            if (d_initial) d_initial->children[1] = norm_->initial_state(B);
        }
        parallel_add<Scalar>(dx.data, dy.data);  // the skip path
        return dx;
    }

private:
    static std::unique_ptr<Layer<Scalar>> checked_fn(std::unique_ptr<Layer<Scalar>> fn) {
        if (!fn) fail("Residual", "the inner layer is null");
        if (fn->input_size() != fn->output_size())
            fail("Residual", "the inner layer (" + fn->kind() + ") maps " + std::to_string(fn->input_size()) +
                                 " features to " + std::to_string(fn->output_size()) +
                                 "; a residual connection needs them equal");
        return fn;
    }

    std::unique_ptr<Layer<Scalar>> fn_;
    std::unique_ptr<Layer<Scalar>> norm_;
    Dropout<Scalar> drop_;
};

}  // namespace seqnn
