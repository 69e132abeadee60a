// Multi-head self-attention as a sequence layer, PyTorch's
//   nn.MultiheadAttention(embed_dim=E, num_heads=H, batch_first=True)
// called on (x, x, x) with a causal mask, with the same parameter names and shapes:
//
//   q | k | v = x W_in^T + b_in              in_proj_weight (3E, E), in_proj_bias (3E), rows [W_q; W_k; W_v]
//   y = attention(q, k, v) W_out^T + b_out   out_proj.weight (E, E), out_proj.bias (E)
//
// Head h is columns [h*Dh, (h+1)*Dh) of q, k and v, Dh = E / H, scores scaled by
// 1/sqrt(Dh). Optionally (not in PyTorch's layer) rotary embeddings (kernels/rope.hpp)
// rotate q and k, at positions offset by the cache's fill level.
//
// It is the Transformer's sequence mixer: a block (models/block.hpp) puts it between a
// norm and a residual, as it puts a GRU or a minGRU.
//
// The state is a KV cache: tensors {K (B*L, E), V (B*L, E)}, row b*L + t holding the key
// (after RoPE) and value of position t of stream b, and State::position its fill level.
// - initial_state(B) makes an empty cache of L = options.max_cache_length rows per stream,
//   with the workspace step() needs; step() appends one position and never allocates; it
//   throws shape_error when the cache is full.
// - forward(x, nullptr) runs whole sequences and keeps no cache (training).
// - forward(x, &state) continues from the cache: the chunk's queries attend to the cached
//   positions and to their own past (chunked == whole). If the chunk does not fit, forward
//   grows the cache to max(max_cache_length, position + T) rows. Either way the state holds
//   the filled cache on return, ready for step(). reserve() grows it ahead of time.
// - backward: the cache is differentiable like any state. d_final (optional) is dL/d(final
//   K, V cache); d_initial receives dL/d(initial cache): rows of cached positions get their
//   attention gradient (plus d_final's), rows the chunk overwrote get 0 and rows past the
//   chunk get d_final's (they are copied unchanged).
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/scratch.hpp"
#include "seqnn/kernels/attention.hpp"
#include "seqnn/kernels/elementwise.hpp"
#include "seqnn/kernels/rope.hpp"
#include "seqnn/nn/linear.hpp"

#include <cmath>
#include <span>
#include <string>

namespace seqnn {

/// The sizes and choices of a SelfAttention layer.
struct SelfAttentionOptions {
    Index embed_dim = 0;             ///< E
    Index num_heads = 1;             ///< H; E must be divisible by H
    bool causal = true;              ///< the causal mask; false: full attention, no step() and no cache to continue from
    bool rotary = false;             ///< rotate q and k with RoPE (positions offset by the cache's fill level)
    /// RoPE's base (theta).
    double rope_base = 10000.0;
    Index max_cache_length = 1024;   ///< KV-cache rows per stream that initial_state makes
    bool bias = true;                ///< in_proj_bias and out_proj.bias, as PyTorch's `bias`
};

/// Multi-head self-attention with a KV cache, PyTorch's nn.MultiheadAttention on (x, x, x).
template <typename Scalar>
class SelfAttention : public Layer<Scalar> {
public:
    /// A layer with weights drawn as PyTorch draws them: in_proj_weight xavier_uniform,
    /// the biases zero, out_proj.weight nn.Linear's default.
    SelfAttention(SelfAttentionOptions options, Rng& rng) : options_(options) {
        const std::string k = "SelfAttention";
        const Index E = options.embed_dim, H = options.num_heads;
        if (E <= 0 || H <= 0)
            fail(k, "embed_dim and num_heads must be positive, got E=" + std::to_string(E) + ", H=" + std::to_string(H));
        if (E % H != 0)
            fail(k, "embed_dim E=" + std::to_string(E) + " is not divisible by num_heads H=" + std::to_string(H));
        if (options.max_cache_length <= 0)
            fail(k, "max_cache_length must be positive, got " + std::to_string(options.max_cache_length));
        checked_elements(k + " in_proj_weight", checked_mul(k, 3, E), E);  // before anything is allocated
        if (!(options.rope_base > 0) || !std::isfinite(options.rope_base))
            fail(k, "rope_base must be a finite number > 0, got " + number_text(options.rope_base));
        if (options.rotary && (E / H) % 2 != 0)
            fail(k, "rotary embeddings need an even head size, got Dh=E/H=" + std::to_string(E / H));
        in_proj_ = Linear<Scalar>(E, 3 * E, options.bias, rng);
        in_proj_.weight.init_uniform(static_cast<Scalar>(std::sqrt(6.0 / double(E + 3 * E))), rng);
        out_proj_ = Linear<Scalar>(E, E, options.bias, rng);
        if (options.bias) {
            in_proj_.bias.value.setZero();
            out_proj_.bias.value.setZero();
        }
    }

    std::string kind() const override { return "SelfAttention"; }
    Index input_size() const override { return options_.embed_dim; }
    Index output_size() const override { return options_.embed_dim; }
    /// The options it was made with.
    const SelfAttentionOptions& options() const { return options_; }
    /// Attention heads.
    Index num_heads() const { return options_.num_heads; }
    /// Dh = E / H.
    Index head_dim() const { return options_.embed_dim / options_.num_heads; }
    /// The fused q, k, v projection (in_proj_weight, in_proj_bias).
    Linear<Scalar>& in_proj() { return in_proj_; }
    /// The output projection (out_proj).
    Linear<Scalar>& out_proj() { return out_proj_; }

    /// "SelfAttention(E=16, H=2, causal, rotary)": the owner a training forward writes into
    /// its Context and backward expects there.
    std::string signature() const override {
        return "SelfAttention(E=" + std::to_string(options_.embed_dim) + ", H=" + std::to_string(options_.num_heads) +
               (options_.causal ? ", causal" : ", full") + (options_.rotary ? ", rotary)" : ")");
    }

    /// nn.MultiheadAttention's state_dict order.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        out.push_back({prefix + "in_proj_weight", &in_proj_.weight});
        if (in_proj_.has_bias()) out.push_back({prefix + "in_proj_bias", &in_proj_.bias});
        out_proj_.collect_parameters(prefix + "out_proj.", out);
    }

    /// What a training forward keeps for backward.
    struct Saved {
        Matrix<Scalar> input;     ///< x (B*T, E)
        Matrix<Scalar> qkv;       ///< [q | k | v] (B*T, 3E), after RoPE
        Matrix<Scalar> attn;      ///< the heads' outputs, concatenated (B*T, E)
        Matrix<Scalar> lse;       ///< each query's log-sum-exp of scores (B*T, H)
        Matrix<Scalar> k;         ///< with a cache: every key the chunk attended to, (B*Tk, E)
        Matrix<Scalar> v;         ///< with a cache: every value the chunk attended to, (B*Tk, E)
        bool cached = false;      ///< whether the forward ran on a KV cache
        Index position = 0;       ///< the cache's fill level before the chunk
        Index initial_capacity = 0;  ///< the cache's rows per stream before the forward
        Index capacity = 0;          ///< and after it (it may have grown)
    };

protected:
    /// An empty KV cache of options.max_cache_length positions for `batch` streams, with the
    /// workspace of step(): {qkv (B, 3E), attention (B, E), RoPE table (2, Dh/2), attention
    /// scratch (1, n)}.
    State<Scalar> make_state(Index batch) const override {
        State<Scalar> s = empty_cache(batch, options_.max_cache_length);
        make_workspace(s, batch);
        return s;
    }

    /// Two (B*L, E) tensors for some L >= 1, the fill level within [0, L]; a step needs a
    /// causal layer and one free row.
    void validate_state(const State<Scalar>& s, Index B, Call call) const override {
        const Index E = options_.embed_dim;
        if (call == Call::Step && !options_.causal)
            fail(this->where(call), "a non-causal layer has no step(): each output depends on the future");
        if (s.tensors.size() != 2 || !s.children.empty())
            fail(this->where(call), "the state has " + std::to_string(s.tensors.size()) +
                                        " tensors, expected 2 (K and V caches)");
        const Index rows = s.tensors[0].rows();
        if (rows == 0 || rows % B != 0 || s.tensors[0].cols() != E || s.tensors[1].rows() != rows ||
            s.tensors[1].cols() != E)
            fail(this->where(call), "KV cache tensors " + shape_string(s.tensors[0]) + " and " +
                                        shape_string(s.tensors[1]) + " do not hold (B*L, E) rows for B=" +
                                        std::to_string(B) + ", E=" + std::to_string(E));
        if (s.position < 0 || s.position > rows / B)
            fail(this->where(call), "cache position " + std::to_string(s.position) + " is outside [0, " +
                                        std::to_string(rows / B) + "]");
        if (call == Call::Step && s.position >= rows / B)
            fail(this->where(call), "the KV cache is full: it holds " + std::to_string(s.position) + " of " +
                                        std::to_string(rows / B) + " positions per stream (state tensors " +
                                        shape_string(s.tensors[0]) + " for B=" + std::to_string(B) +
                                        "); make the state with a larger max_cache_length, or reserve()");
    }

    /// Grows the cache to `length` positions per stream, keeping what it holds.
    void reserve_impl(State<Scalar>& s, Index length) const override {
        if (length > capacity(s, s.batch)) grow_cache(s, s.batch, length);
    }

    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        const Index B = x.batch, T = x.steps, E = options_.embed_dim, H = options_.num_heads, Dh = head_dim();

        // The cache: none (state == nullptr), or the caller's, grown if the chunk does not fit.
        this->refuse_padded_state(x, state);
        const bool cached = state != nullptr;
        Index pos0 = 0, initial_capacity = 0;
        if (cached) {
            initial_capacity = capacity(*state, B);
            pos0 = state->position;
            if (!options_.causal && pos0 > 0)
                fail(this->where(Call::Forward), "a non-causal layer cannot continue from a KV cache (position " +
                                                     std::to_string(pos0) + "): its earlier outputs would depend on this chunk");
            if (pos0 + T > capacity(*state, B)) grow_cache(*state, B, std::max(options_.max_cache_length, pos0 + T));
        }
        const Index Tk = pos0 + T, N = B * T;

        // qkv and the heads' outputs go to the context's buffers in training mode (reused
        // when the caller reuses its Context), otherwise to this thread's scratch, so that the
        // forward allocates only its output.
        Saved* saved = ctx ? &keep_for_backward<Saved>(*ctx) : nullptr;
        if (saved) parallel_copy<Scalar>(saved->input, x.data);
        MatrixRef<Scalar> qkv = saved ? MatrixRef<Scalar>(resized(saved->qkv, N, 3 * E))
                                      : MatrixRef<Scalar>(scratch_matrix<Scalar>(ScratchSlot::A, N, 3 * E));
        in_proj_.forward(x.data, qkv);  // (B*T, E) x (E, 3E) -> (B*T, 3E): [q | k | v]
        if (options_.rotary) {
            Matrix<Scalar> table;
            rope_table(Dh, pos0, T, options_.rope_base, table);
            rope_apply<Scalar>(qkv.leftCols(E), T, H, table);
            rope_apply<Scalar>(qkv.middleCols(E, E), T, H, table);
        }
        const Index L = cached ? capacity(*state, B) : T;
        if (cached)
            for (Index b = 0; b < B; ++b) {
                state->tensors[0].middleRows(b * L + pos0, T) = qkv.middleCols(E, E).middleRows(b * T, T);
                state->tensors[1].middleRows(b * L + pos0, T) = qkv.rightCols(E).middleRows(b * T, T);
            }

        const AttentionShape shape = attention_shape(B, T, Tk, L, pos0);
        MatrixRef<Scalar> attn = saved ? MatrixRef<Scalar>(resized(saved->attn, N, E))
                                       : MatrixRef<Scalar>(scratch_matrix<Scalar>(ScratchSlot::B, N, E));
        Matrix<Scalar>* lse = saved ? &resized(saved->lse, N, H) : nullptr;  // (B*T, H), kept for backward
        if (cached)
            attention_forward<Scalar>(shape, attention_options(), qkv.leftCols(E), state->tensors[0],
                                      state->tensors[1], attn, lse);
        else  // a padded batch: no query sees a key past its sequence's end
            attention_forward<Scalar>(shape, attention_options(), qkv.leftCols(E), qkv.middleCols(E, E),
                                      qkv.rightCols(E), attn, lse, x.lengths);
        Sequence<Scalar> y(reused_matrix<Scalar>(N, E), B, T);
        out_proj_.forward(attn, y.data);  // (B*T, E) x (E, E)

        if (saved) {
            if (cached) {  // the keys and values the chunk attended to: (B*Tk, E) each
                Matrix<Scalar>&k = resized(saved->k, B * Tk, E), &v = resized(saved->v, B * Tk, E);
                for (Index b = 0; b < B; ++b) {
                    k.middleRows(b * Tk, Tk) = state->tensors[0].middleRows(b * L, Tk);
                    v.middleRows(b * Tk, Tk) = state->tensors[1].middleRows(b * L, Tk);
                }
            }
            saved->cached = cached;
            saved->position = pos0;
            saved->initial_capacity = initial_capacity;
            saved->capacity = L;
        }
        return y;
    }

    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                   const State<Scalar>* d_final, State<Scalar>* d_initial) override {
        const Index B = ctx.batch, T = ctx.steps, E = options_.embed_dim, H = options_.num_heads, Dh = head_dim();
        const Saved& saved = saved_for_backward<Saved>(ctx);
        const bool cached = saved.cached;
        const Index pos0 = saved.position, L0 = saved.initial_capacity, L = saved.capacity;
        const Index Tk = pos0 + T, N = B * T;
        const bool has_d_final = cached && d_final;
        if (has_d_final)
            for (const auto& t : d_final->tensors) check_matrix(this->where(Call::Backward), "d_final tensor", t, B * L, E);

        // The intermediates go to this thread's scratch: A holds d_attn, B d_qkv.
        MatrixRef<Scalar> d_attn = scratch_matrix<Scalar>(ScratchSlot::A, N, E);
        out_proj_.backward(saved.attn, dy.data, d_attn);  // (B*T, E) x (E, E)
        const Matrix<Scalar>& qkv = saved.qkv;
        MatrixRef<Scalar> d_qkv = scratch_matrix<Scalar>(ScratchSlot::B, N, 3 * E);  // (B*T, 3E): [dq | dk | dv]
        const AttentionShape shape = attention_shape(B, T, Tk, cached ? Tk : T, pos0);
        Matrix<Scalar> dk, dv;  // cached: (B*Tk, E), over every key the chunk attended to
        if (cached) {
            dk.resize(B * Tk, E);
            dv.resize(B * Tk, E);
            attention_backward<Scalar>(shape, attention_options(), qkv.leftCols(E), saved.k, saved.v, saved.attn,
                                       saved.lse, d_attn, d_qkv.leftCols(E), dk, dv);
            for (Index b = 0; b < B; ++b) {
                if (has_d_final) {  // the final cache holds these keys and values unchanged
                    dk.middleRows(b * Tk, Tk) += d_final->tensors[0].middleRows(b * L, Tk);
                    dv.middleRows(b * Tk, Tk) += d_final->tensors[1].middleRows(b * L, Tk);
                }
                d_qkv.middleCols(E, E).middleRows(b * T, T) = dk.middleRows(b * Tk + pos0, T);
                d_qkv.rightCols(E).middleRows(b * T, T) = dv.middleRows(b * Tk + pos0, T);
            }
        } else {
            attention_backward<Scalar>(shape, attention_options(), qkv.leftCols(E), qkv.middleCols(E, E),
                                       qkv.rightCols(E), saved.attn, saved.lse, d_attn, d_qkv.leftCols(E),
                                       d_qkv.middleCols(E, E), d_qkv.rightCols(E), ctx.lengths);
        }
        if (options_.rotary) {  // back through the rotation of q and k
            Matrix<Scalar> table;
            rope_table(Dh, pos0, T, options_.rope_base, table);
            rope_apply<Scalar>(d_qkv.leftCols(E), T, H, table, /*inverse=*/true);
            rope_apply<Scalar>(d_qkv.middleCols(E, E), T, H, table, /*inverse=*/true);
        }
        Sequence<Scalar> dx(reused_matrix<Scalar>(N, E), B, T);
        in_proj_.backward(saved.input, d_qkv, dx.data);  // (B*T, 3E) x (3E, E)

        if (d_initial && cached) {  // dL/d(initial cache), rows as the comment at the top says
            *d_initial = empty_cache(B, L0);
            d_initial->position = pos0;
            for (Index b = 0; b < B; ++b)
                for (int c = 0; c < 2; ++c) {
                    Matrix<Scalar>& d = d_initial->tensors[c];
                    d.middleRows(b * L0, pos0) = (c == 0 ? dk : dv).middleRows(b * Tk, pos0);
                    if (has_d_final && L0 > Tk)
                        d.middleRows(b * L0 + Tk, L0 - Tk) = d_final->tensors[c].middleRows(b * L + Tk, L0 - Tk);
                }
        }
        return dx;
    }

    /// One position for B streams: appends its key and value to the cache and attends to
    /// every cached position. No heap allocation once the state has its workspace.
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        const Index E = options_.embed_dim, H = options_.num_heads, Dh = head_dim();
        const Index B = x.rows();
        const Index L = capacity(state, B), pos = state.position;
        if (!workspace_fits(state, B)) make_workspace(state, B);  // a state from forward: once

        auto& ws = state.workspace;
        Matrix<Scalar>&qkv = ws[0], &attn = ws[1];
        in_proj_.forward(x, qkv);  // (B, E) x (E, 3E)
        if (options_.rotary) {
            rope_table(Dh, pos, 1, options_.rope_base, ws[2]);
            rope_apply<Scalar>(qkv.leftCols(E), 1, H, ws[2]);
            rope_apply<Scalar>(qkv.middleCols(E, E), 1, H, ws[2]);
        }
        for (Index b = 0; b < B; ++b) {
            state.tensors[0].row(b * L + pos) = qkv.row(b).segment(E, E);
            state.tensors[1].row(b * L + pos) = qkv.row(b).segment(2 * E, E);
        }
        attention_forward<Scalar>(attention_shape(B, 1, pos + 1, L, pos), attention_options(), qkv.leftCols(E),
                                  state.tensors[0], state.tensors[1], attn, nullptr, {},
                                  std::span<Scalar>(ws[3].data(), static_cast<std::size_t>(ws[3].size())));
        out_proj_.forward(attn, y);  // (B, E) x (E, E)
    }

private:
    AttentionShape attention_shape(Index B, Index Tq, Index Tk, Index capacity, Index q_offset) const {
        return {.batch = B, .heads = options_.num_heads, .head_dim = head_dim(), .q_steps = Tq, .kv_steps = Tk,
                .kv_capacity = capacity, .q_offset = q_offset};
    }
    AttentionOptions attention_options() const { return {.causal = options_.causal}; }

    State<Scalar> empty_cache(Index B, Index L) const {
        const std::string where = this->kind() + " KV cache";
        checked_elements(where, checked_mul(where, B, L), options_.embed_dim);  // before anything is allocated
        State<Scalar> s;
        s.batch = B;
        s.tensors = {Matrix<Scalar>::Zero(B * L, options_.embed_dim), Matrix<Scalar>::Zero(B * L, options_.embed_dim)};
        return s;
    }

    static Index capacity(const State<Scalar>& s, Index B) { return s.tensors[0].rows() / B; }

    // Copies the cache into one of `L` rows per stream (forward and reserve; step never grows it).
    void grow_cache(State<Scalar>& s, Index B, Index L) const {
        const Index old = capacity(s, B), n = s.position;
        State<Scalar> grown = empty_cache(B, L);
        for (int c = 0; c < 2; ++c)
            for (Index b = 0; b < B; ++b) grown.tensors[c].middleRows(b * L, n) = s.tensors[c].middleRows(b * old, n);
        s.tensors = std::move(grown.tensors);
        s.workspace.clear();  // sized for the old capacity; step remakes it
    }

    void make_workspace(State<Scalar>& s, Index B) const {
        const Index E = options_.embed_dim, L = capacity(s, B);
        const Index scratch =
            attention_workspace_size(attention_shape(B, 1, L, L, L - 1), attention_options(), num_threads());
        s.workspace = {Matrix<Scalar>(B, 3 * E), Matrix<Scalar>(B, E),
                       Matrix<Scalar>(2, std::max<Index>(1, head_dim() / 2)), Matrix<Scalar>(1, scratch)};
    }

    bool workspace_fits(const State<Scalar>& s, Index B) const {
        const Index L = capacity(s, B);
        return s.workspace.size() == 4 && s.workspace[0].rows() == B &&
               s.workspace[3].size() >= attention_workspace_size(attention_shape(B, 1, L, L, L - 1),
                                                                 attention_options(), 1);
    }

    SelfAttentionOptions options_;
    Linear<Scalar> in_proj_;   // (3E, E)
    Linear<Scalar> out_proj_;  // (E, E)
};

}  // namespace seqnn
