// One block of the minGRU paper's language model (Feng et al. 2024, and
// lucidrains/minGRU-pytorch's minLM), pre-norm with residuals:
//   h1 = x + conv(x)                  optional causal depthwise conv
//   h2 = h1 + drop(mixer(norm1(h1)))  any mixer kind (mixer.hpp)
//   y  = h2 + drop(ff(norm2(h2)))     MLP: Linear(D, mult*D) -> GELU -> Linear(mult*D, D)
// Norms are RMSNorm(D) with PyTorch's default eps, as torch.nn.RMSNorm(dim) in minLM.
// Dropout is active only in training mode (forward with a Context).
//
// Names, as lucidrains' ModuleList([conv, norm, mixer, ff_norm, ff]):
//   0.net.0.weight, 0.net.0.bias, 0.net.1.weight, 0.net.1.bias   (conv, when present)
//   1.weight                                                      (norm1)
//   2.<mixer's names>, e.g. 2.to_hidden_and_gate.weight, 2.to_out.weight
//   3.weight                                                      (norm2)
//   4.0.weight, 4.0.bias, 4.2.weight, 4.2.bias                    (ff)
// State: the conv's window (when present) then the mixer's state tensors.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/threading.hpp"
#include "seqnn/layers/causal_conv.hpp"
#include "seqnn/models/composite_state.hpp"
#include "seqnn/models/mixer.hpp"
#include "seqnn/models/rowwise.hpp"
#include "seqnn/nn/dropout.hpp"
#include "seqnn/nn/rms_norm.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace seqnn {

/// The sizes of an LMBlock.
struct LMBlockOptions {
    Index dim = 0;                  ///< D
    MixerOptions mixer;             ///< the kind and its options
    double ff_mult = 4.0;           ///< the MLP's hidden size is D * ff_mult
    bool conv = false;              ///< lucidrains' enable_conv
    Index conv_kernel = 3;          ///< 3 in lucidrains, 4 in the paper
    double dropout = 0.0;           ///< on the mixer's and the MLP's outputs, training only
    /// Seed of the dropout masks.
    std::uint64_t dropout_seed = 0;
};

/// One block of the language model: conv, norm, mixer, residual, norm, MLP, residual.
template <typename Scalar>
class LMBlock : public Layer<Scalar> {
public:
    /// A block with weights drawn as PyTorch draws them.
    LMBlock(const LMBlockOptions& o, Rng& rng)
        : options_(o),
          norm1_(checked_dim(o.dim)),
          norm2_(o.dim),
          mixer_drop_(o.dim, o.dropout, dropout_detail::mix64(o.dropout_seed * 2 + 1)),
          ff_drop_(o.dim, o.dropout, dropout_detail::mix64(o.dropout_seed * 2 + 2)) {
        if (o.mixer.kind == MixerKind::Transformer)
            fail("LMBlock", "a Transformer mixer is a whole block (attention and MLP): use TransformerBlock itself, "
                            "as LanguageModel does");
        if (o.conv) conv_.emplace(CausalConvOptions{.channels = o.dim, .kernel_size = o.conv_kernel}, rng);
        mixer_ = make_mixer<Scalar>(o.mixer, o.dim, rng);
        if (mixer_->input_size() != o.dim || mixer_->output_size() != o.dim)
            fail("LMBlock", "the mixer (" + mixer_->kind() + ") maps " + std::to_string(mixer_->input_size()) + " -> " +
                                std::to_string(mixer_->output_size()) + " features, expected " + std::to_string(o.dim) +
                                " -> " + std::to_string(o.dim));
        ff_.emplace(o.dim, o.ff_mult, rng);
        layout_ = CompositeState<Scalar>(stateful());
    }

    std::string kind() const override { return "LMBlock(" + mixer_->kind() + ")"; }
    Index input_size() const override { return options_.dim; }
    Index output_size() const override { return options_.dim; }
    /// The sequence mixer (a recurrent layer or a Transformer block).
    Layer<Scalar>& mixer() { return *mixer_; }
    /// The sequence mixer, read-only.
    const Layer<Scalar>& mixer() const { return *mixer_; }
    /// The MLP.
    FeedForward<Scalar>& feed_forward() { return *ff_; }
    /// The causal conv, if any.
    std::optional<CausalDepthwiseConv1d<Scalar>>& conv() { return conv_; }
    /// Dropout after the mixer, read-only.
    const Dropout<Scalar>& mixer_dropout() const { return mixer_drop_; }
    /// Dropout after the MLP, read-only.
    const Dropout<Scalar>& ff_dropout() const { return ff_drop_; }
    /// Dropout after the mixer.
    Dropout<Scalar>& mixer_dropout() { return mixer_drop_; }
    /// Dropout after the MLP.
    Dropout<Scalar>& ff_dropout() { return ff_drop_; }

    /// The conv's and the mixer's states; workspace for step: h, n, m (B, D) and the
    /// MLP's pre, act (B, mult*D).
    State<Scalar> initial_state(Index batch) const override {
        if (batch <= 0) fail(kind() + ".initial_state", "batch must be positive, got " + std::to_string(batch));
        State<Scalar> s = layout_.initial(stateful(), batch);
        const Index D = options_.dim, H = ff_->hidden_size();
        s.workspace = {Matrix<Scalar>(batch, D), Matrix<Scalar>(batch, D), Matrix<Scalar>(batch, D),
                       Matrix<Scalar>(batch, H), Matrix<Scalar>(batch, H)};
        return s;
    }

    Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const override {
        const std::string where = kind() + ".forward";
        check_sequence(where, "input", x, input_size());
        const Index B = x.batch, T = x.steps;
        // Without a state the children run without one too (a Transformer then keeps no cache).
        if (state && state->empty()) *state = initial_state(B);
        if (state) {
            layout_.check(where, *state);
            layout_.check_batch(where, *state, B);
        }
        if (ctx) {
            ctx->owner.clear();  // set again once the forward has succeeded
            ctx->batch = B;
            ctx->steps = T;
            ctx->make_children(4);  // conv, mixer, mixer dropout, ff dropout
        }
        Context<Scalar>* conv_ctx = ctx ? &ctx->children[0] : nullptr;
        Context<Scalar>* mixer_ctx = ctx ? &ctx->children[1] : nullptr;
        std::size_t child = 0;

        // h1 = x + conv(x)   (B*T, D), summed into the conv's output
        Sequence<Scalar> h;
        if (conv_) {
            State<Scalar> cs = state ? layout_.child(*state, child) : State<Scalar>{};
            h = conv_->forward(x, state ? &cs : nullptr, conv_ctx);
            parallel_add<Scalar>(h.data, x.data);
            if (state) layout_.set_child(*state, child, std::move(cs), *conv_, B);
            ++child;
        } else {
            h = Sequence<Scalar>(parallel_copy_of<Scalar>(x.data), B, T);
        }
        if (ctx) parallel_copy<Scalar>(ctx->buffer("h1", B * T, options_.dim), h.data);  // into the reused buffer

        // h2 = h1 + drop(mixer(norm1(h1)))
        const Sequence<Scalar> n1(norm1_.forward(h.data), B, T);  // (B*T, D)
        State<Scalar> ms = state ? layout_.child(*state, child) : State<Scalar>{};
        Sequence<Scalar> m = mixer_->forward(n1, state ? &ms : nullptr, mixer_ctx);  // (B*T, D)
        if (state) layout_.set_child(*state, child, std::move(ms), *mixer_, B);
        mixer_drop_.apply(m.data, ctx ? &ctx->children[2] : nullptr);
        parallel_add<Scalar>(h.data, m.data);
        if (ctx) parallel_copy<Scalar>(ctx->buffer("h2", B * T, options_.dim), h.data);

        // y = h2 + drop(ff(norm2(h2))); in training mode n2, pre and act live in the
        // context's buffers, which a reused context keeps from step to step.
        const Index N = B * T, D = options_.dim, H = ff_->hidden_size();
        Matrix<Scalar> local_n2, local_pre, local_act;
        Matrix<Scalar>& n2 = ctx ? ctx->buffer("n2", N, D) : local_n2;
        Matrix<Scalar>& pre = ctx ? ctx->buffer("pre", N, H) : local_pre;
        Matrix<Scalar>& act = ctx ? ctx->buffer("act", N, H) : local_act;
        n2.resize(N, D);
        pre.resize(N, H);
        norm2_.forward(h.data, n2);          // (B*T, D)
        Matrix<Scalar> f(N, D);
        ff_->forward_rows(n2, pre, act, f);  // (B*T, D) -> (B*T, H) -> (B*T, D)
        ff_drop_.apply(f, ctx ? &ctx->children[3] : nullptr);
        parallel_add<Scalar>(h.data, f);
        if (state) state->position += T;
        if (ctx) ctx->owner = signature();
        return h;
    }

    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                              const State<Scalar>* d_final = nullptr, State<Scalar>* d_initial = nullptr) override {
        const std::string where = kind() + ".backward";
        check_context_owner(where, ctx, signature());
        if (ctx.children.size() != 4) fail(where, "the context holds no training forward of this block");
        check_sequence(where, "dy", dy, output_size());
        const Index B = ctx.batch, T = ctx.steps;
        if (dy.batch != B || dy.steps != T)
            fail(where, "dy " + shape_string(dy) + " does not match the forward's (B=" + std::to_string(B) +
                            ", T=" + std::to_string(T) + ")");
        const bool has_final = d_final && !d_final->empty();
        if (has_final) layout_.check(where + " d_final", *d_final);
        if (d_initial) {
            *d_initial = State<Scalar>{};
            d_initial->tensors.resize(static_cast<std::size_t>(layout_.total()));
        }
        const std::size_t mixer_child = conv_ ? 1 : 0;

        // y = h2 + drop(ff(norm2(h2))): dh2 = dy + norm2'(ff'(drop'(dy)))
        Matrix<Scalar> df = parallel_copy_of<Scalar>(dy.data);  // (B*T, D)
        ff_drop_.apply_backward(df, ctx.children[3]);
        const Matrix<Scalar> dn2 = ff_->backward_rows(ctx.get("n2"), ctx.get("pre"), ctx.get("act"), df);
        Matrix<Scalar> dh = norm2_.backward(ctx.get("h2"), dn2);  // (B*T, D)
        parallel_add<Scalar>(dh, dy.data);

        // h2 = h1 + drop(mixer(norm1(h1))): dh1 = dh2 + norm1'(mixer'(drop'(dh2)))
        Matrix<Scalar> dm = parallel_copy_of<Scalar>(dh);
        mixer_drop_.apply_backward(dm, ctx.children[2]);
        State<Scalar> m_final = has_final ? layout_.child(*d_final, mixer_child) : State<Scalar>{};
        State<Scalar> m_initial;
        const Sequence<Scalar> dn1 = mixer_->backward(Sequence<Scalar>(std::move(dm), B, T), ctx.children[1],
                                                      has_final ? &m_final : nullptr, d_initial ? &m_initial : nullptr);
        parallel_add<Scalar>(dh, norm1_.backward(ctx.get("h1"), dn1.data));
        if (d_initial) layout_.set_child(*d_initial, mixer_child, std::move(m_initial), *mixer_, B);

        // h1 = x + conv(x): dx = dh1 + conv'(dh1)
        Sequence<Scalar> dh1(std::move(dh), B, T);
        if (conv_) {
            State<Scalar> c_final = has_final ? layout_.child(*d_final, 0) : State<Scalar>{};
            State<Scalar> c_initial;
            const Sequence<Scalar> dc = conv_->backward(dh1, ctx.children[0], has_final ? &c_final : nullptr,
                                                        d_initial ? &c_initial : nullptr);
            parallel_add<Scalar>(dh1.data, dc.data);
            if (d_initial) layout_.set_child(*d_initial, 0, std::move(c_initial), *conv_, B);
        }
        return dh1;
    }

    /// The same block on one step, through the buffers in the state's workspace.
    void step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        const auto where = [this] { return kind() + ".step"; };  // built only on failure
        if (x.cols() != input_size() || x.rows() <= 0)
            fail(where(), "input has shape " + shape_string(x) + ", expected (B, " + std::to_string(input_size()) +
                            ") with B > 0");
        const Index B = x.rows();
        if (state.empty()) state = initial_state(B);
        layout_.check(where, state);
        layout_.check_batch(where, state, B);
        if (!layout_.has_shells(state)) layout_.make_shells(state, stateful(), B);
        if (state.workspace.size() != 5 || state.workspace[0].rows() != B) state.workspace = initial_state(B).workspace;
        Matrix<Scalar>& h = state.workspace[0];    // (B, D): the residual stream
        Matrix<Scalar>& n = state.workspace[1];    // (B, D): normed
        Matrix<Scalar>& m = state.workspace[2];    // (B, D): a branch's output
        Matrix<Scalar>& pre = state.workspace[3];  // (B, H)
        Matrix<Scalar>& act = state.workspace[4];  // (B, H)
        check_children(state, B);  // the conv's and the mixer's states, before either steps
        std::size_t child = 0;
        // Each child's tensors are swapped back into the state even if its step throws.
        if (conv_) {
            const auto in_shell = layout_.swapped(state, child);
            conv_->step(x, state.children[child], m);
            h = x + m;
            ++child;
        } else {
            h = x;
        }
        norm1_.forward(h, n);
        {
            const auto in_shell = layout_.swapped(state, child);
            mixer_->step(n, state.children[child], m);
        }
        h += m;
        norm2_.forward(h, n);
        if (y.rows() != B || y.cols() != output_size()) y.resize(B, output_size());
        ff_->forward_rows(n, pre, act, y);
        y += h;
        state.position += 1;
    }

    void check_step_state(State<Scalar>& state, Index batch) const override {
        const auto where = [this] { return kind() + ".step"; };
        if (state.empty()) return;
        layout_.check(where, state);
        layout_.check_batch(where, state, batch);
        if (!layout_.has_shells(state)) layout_.make_shells(state, stateful(), batch);
        check_children(state, batch);
    }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        if (conv_) conv_->collect_parameters(prefix + "0.", out);
        norm1_.collect_parameters(prefix + "1.", out);
        mixer_->collect_parameters(prefix + "2.", out);
        norm2_.collect_parameters(prefix + "3.", out);
        ff_->collect_parameters(prefix + "4.", out);
    }

    /// The block's kind and sizes, e.g. "LMBlock(MinGRU 16 -> 16, D=16, ff=64, conv K=3)": the
    /// owner a training forward writes into its Context and backward expects there.
    std::string signature() const {
        return "LMBlock(" + mixer_->kind() + " " + std::to_string(mixer_->input_size()) + " -> " +
               std::to_string(mixer_->output_size()) + ", D=" + std::to_string(options_.dim) +
               ", ff=" + std::to_string(ff_->hidden_size()) +
               (conv_ ? ", conv K=" + std::to_string(conv_->kernel_size()) : std::string()) + ")";
    }

private:
    // The conv's and the mixer's check_step_state, each on its tensors swapped in and back.
    void check_children(State<Scalar>& state, Index B) const {
        std::size_t child = 0;
        if (conv_) {
            const auto in_shell = layout_.swapped(state, child);
            conv_->check_step_state(state.children[child++], B);
        }
        const auto in_shell = layout_.swapped(state, child);
        mixer_->check_step_state(state.children[child], B);
    }
    static Index checked_dim(Index dim) {
        if (dim <= 0) fail("LMBlock", "dim must be positive, got " + std::to_string(dim));
        return dim;
    }
    // The children that carry state, in state order.
    std::vector<const Layer<Scalar>*> stateful() const {
        std::vector<const Layer<Scalar>*> out;
        if (conv_) out.push_back(&*conv_);
        out.push_back(mixer_.get());
        return out;
    }

    LMBlockOptions options_;
    std::optional<CausalDepthwiseConv1d<Scalar>> conv_;
    RMSNorm<Scalar> norm1_;
    std::unique_ptr<Layer<Scalar>> mixer_;
    RMSNorm<Scalar> norm2_;
    std::optional<FeedForward<Scalar>> ff_;
    Dropout<Scalar> mixer_drop_;
    Dropout<Scalar> ff_drop_;
    CompositeState<Scalar> layout_;
};

}  // namespace seqnn
