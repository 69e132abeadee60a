// Sequential: a stack of layers, each reading the previous one's output, like
// PyTorch's nn.Sequential. It is itself a seqnn::Layer, so stacks nest and train
// with the same loop as any layer.
//
//   names:  child i's parameters are "<i>.<its name>", as in nn.Sequential's
//           state_dict ("0.weight_ih_l0", "1.to_hidden_and_gate.weight", ...); put
//           the stack under a prefix (collect_parameters("layers.", ...)) for
//           "layers.0.weight_ih_l0".
//   state:  one child state per layer, in State::children.
//   step:   the children's steps in order through (B, D_i) buffers kept in the
//           state's workspace, so streaming allocates nothing.
//   backward with a GradientReadyHook: reports each child's parameters, from the last
//           child to the first, as soon as that child's backward has returned.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/scratch.hpp"

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

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        for (std::size_t i = 0; i < layers_.size(); ++i)
            layers_[i]->collect_parameters(prefix + std::to_string(i) + ".", out);
    }

    using Layer<Scalar>::backward;
    /// Layer::backward, calling `ready(first_index + first, first_index + end)` as soon as
    /// each child's backward has returned, from the last child to the first, with [first,
    /// end) that child's parameters' indices in parameters() (a child without parameters is
    /// not reported). `first_index` is where the stack's parameters start in a larger
    /// model's list (a LanguageModel's blocks come after its embedding). The gradients, dx
    /// and d_initial are bitwise those of the plain backward; an empty `ready` is that backward.
    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx, const State<Scalar>* d_final,
                              State<Scalar>* d_initial, const GradientReadyHook& ready, std::size_t first_index = 0) {
        if (!ready) return Layer<Scalar>::backward(dy, ctx, d_final, d_initial);
        ready_bounds_.assign(1, 0);  // child i's parameters: [ready_bounds_[i], ready_bounds_[i + 1])
        ParameterList<Scalar> child;
        for (const auto& layer : layers_) {
            child.clear();
            layer->collect_parameters("", child);
            ready_bounds_.push_back(ready_bounds_.back() + child.size());
        }
        struct Clear {  // no hook outside this call, also when backward throws
            const GradientReadyHook*& hook;
            ~Clear() { hook = nullptr; }
        } clear{ready_};
        ready_ = &ready;
        ready_offset_ = first_index;
        return Layer<Scalar>::backward(dy, ctx, d_final, d_initial);
    }

    /// The kind and sizes of every child, e.g. "Sequential(GRU 5 -> 9, Linear 9 -> 3)": the
    /// owner a training forward writes into its Context and backward expects there.
    std::string signature() const override { return "Sequential" + children_signature(); }

protected:
    /// "(GRU 5 -> 9, Linear 9 -> 3)": every child's kind and sizes.
    std::string children_signature() const {
        std::string out = "(";
        for (std::size_t i = 0; i < layers_.size(); ++i)
            out += (i ? ", " : "") + layers_[i]->kind() + " " + std::to_string(layers_[i]->input_size()) + " -> " +
                   std::to_string(layers_[i]->output_size());
        return out + ")";
    }

    /// One child state per layer; workspace: one (B, D_i) buffer between each pair of layers.
    State<Scalar> make_state(Index batch) const override {
        check_not_empty("Sequential.initial_state");
        State<Scalar> s;
        for (const auto& layer : layers_) s.children.push_back(layer->initial_state(batch));
        for (std::size_t i = 0; i + 1 < layers_.size(); ++i)
            s.workspace.push_back(Matrix<Scalar>(batch, layers_[i]->output_size()));
        return s;
    }

    void validate_state(const State<Scalar>& state, Index batch, Call call) const override {
        if (layers_.empty()) fail(this->where(call), "the stack has no layers");  // no string is built otherwise
        if (!state.tensors.empty() || state.children.size() != layers_.size())
            fail(this->where(call), "the state has " + std::to_string(state.children.size()) + " child states and " +
                                        std::to_string(state.tensors.size()) + " tensors, expected " +
                                        std::to_string(layers_.size()) + " child states (one per layer)");
        for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i]->check_state(state.children[i], batch, call);
    }

    void reserve_impl(State<Scalar>& state, Index length) const override {
        for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i]->reserve(state.children[i], length);
    }

    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        check_not_empty("Sequential.forward");
        if (ctx) ctx->make_children(layers_.size());
        Sequence<Scalar> h;
        for (std::size_t i = 0; i < layers_.size(); ++i) {
            const Sequence<Scalar>& in = i == 0 ? x : h;  // the first layer reads x itself, uncopied
            Sequence<Scalar> out = layers_[i]->forward(in, state ? &state->children[i] : nullptr,
                                                       ctx ? &ctx->children[i] : nullptr);  // (B*T, D_i) -> (B*T, D_{i+1})
            if (i > 0) recycle_matrix(std::move(h.data));  // read, and copied where backward needs it
            h = std::move(out);
        }
        return h;
    }

    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        const Index B = x.rows();
        if (state.workspace.size() + 1 != layers_.size() || (!state.workspace.empty() && state.workspace[0].rows() != B))
            state.workspace = make_state(B).workspace;
        for (std::size_t i = 0; i < layers_.size(); ++i) {
            Matrix<Scalar>& out = i + 1 == layers_.size() ? y : state.workspace[i];  // (B, D_{i+1})
            if (i == 0)
                layers_[i]->step(x, state.children[i], out);
            else
                layers_[i]->step(state.workspace[i - 1], state.children[i], out);
        }
    }

    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                   const State<Scalar>* d_final, State<Scalar>* d_initial) override {
        if (ctx.children.size() != layers_.size())
            fail("Sequential.backward", "the context holds no training forward of this stack (" +
                                            std::to_string(ctx.children.size()) + " sub-contexts, expected " +
                                            std::to_string(layers_.size()) + ")");
        if (d_initial) d_initial->children.resize(layers_.size());
        Sequence<Scalar> d;
        for (std::size_t i = layers_.size(); i-- > 0;) {
            const Sequence<Scalar>& d_out = i + 1 == layers_.size() ? dy : d;  // the last layer reads dy itself
            State<Scalar>* child_initial = d_initial ? &d_initial->children[i] : nullptr;
            Sequence<Scalar> d_in = layers_[i]->backward(d_out, ctx.children[i], d_final ? &d_final->children[i] : nullptr,
                                                         child_initial);  // (B*T, D_{i+1}) -> (B*T, D_i)
            if (i + 1 < layers_.size()) recycle_matrix(std::move(d.data));
            d = std::move(d_in);
            if (child_initial && child_initial->empty()) *child_initial = layers_[i]->initial_state(dy.batch);
            if (ready_ && ready_bounds_[i] < ready_bounds_[i + 1])  // child i's gradients are final
                (*ready_)(ready_offset_ + ready_bounds_[i], ready_offset_ + ready_bounds_[i + 1]);
        }
        return d;
    }

private:
    void check_not_empty(const std::string& where) const {
        if (layers_.empty()) fail(where, "the stack has no layers");
    }

    std::vector<std::unique_ptr<Layer<Scalar>>> layers_;
    // Set only during a backward with a GradientReadyHook.
    const GradientReadyHook* ready_ = nullptr;
    std::size_t ready_offset_ = 0;
    std::vector<std::size_t> ready_bounds_;
};

}  // namespace seqnn
