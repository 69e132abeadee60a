// Sequential: a stack of layers, each reading the previous one's output, like
// PyTorch's nn.Sequential. It is itself a seqnn::Layer, so stacks nest and train
// with the same loop as any layer.
//
//   names:  child i's parameters are "<i>.<its name>", as in nn.Sequential's
//           state_dict ("0.weight_ih_l0", "1.to_hidden_and_gate.weight", ...); put
//           the stack under a prefix (collect_parameters("layers.", ...)) for
//           "layers.0.weight_ih_l0".
//   state:  the children's state tensors concatenated in order (composite_state.hpp).
//   step:   the children's steps in order through (B, D_i) buffers kept in the
//           state's workspace, so streaming allocates nothing.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/models/composite_state.hpp"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace seqnn {

/// Layers applied one after another, like nn.Sequential; states and contexts per child.
template <typename Scalar>
class Sequential : public Layer<Scalar> {
public:
    Sequential() = default;

    /// Appends a layer; its input size must be the stack's output size so far.
    Sequential& add(std::unique_ptr<Layer<Scalar>> layer) {
        if (!layer) fail("Sequential.add", "layer is null");
        if (!layers_.empty() && layer->input_size() != output_size())
            fail("Sequential.add", "layer " + std::to_string(layers_.size()) + " (" + layer->kind() +
                                       ") takes " + std::to_string(layer->input_size()) +
                                       " features, but the stack so far gives " + std::to_string(output_size()));
        layout_.add(*layer);
        layers_.push_back(std::move(layer));
        return *this;
    }
    /// Constructs a layer of type L at the end and returns it.
    template <typename L, typename... Args>
    L& emplace(Args&&... args) {
        auto layer = std::make_unique<L>(std::forward<Args>(args)...);
        L& ref = *layer;
        add(std::move(layer));
        return ref;
    }

    /// The number of layers.
    std::size_t size() const { return layers_.size(); }
    /// Layer i.
    Layer<Scalar>& operator[](std::size_t i) { return *layers_.at(i); }
    /// Layer i, read-only.
    const Layer<Scalar>& operator[](std::size_t i) const { return *layers_.at(i); }

    std::string kind() const override { return "Sequential"; }
    Index input_size() const override { return layers_.empty() ? 0 : layers_.front()->input_size(); }
    Index output_size() const override { return layers_.empty() ? 0 : layers_.back()->output_size(); }

    /// The children's states concatenated; workspace: one (B, D_i) buffer between each
    /// pair of children.
    State<Scalar> initial_state(Index batch) const override {
        check_not_empty("Sequential.initial_state");
        if (batch <= 0) fail("Sequential.initial_state", "batch must be positive, got " + std::to_string(batch));
        State<Scalar> s = layout_.initial(children(), batch);
        for (std::size_t i = 0; i + 1 < layers_.size(); ++i)
            s.workspace.push_back(Matrix<Scalar>(batch, layers_[i]->output_size()));
        return s;
    }

    Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const override {
        check_not_empty("Sequential.forward");
        check_sequence("Sequential.forward", "input", x, input_size());
        // Without a state the children run without one too (a Transformer then keeps no cache).
        if (state && state->empty() && layout_.total() > 0) *state = initial_state(x.batch);
        if (state) {
            layout_.check("Sequential.forward", *state);
            layout_.check_batch("Sequential.forward", *state, x.batch);
        }
        if (ctx) {
            ctx->owner.clear();  // set again once the forward has succeeded
            ctx->batch = x.batch;
            ctx->steps = x.steps;
            ctx->make_children(layers_.size());
        }
        Sequence<Scalar> h;
        for (std::size_t i = 0; i < layers_.size(); ++i) {
            Context<Scalar>* child_ctx = ctx ? &ctx->children[i] : nullptr;
            const Sequence<Scalar>& in = i == 0 ? x : h;  // the first layer reads x itself, uncopied
            if (!state) {
                h = layers_[i]->forward(in, nullptr, child_ctx);  // (B*T, D_i) -> (B*T, D_{i+1})
                continue;
            }
            State<Scalar> cs = layout_.child(*state, i);
            h = layers_[i]->forward(in, &cs, child_ctx);
            layout_.set_child(*state, i, std::move(cs), *layers_[i], x.batch);
        }
        if (state) state->position += x.steps;
        if (ctx) ctx->owner = signature();
        return h;
    }

    void step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        check_not_empty("Sequential.step");
        if (x.cols() != input_size() || x.rows() <= 0)
            fail("Sequential.step", "input has shape " + shape_string(x) + ", expected (B, " +
                                        std::to_string(input_size()) + ") with B > 0");
        const Index B = x.rows();
        if (state.empty() && layout_.total() > 0) state = initial_state(B);
        layout_.check("Sequential.step", state);
        layout_.check_batch("Sequential.step", state, B);
        if (!layout_.has_shells(state)) layout_.make_shells(state, children(), B);
        if (state.workspace.size() + 1 != layers_.size() || (!state.workspace.empty() && state.workspace[0].rows() != B))
            state.workspace = initial_state(B).workspace;
        if (y.rows() != B || y.cols() != output_size()) y.resize(B, output_size());
        check_children(state, B);  // every child's state, before any child steps
        for (std::size_t i = 0; i < layers_.size(); ++i) {
            const Matrix<Scalar>& in = i == 0 ? x : state.workspace[i - 1];
            Matrix<Scalar>& out = i + 1 == layers_.size() ? y : state.workspace[i];  // (B, D_{i+1})
            const auto in_shell = layout_.swapped(state, i);  // swapped back even if the step throws
            layers_[i]->step(in, state.children[i], out);
        }
        state.position += 1;
    }

    void check_step_state(State<Scalar>& state, Index batch) const override {
        if (state.empty()) return;
        layout_.check("Sequential.step", state);
        layout_.check_batch("Sequential.step", state, batch);
        if (!layout_.has_shells(state)) layout_.make_shells(state, children(), batch);
        check_children(state, batch);
    }

    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                              const State<Scalar>* d_final = nullptr, State<Scalar>* d_initial = nullptr) override {
        check_not_empty("Sequential.backward");
        check_context_owner("Sequential.backward", ctx, signature());
        if (ctx.children.size() != layers_.size())
            fail("Sequential.backward", "the context holds no training forward of this stack (" +
                                            std::to_string(ctx.children.size()) + " sub-contexts, expected " +
                                            std::to_string(layers_.size()) + ")");
        check_sequence("Sequential.backward", "dy", dy, output_size());
        const bool has_final = d_final && !d_final->empty();
        if (has_final) layout_.check("Sequential.backward d_final", *d_final);
        if (d_initial) {
            *d_initial = State<Scalar>{};
            d_initial->tensors.resize(static_cast<std::size_t>(layout_.total()));
        }
        Sequence<Scalar> d;
        for (std::size_t i = layers_.size(); i-- > 0;) {
            State<Scalar> cs_final = has_final ? layout_.child(*d_final, i) : State<Scalar>{};
            State<Scalar> cs_initial;
            const Sequence<Scalar>& d_out = i + 1 == layers_.size() ? dy : d;  // the last layer reads dy itself
            d = layers_[i]->backward(d_out, ctx.children[i], has_final ? &cs_final : nullptr,
                                     d_initial ? &cs_initial : nullptr);  // (B*T, D_{i+1}) -> (B*T, D_i)
            if (d_initial) layout_.set_child(*d_initial, i, std::move(cs_initial), *layers_[i], dy.batch);
        }
        return d;
    }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        for (std::size_t i = 0; i < layers_.size(); ++i)
            layers_[i]->collect_parameters(prefix + std::to_string(i) + ".", out);
    }

    /// The kind and sizes of every child, e.g. "Sequential(GRU 5 -> 9, Linear 9 -> 3)": the
    /// owner a training forward writes into its Context and backward expects there.
    std::string signature() const {
        std::string out = "Sequential(";
        for (std::size_t i = 0; i < layers_.size(); ++i)
            out += (i ? ", " : "") + layers_[i]->kind() + " " + std::to_string(layers_[i]->input_size()) + " -> " +
                   std::to_string(layers_[i]->output_size());
        return out + ")";
    }

private:
    std::vector<const Layer<Scalar>*> children() const {
        std::vector<const Layer<Scalar>*> out;
        for (const auto& l : layers_) out.push_back(l.get());
        return out;
    }
    // Each child's check_step_state on its tensors, swapped into its shell and back.
    void check_children(State<Scalar>& state, Index B) const {
        for (std::size_t i = 0; i < layers_.size(); ++i) {
            const auto in_shell = layout_.swapped(state, i);
            layers_[i]->check_step_state(state.children[i], B);
        }
    }
    void check_not_empty(const std::string& where) const {
        if (layers_.empty()) fail(where, "the stack has no layers");
    }

    std::vector<std::unique_ptr<Layer<Scalar>>> layers_;
    CompositeState<Scalar> layout_;
};

}  // namespace seqnn
