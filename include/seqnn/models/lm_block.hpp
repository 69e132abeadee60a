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
// State: one child state each for the conv (when present) and the mixer.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/threading.hpp"
#include "seqnn/layers/causal_conv.hpp"
#include "seqnn/models/mixer.hpp"
#include "seqnn/models/rowwise.hpp"
#include "seqnn/layers/dropout.hpp"
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

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        if (conv_) conv_->collect_parameters(prefix + "0.", out);
        norm1_.collect_parameters(prefix + "1.", out);
        mixer_->collect_parameters(prefix + "2.", out);
        norm2_.collect_parameters(prefix + "3.", out);
        ff_->collect_parameters(prefix + "4.", out);
    }

    /// The block's kind and sizes, e.g. "LMBlock(MinGRU 16 -> 16, D=16, ff=64, conv K=3)": the
    /// owner a training forward writes into its Context and backward expects there.
    std::string signature() const override {
        return "LMBlock(" + mixer_->kind() + " " + std::to_string(mixer_->input_size()) + " -> " +
               std::to_string(mixer_->output_size()) + ", D=" + std::to_string(options_.dim) +
               ", ff=" + std::to_string(ff_->hidden_size()) +
               (conv_ ? ", conv K=" + std::to_string(conv_->kernel_size()) : std::string()) + ")";
    }

    /// What a training forward keeps for backward (the children keep their own).
    struct Saved {
        Matrix<Scalar> h1, h2;     ///< the residual stream after the conv and after the mixer, (B*T, D)
        Matrix<Scalar> n2;         ///< norm2(h2), (B*T, D)
        Matrix<Scalar> pre, act;   ///< the MLP's hidden layer before and after GELU, (B*T, H)
    };

protected:
    /// Child states: the conv's (when present), then the mixer's; workspace for step: h, n,
    /// m (B, D) and the MLP's pre, act (B, mult*D).
    State<Scalar> make_state(Index batch) const override {
        State<Scalar> s;
        if (conv_) s.children.push_back(conv_->initial_state(batch));
        s.children.push_back(mixer_->initial_state(batch));
        const Index D = options_.dim, H = ff_->hidden_size();
        s.workspace = {Matrix<Scalar>(batch, D), Matrix<Scalar>(batch, D), Matrix<Scalar>(batch, D),
                       Matrix<Scalar>(batch, H), Matrix<Scalar>(batch, H)};
        return s;
    }

    void validate_state(const State<Scalar>& state, Index batch, Call call) const override {
        const std::size_t children = conv_ ? 2 : 1;
        if (!state.tensors.empty() || state.children.size() != children)
            fail(this->where(call), "the state has " + std::to_string(state.children.size()) + " child states, expected " +
                                        std::to_string(children) + (conv_ ? " (the conv's, the mixer's)" : " (the mixer's)"));
        if (conv_) conv_->check_state(state.children[0], batch, call);
        mixer_->check_state(state.children[conv_ ? 1 : 0], batch, call);
    }

    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        const Index B = x.batch, T = x.steps;
        if (ctx) ctx->make_children(4);  // conv, mixer, mixer dropout, ff dropout
        Saved* saved = ctx ? &keep_for_backward<Saved>(*ctx) : nullptr;
        const std::size_t mixer_child = conv_ ? 1 : 0;

        // h1 = x + conv(x)   (B*T, D), summed into the conv's output
        Sequence<Scalar> h;
        if (conv_) {
            h = conv_->forward(x, state ? &state->children[0] : nullptr, ctx ? &ctx->children[0] : nullptr);
            parallel_add<Scalar>(h.data, x.data);
        } else {
            h = Sequence<Scalar>(parallel_copy_of<Scalar>(x.data), B, T);
        }
        if (saved) parallel_copy<Scalar>(saved->h1, h.data);  // into the reused buffer

        // h2 = h1 + drop(mixer(norm1(h1)))
        const Sequence<Scalar> n1(norm1_.forward(h.data), B, T);  // (B*T, D)
        Sequence<Scalar> m = mixer_->forward(n1, state ? &state->children[mixer_child] : nullptr,
                                             ctx ? &ctx->children[1] : nullptr);  // (B*T, D)
        mixer_drop_.apply(m.data, ctx ? &ctx->children[2] : nullptr);
        parallel_add<Scalar>(h.data, m.data);
        if (saved) parallel_copy<Scalar>(saved->h2, h.data);

        // y = h2 + drop(ff(norm2(h2))); in training mode n2, pre and act live in the
        // context's buffers, which a reused context keeps from step to step.
        const Index N = B * T, D = options_.dim, H = ff_->hidden_size();
        Matrix<Scalar> local_n2, local_pre, local_act;
        Matrix<Scalar>& n2 = saved ? saved->n2 : local_n2;
        Matrix<Scalar>& pre = saved ? saved->pre : local_pre;
        Matrix<Scalar>& act = saved ? saved->act : local_act;
        n2.resize(N, D);
        pre.resize(N, H);
        norm2_.forward(h.data, n2);          // (B*T, D)
        Matrix<Scalar> f(N, D);
        ff_->forward_rows(n2, pre, act, f);  // (B*T, D) -> (B*T, H) -> (B*T, D)
        ff_drop_.apply(f, ctx ? &ctx->children[3] : nullptr);
        parallel_add<Scalar>(h.data, f);
        return h;
    }

    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                   const State<Scalar>* d_final, State<Scalar>* d_initial) override {
        if (ctx.children.size() != 4) fail(this->where(Call::Backward), "the context holds no training forward of this block");
        const Saved& saved = saved_for_backward<Saved>(ctx);
        const Index B = ctx.batch, T = ctx.steps;
        const std::size_t mixer_child = conv_ ? 1 : 0;
        if (d_initial) d_initial->children.resize(conv_ ? 2 : 1);

        // y = h2 + drop(ff(norm2(h2))): dh2 = dy + norm2'(ff'(drop'(dy)))
        Matrix<Scalar> df = parallel_copy_of<Scalar>(dy.data);  // (B*T, D)
        ff_drop_.apply_backward(df, ctx.children[3]);
        const Matrix<Scalar> dn2 = ff_->backward_rows(saved.n2, saved.pre, saved.act, df);
        Matrix<Scalar> dh = norm2_.backward(saved.h2, dn2);  // (B*T, D)
        parallel_add<Scalar>(dh, dy.data);

        // h2 = h1 + drop(mixer(norm1(h1))): dh1 = dh2 + norm1'(mixer'(drop'(dh2)))
        Matrix<Scalar> dm = parallel_copy_of<Scalar>(dh);
        mixer_drop_.apply_backward(dm, ctx.children[2]);
        State<Scalar>* m_initial = d_initial ? &d_initial->children[mixer_child] : nullptr;
        const Sequence<Scalar> dn1 = mixer_->backward(Sequence<Scalar>(std::move(dm), B, T), ctx.children[1],
                                                      d_final ? &d_final->children[mixer_child] : nullptr, m_initial);
        if (m_initial && m_initial->empty()) *m_initial = mixer_->initial_state(B);
        parallel_add<Scalar>(dh, norm1_.backward(saved.h1, dn1.data));

        // h1 = x + conv(x): dx = dh1 + conv'(dh1)
        Sequence<Scalar> dh1(std::move(dh), B, T);
        if (conv_) {
            const Sequence<Scalar> dc = conv_->backward(dh1, ctx.children[0], d_final ? &d_final->children[0] : nullptr,
                                                        d_initial ? &d_initial->children[0] : nullptr);
            parallel_add<Scalar>(dh1.data, dc.data);
        }
        return dh1;
    }

    /// The same block on one step, through the buffers in the state's workspace.
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        const Index B = x.rows();
        if (state.workspace.size() != 5 || state.workspace[0].rows() != B) state.workspace = make_state(B).workspace;
        Matrix<Scalar>& h = state.workspace[0];    // (B, D): the residual stream
        Matrix<Scalar>& n = state.workspace[1];    // (B, D): normed
        Matrix<Scalar>& m = state.workspace[2];    // (B, D): a branch's output
        Matrix<Scalar>& pre = state.workspace[3];  // (B, H)
        Matrix<Scalar>& act = state.workspace[4];  // (B, H)
        if (conv_) {
            conv_->step(x, state.children[0], m);
            h = x + m;
        } else {
            h = x;
        }
        norm1_.forward(h, n);
        mixer_->step(n, state.children[conv_ ? 1 : 0], m);
        h += m;
        norm2_.forward(h, n);
        ff_->forward_rows(n, pre, act, y);
        y += h;
    }

private:
    static Index checked_dim(Index dim) {
        if (dim <= 0) fail("LMBlock", "dim must be positive, got " + std::to_string(dim));
        return dim;
    }
    LMBlockOptions options_;
    std::optional<CausalDepthwiseConv1d<Scalar>> conv_;
    RMSNorm<Scalar> norm1_;
    std::unique_ptr<Layer<Scalar>> mixer_;
    RMSNorm<Scalar> norm2_;
    std::optional<FeedForward<Scalar>> ff_;
    Dropout<Scalar> mixer_drop_;
    Dropout<Scalar> ff_drop_;
};

}  // namespace seqnn
