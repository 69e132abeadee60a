// Residual: y = x + f(x) for any layer f whose output size is its input size.
// An optional norm in front gives the pre-norm block of Transformers and of the
// minGRU language model: y = x + f(norm(x)).
//
//   names:  f's parameters are "fn.<its name>", the norm's "norm.<its name>".
//   state:  f's state, as it is (the norm is stateless).
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

    /// f's state; workspace: f's workspace plus one (B, D) buffer for the normed input.
    State<Scalar> initial_state(Index batch) const override {
        State<Scalar> s = fn_->initial_state(batch);
        if (norm_) s.workspace.push_back(Matrix<Scalar>(batch, input_size()));
        return s;
    }

    Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const override {
        check_sequence(kind() + ".forward", "input", x, input_size());
        if (ctx) {
            ctx->owner.clear();  // set again once the forward has succeeded
            ctx->batch = x.batch;
            ctx->steps = x.steps;
            ctx->make_children(1);
            if (norm_) ctx->save("input", x.data);
        }
        Context<Scalar>* inner_ctx = ctx ? &ctx->children[0] : nullptr;
        Sequence<Scalar> y;
        if (norm_) {
            const Sequence<Scalar> normed(norm_->forward(x.data), x.batch, x.steps);  // (B*T, D)
            y = fn_->forward(normed, state, inner_ctx);
        } else {
            y = fn_->forward(x, state, inner_ctx);
        }
        parallel_add<Scalar>(y.data, x.data);  // (B*T, D)
        if (ctx) ctx->owner = signature();
        return y;
    }

    void check_step_state(State<Scalar>& state, Index batch) const override { fn_->check_step_state(state, batch); }

    /// The state's last workspace entry is the normed input when there is a norm; f
    /// sees the state without it.
    void step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (x.cols() != input_size() || x.rows() <= 0)
            fail(kind() + ".step", "input has shape " + shape_string(x) + ", expected (B, " +
                                       std::to_string(input_size()) + ") with B > 0");
        if (!norm_) {
            fn_->step(x, state, y);
            y += x;
            return;
        }
        const Index B = x.rows();
        if (state.workspace.empty() || state.workspace.back().rows() != B || state.workspace.back().cols() != input_size())
            state = rebuilt(state, B);
        Matrix<Scalar> normed;
        normed.swap(state.workspace.back());  // borrow the buffer: f must not see it
        state.workspace.pop_back();
        norm_->forward(x, normed);  // (B, D)
        const auto give_back = [&] {
            state.workspace.push_back(Matrix<Scalar>());  // capacity is kept: no allocation
            state.workspace.back().swap(normed);
        };
        try {
            fn_->step(normed, state, y);
        } catch (...) {
            give_back();  // the state keeps its buffer when f refuses the step
            throw;
        }
        y += x;
        give_back();
    }

    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                              const State<Scalar>* d_final = nullptr, State<Scalar>* d_initial = nullptr) override {
        check_context_owner(kind() + ".backward", ctx, signature());
        if (ctx.children.size() != 1)
            fail(kind() + ".backward", "the context holds no training forward of this layer");
        check_sequence(kind() + ".backward", "dy", dy, output_size());
        Sequence<Scalar> dx = fn_->backward(dy, ctx.children[0], d_final, d_initial);  // through f
        if (norm_) dx.data = norm_->backward(ctx.get("input"), dx.data);                // through the norm
        dx.data += dy.data;                                                               // the skip path
        return dx;
    }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        if (norm_) norm_->collect_parameters(prefix + "norm.", out);
        fn_->collect_parameters(prefix + "fn.", out);
    }

    /// "Residual(<f's kind>, D -> D, norm)": the owner a training forward writes into its
    /// Context and backward expects there (f checks its own context in turn).
    std::string signature() const {
        return "Residual(" + fn_->kind() + ", " + std::to_string(input_size()) + " -> " +
               std::to_string(output_size()) + (norm_ ? ", norm)" : ")");
    }

private:
    // A state for B streams that keeps the given tensors (e.g. from forward).
    State<Scalar> rebuilt(const State<Scalar>& s, Index B) const {
        State<Scalar> fresh = initial_state(B);
        if (!s.empty()) fresh.tensors = s.tensors;
        fresh.position = s.position;
        return fresh;
    }

    std::unique_ptr<Layer<Scalar>> fn_;
    std::optional<RMSNorm<Scalar>> norm_;
};

}  // namespace seqnn
