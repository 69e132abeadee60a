// The minGRU paper's language model (lucidrains/minGRU-pytorch's minLM), with any
// mixer kind:
//   tokens (B, T) -> token_emb -> [Block] x depth -> RMSNorm -> to_logits -> logits (B*T, V)
//
// Names, as minLM's state_dict, so its checkpoints load by name (with MinGRU or
// MinLSTM mixers and minLM's defaults):
//   token_emb.weight (V, D), layers.{i}.{0..4}... (lm_block.hpp), norm.weight (D),
//   to_logits.weight (V, D) (no bias).
//
// Every kind uses the same Block (block.hpp). With the Transformer kind its mixer is
// causal self-attention (rotary positions, a KV cache as state), its norms LayerNorms, and
// it is named as nn.TransformerEncoder's layers.{i}.self_attn.in_proj_weight, ...; the
// conv option does not apply to it.
//
// Like a seqnn::Layer, with token ids for input:
//   forward(tokens, state, ctx)  whole sequences, from and to a state, so that
//                                chunk by chunk equals all at once;
//   step(tokens (B), state, logits (B, V))  one token per stream, no allocation after
//                                initial_state;
//   backward(dlogits, ctx)       adds every parameter's gradient into its .grad; with a
//                                GradientReadyHook it reports them as they become final:
//                                the head, the norm, each block from the last, the embedding.
// forward without a context keeps nothing in the object: one model may serve several
// threads at once.
//
// State: a tree, children[0] the blocks' Sequential's state (block i's in its children[i]).
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/models/lm_block.hpp"
#include "seqnn/models/sequential.hpp"
#include "seqnn/layers/dropout.hpp"
#include "seqnn/nn/embedding.hpp"
#include "seqnn/nn/linear.hpp"
#include "seqnn/nn/rms_norm.hpp"
#include "seqnn/train/loss.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace seqnn {

/// B token sequences of T ids: id b*T + t is step t of sequence b, the layout of a
/// (B*T, D) Sequence.
struct TokenBatch {
    /// B*T token ids, row-major (sequence b's step t at b*T + t).
    std::vector<int> ids;
    Index batch = 0;  ///< B
    Index steps = 0;  ///< T
    /// Empty, or B lengths in [1, T] for a padded batch (see Sequence::lengths): the logits
    /// past each end are zero and no gradient flows from them; padding_targets() keeps them
    /// out of a loss.
    std::vector<Index> lengths;

    TokenBatch() = default;
    /// Wraps B*T ids as B sequences of T tokens.
    TokenBatch(std::vector<int> token_ids, Index batch_size, Index num_steps)
        : ids(std::move(token_ids)), batch(batch_size), steps(num_steps) {
        if (batch <= 0 || steps <= 0 || static_cast<Index>(ids.size()) != checked_mul("TokenBatch", batch, steps))
            fail("TokenBatch", std::to_string(ids.size()) + " ids do not make B=" + std::to_string(batch) +
                                   " sequences of T=" + std::to_string(steps) + " (B and T must be positive)");
    }

    /// The token at step t of sequence b.
    int at(Index b, Index t) const { return ids[static_cast<std::size_t>(b * steps + t)]; }
    /// The T tokens of sequence b.
    std::span<const int> sequence(Index b) const {
        return std::span<const int>(ids).subspan(static_cast<std::size_t>(b * steps), static_cast<std::size_t>(steps));
    }
    /// Steps [t0, t0 + n) of every sequence, (B, n), of a batch without lengths.
    TokenBatch slice(Index t0, Index n) const {
        if (!lengths.empty())
            fail("TokenBatch.slice", "a padded batch (with lengths) has no common steps to slice");
        if (t0 < 0 || n <= 0 || t0 > steps || n > steps - t0)
            fail("TokenBatch.slice", "steps [" + std::to_string(t0) + ", " + std::to_string(t0) + " + " +
                                         std::to_string(n) + ") are not a non-empty range within T=" +
                                         std::to_string(steps));
        std::vector<int> out;
        out.reserve(static_cast<std::size_t>(batch * n));
        for (Index b = 0; b < batch; ++b)
            for (Index t = t0; t < t0 + n; ++t) out.push_back(at(b, t));
        return TokenBatch(std::move(out), batch, n);
    }
};

/// `targets` (B*T, one per position of `tokens`) with every padding position of a padded
/// batch set to `ignore_index`, so that cross_entropy_loss counts real positions only.
inline std::vector<int> padding_targets(const TokenBatch& tokens, std::vector<int> targets,
                                        int ignore_index = kIgnoreIndex) {
    if (static_cast<Index>(targets.size()) != tokens.batch * tokens.steps)
        fail("padding_targets", std::to_string(targets.size()) + " targets for B=" + std::to_string(tokens.batch) +
                                    ", T=" + std::to_string(tokens.steps));
    for (std::size_t b = 0; b < tokens.lengths.size(); ++b)
        for (Index t = tokens.lengths[b]; t < tokens.steps; ++t)
            targets[static_cast<std::size_t>(static_cast<Index>(b) * tokens.steps + t)] = ignore_index;
    return targets;
}

/// The sizes of a LanguageModel.
struct LanguageModelOptions {
    Index vocab_size = 0;           ///< V
    Index dim = 0;                  ///< D
    Index depth = 1;                ///< blocks
    MixerOptions mixer;             ///< kind and options, the same in every block
    /// The MLP's hidden width over dim.
    double ff_mult = 4.0;
    bool conv = false;              ///< lucidrains' enable_conv
    /// The causal conv's width; 0 for none.
    Index conv_kernel = 3;
    double dropout = 0.0;           ///< after the embedding and on each block's branches, training only
    /// Seed of the dropout masks.
    std::uint64_t dropout_seed = 0;
};

/// The paper's language model: embedding, LMBlocks, final RMSNorm, head (lucidrains' minLM layout).
template <typename Scalar>
class LanguageModel {
public:
    /// A model with weights drawn as PyTorch draws them.
    LanguageModel(const LanguageModelOptions& o, Rng& rng)
        : options_(o), embed_drop_(checked(o).dim, o.dropout, dropout_detail::mix64(o.dropout_seed)) {
        token_emb_ = Embedding<Scalar>(o.vocab_size, o.dim, rng);
        for (Index i = 0; i < o.depth; ++i)
            blocks_.push_back(&layers_.template emplace<Block<Scalar>>(block_options(o, i), rng));
        norm_ = RMSNorm<Scalar>(o.dim);
        to_logits_ = Linear<Scalar>(o.dim, o.vocab_size, false, rng);
    }

    /// "LanguageModel(<mixer>)", for messages.
    std::string kind() const { return "LanguageModel(" + to_string(options_.mixer.kind) + ")"; }
    /// The options it was made with.
    const LanguageModelOptions& options() const { return options_; }
    /// Tokens in the vocabulary.
    Index vocab_size() const { return options_.vocab_size; }
    /// The model width.
    Index dim() const { return options_.dim; }
    /// The blocks.
    Sequential<Scalar>& layers() { return layers_; }
    /// Block i.
    Block<Scalar>& block(Index i) { return *blocks_.at(static_cast<std::size_t>(i)); }
    /// The token embedding.
    Embedding<Scalar>& token_emb() { return token_emb_; }
    /// The output head.
    Linear<Scalar>& to_logits() { return to_logits_; }

    /// Every dropout of the model, for checkpoints (their counters are the RNG state).
    std::vector<Dropout<Scalar>*> dropouts() {
        std::vector<Dropout<Scalar>*> out{&embed_drop_};
        for (Block<Scalar>* b : blocks_) {
            out.push_back(&b->mixer_dropout());
            out.push_back(&b->ff_dropout());
        }
        return out;
    }

    /// The blocks' zero states as the one child state; workspace: the embedded tokens and
    /// the final normed stream, (B, D) each, for step.
    State<Scalar> initial_state(Index batch) const {
        if (batch <= 0) fail(kind() + ".initial_state", "batch must be positive, got " + std::to_string(batch));
        State<Scalar> s;
        s.batch = batch;
        s.children.push_back(layers_.initial_state(batch));
        s.workspace = {Matrix<Scalar>(batch, dim()), Matrix<Scalar>(batch, dim())};
        return s;
    }

    /// tokens (B, T) -> logits (B*T, V). state: as Layer::forward (nullptr or empty
    /// starts from zeros; holds the final state on return). ctx: training mode.
    Sequence<Scalar> forward(const TokenBatch& tokens, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const {
        const std::string where = kind() + ".forward";
        check_tokens(where, tokens);
        const Index B = tokens.batch, T = tokens.steps;
        // Without a state the blocks run without one too (a Transformer then keeps no cache).
        if (state && state->empty()) *state = initial_state(B);
        if (state) check_state(*state, B, Call::Forward);
        Saved* saved = nullptr;
        if (ctx) {
            ctx->owner.clear();  // set again once the forward has succeeded
            ctx->batch = B;
            ctx->steps = T;
            ctx->make_children(2);  // layers, embedding dropout
            saved = &keep_for_backward<Saved>(*ctx);
            saved->ids = tokens.ids;  // for the embedding's backward
        }
        Sequence<Scalar> x(token_emb_.forward(tokens.ids), B, T);  // (B*T, D)
        x.lengths = tokens.lengths;
        embed_drop_.apply(x.data, ctx ? &ctx->children[1] : nullptr);
        Sequence<Scalar> h = layers_.forward(x, state ? &state->children[0] : nullptr,
                                             ctx ? &ctx->children[0] : nullptr);  // (B*T, D)

        const Matrix<Scalar> normed = norm_.forward(h.data);  // (B*T, D)
        Sequence<Scalar> logits(B, T, vocab_size());
        to_logits_.forward(normed, logits.data);  // (B*T, D) x (D, V)
        if (!tokens.lengths.empty()) {
            logits.lengths = tokens.lengths;
            zero_padding<Scalar>(logits.data, T, logits.lengths);
        }
        if (saved) {
            saved->h = std::move(h.data);
            saved->normed = normed;
        }
        if (state) state->position += T;
        if (ctx) ctx->owner = signature();
        return logits;
    }

    /// Given dL/dlogits (B*T, V) for the forward that filled ctx (and optionally dL/d
    /// of its final state), adds every parameter's gradient into .grad; fills
    /// d_initial, if given, with dL/d(initial state).
    /// ready: if not empty, called with [first, end) of parameters() each time those
    /// gradients are final, in the order backward finishes them: to_logits, norm, each
    /// block from the last to the first, token_emb (see GradientReadyHook). It changes
    /// nothing that backward computes.
    void backward(const Sequence<Scalar>& dlogits, const Context<Scalar>& ctx, const State<Scalar>* d_final = nullptr,
                  State<Scalar>* d_initial = nullptr, const GradientReadyHook& ready = {}) {
        const std::string where = kind() + ".backward";
        check_context_owner(where, ctx, signature());
        if (ctx.children.size() != 2) fail(where, "the context holds no training forward of this model");
        check_sequence(where, "dlogits", dlogits, vocab_size());
        const Index B = ctx.batch, T = ctx.steps;
        if (dlogits.batch != B || dlogits.steps != T)
            fail(where, "dlogits " + shape_string(dlogits) + " do not match the forward's (B=" + std::to_string(B) +
                            ", T=" + std::to_string(T) + ")");
        const Saved& saved = saved_for_backward<Saved>(ctx);
        const std::vector<Index>& lengths = ctx.children[0].lengths;  // the forward's
        if (dlogits.padded() && dlogits.lengths != lengths)
            fail(where, "dlogits' lengths differ from the forward's");
        if (!padding_is_zero(dlogits.data, T, lengths)) {  // the logits there were zero whatever the weights
            Sequence<Scalar> zeroed = dlogits;
            zero_padding<Scalar>(zeroed.data, T, lengths);
            backward(zeroed, ctx, d_final, d_initial, ready);
            return;
        }
        // parameters(): token_emb's [0, n_emb), the blocks', norm's, to_logits' [n_head, total).
        std::size_t n_emb = 0, n_norm = 0, n_head = 0, total = 0;
        if (ready) {
            n_emb = count(token_emb_);
            n_norm = n_emb + count(layers_);
            n_head = n_norm + count(norm_);
            total = n_head + count(to_logits_);
        }
        const auto report = [&ready](std::size_t first, std::size_t end) {
            if (ready && first < end) ready(first, end);
        };
        const Matrix<Scalar> d_normed = to_logits_.backward(saved.normed, dlogits.data);  // (B*T, V) x (V, D)
        report(n_head, total);
        const Sequence<Scalar> dh(norm_.backward(saved.h, d_normed), B, T);  // (B*T, D)
        report(n_norm, n_head);
        const bool has_final = d_final && !d_final->empty();
        if (has_final) check_state(*d_final, B, Call::Backward);
        if (d_initial) {
            *d_initial = State<Scalar>{};
            d_initial->children.resize(1);
        }
        const State<Scalar>* d_blocks_final = has_final ? &d_final->children[0] : nullptr;
        State<Scalar>* d_blocks_initial = d_initial ? &d_initial->children[0] : nullptr;
        Sequence<Scalar> dx = layers_.backward(dh, ctx.children[0], d_blocks_final, d_blocks_initial, ready,
                                               n_emb);  // (B*T, D); without a hook the plain backward
        embed_drop_.apply_backward(dx.data, ctx.children[1]);
        token_emb_.backward(saved.ids, dx.data);
        report(0, n_emb);
    }

    /// Makes room in `state` (made by initial_state) for `length` positions per stream:
    /// grows the Transformer blocks' KV caches, keeping what they hold, so that forward and
    /// step run that far without the cache filling up. The recurrent kinds' states do not
    /// grow: for them this only checks the state.
    void reserve(State<Scalar>& state, Index length) const {
        if (state.batch <= 0) fail(kind() + ".reserve", "the state records no stream count: make it with initial_state");
        check_state(state, state.batch, Call::Forward);
        layers_.reserve(state.children[0], length);
    }

    /// One token for each of B streams -> logits (B, V); no allocation once the state
    /// exists (logits is resized only if its shape is wrong).
    void step(std::span<const int> tokens, State<Scalar>& state, Matrix<Scalar>& logits) const {
        const auto where = [this] { return kind() + ".step"; };  // built only on failure
        const Index B = static_cast<Index>(tokens.size());
        if (B <= 0) fail(where(), "no tokens: one token per stream is needed");
        if (state.empty()) state = initial_state(B);
        check_state(state, B, Call::Step);
        if (state.workspace.size() != 2 || state.workspace[0].rows() != B) state.workspace = initial_state(B).workspace;
        Matrix<Scalar>& x = state.workspace[0];  // (B, D)
        Matrix<Scalar>& h = state.workspace[1];  // (B, D)
        token_emb_.forward(tokens, x);  // checks every id before the state is touched
        layers_.step(x, state.children[0], h);
        norm_.forward(h, h);
        if (logits.rows() != B || logits.cols() != vocab_size()) logits.resize(B, vocab_size());
        to_logits_.forward(h, logits);  // (B, D) x (D, V)
        state.position += 1;
    }

    /// Appends the parameters, named as in PyTorch's state_dict, after `prefix`.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) {
        token_emb_.collect_parameters(prefix + "token_emb.", out);
        layers_.collect_parameters(prefix + "layers.", out);
        norm_.collect_parameters(prefix + "norm.", out);
        to_logits_.collect_parameters(prefix + "to_logits.", out);
    }
    /// Every parameter with its state_dict name and gradient.
    ParameterList<Scalar> parameters() {
        ParameterList<Scalar> out;
        collect_parameters("", out);
        return out;
    }
    /// Sets every gradient to zero.
    void zero_grad() { seqnn::zero_grad(parameters()); }

    /// The model's kind and sizes, e.g. "LanguageModel(MinGRU, V=256, D=64, depth=2)": the
    /// owner a training forward writes into its Context and backward expects there.
    std::string signature() const {
        return "LanguageModel(" + to_string(options_.mixer.kind) + ", V=" + std::to_string(options_.vocab_size) +
               ", D=" + std::to_string(options_.dim) + ", depth=" + std::to_string(options_.depth) + ")";
    }

    /// Throws what `call` would throw because of `state` alone (see Layer::check_state).
    void check_state(const State<Scalar>& state, Index batch, Call call) const {
        if (state.batch != 0 && state.batch != batch)
            fail(kind() + "." + call_name(call), "the state was made for " + std::to_string(state.batch) +
                                                     " streams, not B=" + std::to_string(batch));
        if (!state.tensors.empty() || state.children.size() != 1)
            fail(kind() + "." + call_name(call), "the state has " + std::to_string(state.children.size()) +
                                                     " child states, expected 1 (the blocks')");
        layers_.check_state(state.children[0], batch, call);
    }

    /// What a training forward keeps for backward (the blocks keep their own).
    struct Saved {
        std::vector<int> ids;    ///< the B*T token ids
        Matrix<Scalar> h;        ///< the blocks' output (B*T, D)
        Matrix<Scalar> normed;   ///< norm(h) (B*T, D)
    };

private:
    // Block i: minLM's (RMSNorms, lucidrains' names) for the recurrent kinds, PyTorch's
    // nn.TransformerEncoderLayer (LayerNorms, its names) for the Transformer kind.
    static BlockOptions block_options(const LanguageModelOptions& o, Index i) {
        const std::uint64_t seed = dropout_detail::mix64(o.dropout_seed + 1000 + static_cast<std::uint64_t>(i));
        if (o.mixer.kind == MixerKind::Transformer)
            return {.dim = o.dim, .mixer = o.mixer, .ff_mult = o.ff_mult, .norm = BlockNorm::LayerNorm,
                    .dropout = o.dropout, .dropout_seed = seed, .names = BlockNames::TransformerEncoderLayer};
        return lm_block_options({.dim = o.dim, .mixer = o.mixer, .ff_mult = o.ff_mult, .conv = o.conv,
                                 .conv_kernel = o.conv_kernel, .dropout = o.dropout, .dropout_seed = seed});
    }

    // The number of parameters a part contributes to parameters().
    template <typename Part>
    static std::size_t count(Part& part) {
        ParameterList<Scalar> list;
        part.collect_parameters("", list);
        return list.size();
    }

    static const LanguageModelOptions& checked(const LanguageModelOptions& o) {
        if (o.vocab_size <= 0 || o.dim <= 0 || o.depth <= 0)
            fail("LanguageModel", "vocab_size, dim and depth must be positive, got " + std::to_string(o.vocab_size) +
                                      ", " + std::to_string(o.dim) + ", " + std::to_string(o.depth));
        if (o.mixer.kind == MixerKind::Transformer && o.conv)
            fail("LanguageModel", "the causal conv belongs to the recurrent block; the Transformer kind has none");
        return o;
    }
    void check_tokens(const std::string& where, const TokenBatch& tokens) const {
        if (tokens.batch <= 0 || tokens.steps <= 0 || static_cast<Index>(tokens.ids.size()) != tokens.batch * tokens.steps)
            fail(where, "tokens hold " + std::to_string(tokens.ids.size()) + " ids for B=" +
                            std::to_string(tokens.batch) + ", T=" + std::to_string(tokens.steps));
        check_lengths(where, tokens.lengths, tokens.batch, tokens.steps);
    }

    LanguageModelOptions options_;
    Embedding<Scalar> token_emb_;
    Dropout<Scalar> embed_drop_;
    Sequential<Scalar> layers_;
    std::vector<Block<Scalar>*> blocks_;  // the blocks, owned by layers_
    RMSNorm<Scalar> norm_;
    Linear<Scalar> to_logits_;
};

}  // namespace seqnn
