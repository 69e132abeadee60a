// A pre-norm Transformer encoder block with a causal mask, PyTorch's
//   nn.TransformerEncoderLayer(d_model=E, nhead=H, dim_feedforward=F, dropout=0,
//                              activation="gelu", batch_first=True, norm_first=True)
// called with is_causal / a causal src_mask, with the same parameter names and shapes:
//
//   h = x + out_proj(attention(split_heads(norm1(x) W_in^T + b_in)))      self-attention
//   y = h + linear2(gelu(linear1(norm2(h))))                              feed-forward
//
//   self_attn.in_proj_weight (3E, E), self_attn.in_proj_bias (3E)   rows [W_q; W_k; W_v]
//   self_attn.out_proj.weight (E, E), self_attn.out_proj.bias (E)
//   linear1.weight (F, E), linear1.bias (F), linear2.weight (E, F), linear2.bias (E)
//   norm1.weight/bias (E), norm2.weight/bias (E)
// GELU is the exact erf form (PyTorch's default). Head h is columns [h*Dh, (h+1)*Dh) of
// q, k and v, Dh = E / H, scores scaled by 1/sqrt(Dh), as in nn.MultiheadAttention.
// Optionally (not in PyTorch's layer) rotary embeddings (kernels/rope.hpp) rotate q and k.
//
// The state is a KV cache: tensors {K (B*L, E), V (B*L, E)}, row b*L + t holding the key
// (after RoPE) and value of position t of stream b, and State::position its fill level.
// - initial_state(B) makes an empty cache of L = options.max_cache_length rows per stream,
//   with the workspace step() needs; step() appends one position and never allocates; it
//   throws shape_error when the cache is full.
// - forward(x, nullptr) runs whole sequences and keeps no cache (training).
// - forward(x, &state) with an empty state makes a cache of max(max_cache_length, T) rows
//   per stream; with a filled one it continues from it: the chunk's queries attend to the
//   cached positions and to their own past (chunked == whole). If the chunk does not fit,
//   forward grows the cache to max(max_cache_length, position + T) rows. Either way the
//   state holds the filled cache on return, ready for step().
// - backward: the cache is differentiable like any state. d_final (optional) is dL/d(final
//   K, V cache); d_initial, when the forward started from a non-empty cache, receives
//   dL/d(initial cache): rows of cached positions get their attention gradient (plus
//   d_final's), rows the chunk overwrote get 0 and rows past the chunk get d_final's
//   (they are copied unchanged). With no initial cache, d_initial is an empty state.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/scratch.hpp"
#include "seqnn/core/threading.hpp"
#include "seqnn/kernels/attention.hpp"
#include "seqnn/kernels/rope.hpp"
#include "seqnn/nn/activations.hpp"
#include "seqnn/nn/layer_norm.hpp"
#include "seqnn/nn/linear.hpp"

#include <cmath>
#include <span>
#include <string>

namespace seqnn {

/// The sizes and choices of a TransformerBlock.
struct TransformerOptions {
    Index d_model = 0;               ///< E
    Index num_heads = 1;             ///< H; E must be divisible by H
    Index dim_feedforward = 0;       ///< F; 0 means 4E
    bool causal = true;              ///< the causal mask (a decoder block); false: full attention, no step()
    bool rotary = false;             ///< rotate q and k with RoPE (positions offset by the cache's fill level)
    /// RoPE's base (theta).
    double rope_base = 10000.0;
    Index max_cache_length = 1024;   ///< KV-cache rows per stream that initial_state makes
    /// LayerNorm's epsilon.
    double layer_norm_eps = 1e-5;
    bool bias = true;                ///< biases of the projections and the norms, as PyTorch's `bias`
};

/// A pre-norm causal Transformer block, PyTorch's nn.TransformerEncoderLayer(norm_first=True).
template <typename Scalar>
class TransformerBlock : public Layer<Scalar> {
public:
    /// A block with weights drawn as PyTorch draws them.
    TransformerBlock(TransformerOptions options, Rng& rng) : options_(options) {
        const std::string k = "TransformerBlock";
        const Index E = options.d_model, H = options.num_heads;
        if (E <= 0 || H <= 0)
            fail(k, "d_model and num_heads must be positive, got E=" + std::to_string(E) + ", H=" + std::to_string(H));
        if (E % H != 0)
            fail(k, "d_model E=" + std::to_string(E) + " is not divisible by num_heads H=" + std::to_string(H));
        if (options.dim_feedforward < 0)
            fail(k, "dim_feedforward must be >= 0, got " + std::to_string(options.dim_feedforward));
        if (options.max_cache_length <= 0)
            fail(k, "max_cache_length must be positive, got " + std::to_string(options.max_cache_length));
        // The weights' sizes, checked before anything is allocated: (3E, E), (F, E), (E, F).
        checked_elements(k + " in_proj_weight", checked_mul(k, 3, E), E);
        checked_elements(k + " linear1.weight", options.dim_feedforward > 0 ? options.dim_feedforward : checked_mul(k, 4, E), E);
        if (!(options.rope_base > 0) || !std::isfinite(options.rope_base))
            fail(k, "rope_base must be a finite number > 0, got " + number_text(options.rope_base));
        if (!(options.layer_norm_eps >= 0) || !std::isfinite(options.layer_norm_eps))
            fail(k, "layer_norm_eps must be a finite number >= 0, got " + number_text(options.layer_norm_eps));
        if (options.rotary && (E / H) % 2 != 0)
            fail(k, "rotary embeddings need an even head size, got Dh=E/H=" + std::to_string(E / H));
        ffn_ = options.dim_feedforward > 0 ? options.dim_feedforward : 4 * E;

        // PyTorch's initialisation: in_proj_weight xavier_uniform, in_proj_bias and
        // out_proj.bias zero; out_proj.weight, linear1, linear2 nn.Linear's default.
        in_proj_ = Linear<Scalar>(E, 3 * E, options.bias, rng);
        in_proj_.weight.init_uniform(static_cast<Scalar>(std::sqrt(6.0 / double(E + 3 * E))), rng);
        out_proj_ = Linear<Scalar>(E, E, options.bias, rng);
        if (options.bias) {
            in_proj_.bias.value.setZero();
            out_proj_.bias.value.setZero();
        }
        linear1_ = Linear<Scalar>(E, ffn_, options.bias, rng);
        linear2_ = Linear<Scalar>(ffn_, E, options.bias, rng);
        const auto eps = static_cast<Scalar>(options.layer_norm_eps);
        norm1_ = LayerNorm<Scalar>(E, eps, true, options.bias);
        norm2_ = LayerNorm<Scalar>(E, eps, true, options.bias);
    }

    std::string kind() const override { return "TransformerBlock"; }
    Index input_size() const override { return options_.d_model; }
    Index output_size() const override { return options_.d_model; }
    /// The options it was made with.
    const TransformerOptions& options() const { return options_; }
    /// Attention heads.
    Index num_heads() const { return options_.num_heads; }
    /// Dh = d_model / heads.
    Index head_dim() const { return options_.d_model / options_.num_heads; }
    /// The MLP's hidden width.
    Index dim_feedforward() const { return ffn_; }

    /// The fused q, k, v projection (self_attn.in_proj_weight).
    Linear<Scalar>& in_proj() { return in_proj_; }
    /// The attention's output projection.
    Linear<Scalar>& out_proj() { return out_proj_; }
    /// The MLP's first layer.
    Linear<Scalar>& linear1() { return linear1_; }
    /// The MLP's second layer.
    Linear<Scalar>& linear2() { return linear2_; }
    /// The norm before attention.
    LayerNorm<Scalar>& norm1() { return norm1_; }
    /// The norm before the MLP.
    LayerNorm<Scalar>& norm2() { return norm2_; }

    /// The block's sizes and options, e.g. "TransformerBlock(E=16, H=2, F=64, causal, rotary)":
    /// the owner a training forward writes into its Context and backward expects there.
    std::string signature() const override {
        return "TransformerBlock(E=" + std::to_string(options_.d_model) + ", H=" + std::to_string(options_.num_heads) +
               ", F=" + std::to_string(ffn_) + (options_.causal ? ", causal" : ", full") +
               (options_.rotary ? ", rotary)" : ")");
    }

    /// PyTorch's state_dict order of nn.TransformerEncoderLayer.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        out.push_back({prefix + "self_attn.in_proj_weight", &in_proj_.weight});
        if (in_proj_.has_bias()) out.push_back({prefix + "self_attn.in_proj_bias", &in_proj_.bias});
        out_proj_.collect_parameters(prefix + "self_attn.out_proj.", out);
        linear1_.collect_parameters(prefix + "linear1.", out);
        linear2_.collect_parameters(prefix + "linear2.", out);
        norm1_.collect_parameters(prefix + "norm1.", out);
        norm2_.collect_parameters(prefix + "norm2.", out);
    }

    /// Grows the KV cache `s` (for B streams) to hold at least `length` positions per stream,
    /// keeping what it holds; does nothing if it already does. step() never grows a cache,
    /// so a caller that knows how far it will step reserves that much first.
    void reserve_cache(State<Scalar>& s, Index B, Index length) const {
        this->check_state(s, B, Call::Forward);
        if (length > capacity(s, B)) grow_cache(s, B, length);
    }

    /// What a training forward keeps for backward.
    struct Saved {
        Matrix<Scalar> input;               ///< x (B*T, E)
        Matrix<Scalar> ln1, qkv, attn, lse;  ///< norm1(x) (B*T, E), [q | k | v] (B*T, 3E), attention (B*T, E), its log-sum-exp (B*T, H)
        Matrix<Scalar> h, ln2, pre, act;     ///< x + attention branch (B*T, E), norm2(h), linear1 (B*T, F), its GELU
        Matrix<Scalar> k, v;                 ///< with a cache: every key and value the chunk attended to, (B*Tk, E)
        bool cached = false;                 ///< whether the forward ran on a KV cache
        Index position = 0;                  ///< the cache's fill level before the chunk
        Index initial_capacity = 0;          ///< the cache's rows per stream before the forward
        Index capacity = 0;                  ///< and after it (it may have grown)
    };

protected:
    /// An empty KV cache of options.max_cache_length positions for `batch` streams, with the
    /// workspace of step(): {norm (B, E), qkv (B, 3E), attention (B, E), h (B, E),
    /// hidden (B, F), RoPE table (2, Dh/2), attention scratch (1, n)}.
    State<Scalar> make_state(Index batch) const override {
        State<Scalar> s = empty_cache(batch, options_.max_cache_length);
        make_workspace(s, batch);
        return s;
    }

    /// Two (B*L, E) tensors for some L >= 1, the fill level within [0, L]; a step needs one free row.
    void validate_state(const State<Scalar>& s, Index B, Call call) const override {
        const Index E = options_.d_model;
        if (call == Call::Step && !options_.causal)
            fail(this->where(call), "a non-causal block has no step(): each output depends on the future");
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
                                        "); make the state with a larger max_cache_length");
    }

    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        const Index B = x.batch, T = x.steps, E = options_.d_model, H = options_.num_heads, Dh = head_dim();

        // The cache: none (state == nullptr), a new one, or the caller's, grown if needed.
        const bool cached = state != nullptr;
        Index pos0 = 0, initial_capacity = 0;
        if (cached) {
            initial_capacity = capacity(*state, B);
            pos0 = state->position;
            if (!options_.causal && pos0 > 0)
                fail(this->where(Call::Forward), "a non-causal block cannot continue from a KV cache (position " + std::to_string(pos0) +
                                "): its earlier outputs would depend on this chunk");
            if (pos0 + T > capacity(*state, B)) grow_cache(*state, B, std::max(options_.max_cache_length, pos0 + T));
        }
        const Index Tk = pos0 + T;

        // Every intermediate goes to a buffer that is not allocated again: in training mode
        // the context's own (kept for backward, reused when the caller reuses its Context),
        // otherwise this thread's scratch, so that the forward allocates only its output.
        // Without a context the scratch slots are recycled as their contents die:
        //   A: ln1, then h;  B: qkv, then pre = act;  C: attn, then ln2.
        const Index N = B * T, F = ffn_;
        Saved* saved = ctx ? &keep_for_backward<Saved>(*ctx) : nullptr;
        const auto buffer = [&](Matrix<Scalar> Saved::*member, ScratchSlot slot, Index cols) -> MatrixRef<Scalar> {
            if (saved) return resized(saved->*member, N, cols);
            return scratch_matrix<Scalar>(slot, N, cols);
        };
        if (saved) parallel_copy<Scalar>(saved->input, x.data);

        MatrixRef<Scalar> ln1 = buffer(&Saved::ln1, ScratchSlot::A, E);
        norm1_.forward(x.data, ln1);  // (B*T, E)
        MatrixRef<Scalar> qkv = buffer(&Saved::qkv, ScratchSlot::B, 3 * E);
        in_proj_.forward(ln1, qkv);  // (B*T, E) x (E, 3E) -> (B*T, 3E): [q | k | v]
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
        MatrixRef<Scalar> attn = buffer(&Saved::attn, ScratchSlot::C, E);  // (B*T, E)
        Matrix<Scalar>* lse = saved ? &resized(saved->lse, N, H) : nullptr;  // (B*T, H), kept for backward
        if (cached)
            attention_forward<Scalar>(shape, attention_options(), qkv.leftCols(E), state->tensors[0],
                                      state->tensors[1], attn, lse);
        else
            attention_forward<Scalar>(shape, attention_options(), qkv.leftCols(E), qkv.middleCols(E, E),
                                      qkv.rightCols(E), attn, lse);

        MatrixRef<Scalar> h = buffer(&Saved::h, ScratchSlot::A, E);
        out_proj_.forward(attn, h);  // (B*T, E) x (E, E)
        parallel_add<Scalar>(h, x.data);  // residual
        MatrixRef<Scalar> ln2 = buffer(&Saved::ln2, ScratchSlot::C, E);
        norm2_.forward(h, ln2);  // (B*T, E)
        MatrixRef<Scalar> pre = buffer(&Saved::pre, ScratchSlot::B, F);
        linear1_.forward(ln2, pre);  // (B*T, E) x (E, F) -> (B*T, F)
        // GELU in place, except in training mode, where backward needs both pre and act.
        MatrixRef<Scalar> act = saved ? MatrixRef<Scalar>(resized(saved->act, N, F)) : pre;
        if (saved) act = pre;  // a copy: act is the context's own buffer
        activation_forward<Scalar>(Activation::GELU, act);
        Sequence<Scalar> y(B, T, E);
        linear2_.forward(act, y.data);  // (B*T, F) x (F, E) -> (B*T, E)
        parallel_add<Scalar>(y.data, h);  // residual

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
        const Index B = ctx.batch, T = ctx.steps, E = options_.d_model, H = options_.num_heads, Dh = head_dim();
        const Saved& saved = saved_for_backward<Saved>(ctx);
        const Matrix<Scalar>& x = saved.input;
        const bool cached = saved.cached;
        const Index pos0 = saved.position, L0 = saved.initial_capacity, L = saved.capacity;
        const Index Tk = pos0 + T;
        const bool has_d_final = cached && d_final;
        if (has_d_final)
            for (const auto& t : d_final->tensors) check_matrix(this->where(Call::Backward), "d_final tensor", t, B * L, E);

        // The intermediates go to this thread's scratch, as the forward's do without a
        // context, so that a training step does not allocate (and page-fault in) them anew;
        // the slots are recycled as their contents die:
        //   A: d_act, then d_attn, then d_ln1;  B: d_ln2, then d_qkv;  C: dh.
        const Index N = B * T, F = ffn_;

        // Feed-forward branch, in reverse: y = h + linear2(gelu(linear1(norm2(h)))).
        MatrixRef<Scalar> d_act = scratch_matrix<Scalar>(ScratchSlot::A, N, F);
        linear2_.backward(saved.act, dy.data, d_act);  // (B*T, E) x (E, F) -> (B*T, F)
        activation_backward<Scalar>(Activation::GELU, saved.pre, saved.act, d_act);  // d_pre, in place
        MatrixRef<Scalar> d_ln2 = scratch_matrix<Scalar>(ScratchSlot::B, N, E);
        linear1_.backward(saved.ln2, d_act, d_ln2);  // (B*T, F) x (F, E)
        MatrixRef<Scalar> dh = scratch_matrix<Scalar>(ScratchSlot::C, N, E);
        norm2_.backward(saved.h, d_ln2, dh);  // (B*T, E)
        parallel_add<Scalar>(dh, dy.data);         // residual

        // Attention branch: h = x + out_proj(attention(q, k, v)).
        MatrixRef<Scalar> d_attn = scratch_matrix<Scalar>(ScratchSlot::A, N, E);
        out_proj_.backward(saved.attn, dh, d_attn);  // (B*T, E) x (E, E)
        const Matrix<Scalar>& qkv = saved.qkv;
        MatrixRef<Scalar> d_qkv = scratch_matrix<Scalar>(ScratchSlot::B, N, 3 * E);  // (B*T, 3E): [dq | dk | dv]
        const AttentionShape shape = attention_shape(B, T, Tk, cached ? Tk : T, pos0);
        Matrix<Scalar> dk, dv;  // cached: (B*Tk, E), over every key the chunk attended to
        if (cached) {
            const Matrix<Scalar>&k = saved.k, &v = saved.v;
            dk.resize(B * Tk, E);
            dv.resize(B * Tk, E);
            attention_backward<Scalar>(shape, attention_options(), qkv.leftCols(E), k, v, saved.attn,
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
                                       d_qkv.middleCols(E, E), d_qkv.rightCols(E));
        }
        if (options_.rotary) {  // back through the rotation of q and k
            Matrix<Scalar> table;
            rope_table(Dh, pos0, T, options_.rope_base, table);
            rope_apply<Scalar>(d_qkv.leftCols(E), T, H, table, /*inverse=*/true);
            rope_apply<Scalar>(d_qkv.middleCols(E, E), T, H, table, /*inverse=*/true);
        }
        MatrixRef<Scalar> d_ln1 = scratch_matrix<Scalar>(ScratchSlot::A, N, E);
        in_proj_.backward(saved.ln1, d_qkv, d_ln1);  // (B*T, 3E) x (3E, E)
        Matrix<Scalar> dx(N, E);
        norm1_.backward(x, d_ln1, dx);  // (B*T, E)
        parallel_add<Scalar>(dx, dh);   // residual

        if (d_initial) {
            *d_initial = State<Scalar>();
            if (cached && L0 > 0) {  // dL/d(initial cache), rows as the doc comment at the top says
                *d_initial = empty_cache(B, L0);
                d_initial->position = pos0;
                for (Index b = 0; b < B; ++b) {
                    for (int c = 0; c < 2; ++c) {
                        Matrix<Scalar>& d = d_initial->tensors[c];
                        d.middleRows(b * L0, pos0) = (c == 0 ? dk : dv).middleRows(b * Tk, pos0);
                        if (has_d_final && L0 > Tk)
                            d.middleRows(b * L0 + Tk, L0 - Tk) = d_final->tensors[c].middleRows(b * L + Tk, L0 - Tk);
                    }
                }
            }
        }
        return Sequence<Scalar>(std::move(dx), B, T);
    }

    /// One position for B streams: appends its key and value to the cache and attends to
    /// every cached position. No heap allocation once the state has its workspace.
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        const Index E = options_.d_model, H = options_.num_heads, Dh = head_dim();
        if (!options_.causal)
            fail(this->where(Call::Step), "a non-causal block has no step(): each output depends on the future");
        const Index B = x.rows();
        const Index L = capacity(state, B), pos = state.position;
        if (!workspace_fits(state, B)) make_workspace(state, B);  // a state from forward: once

        auto& ws = state.workspace;
        Matrix<Scalar>&norm = ws[0], &qkv = ws[1], &attn = ws[2], &h = ws[3], &hidden = ws[4];
        norm1_.forward(x, norm);    // (B, E)
        in_proj_.forward(norm, qkv);  // (B, E) x (E, 3E)
        if (options_.rotary) {
            rope_table(Dh, pos, 1, options_.rope_base, ws[5]);
            rope_apply<Scalar>(qkv.leftCols(E), 1, H, ws[5]);
            rope_apply<Scalar>(qkv.middleCols(E, E), 1, H, ws[5]);
        }
        for (Index b = 0; b < B; ++b) {
            state.tensors[0].row(b * L + pos) = qkv.row(b).segment(E, E);
            state.tensors[1].row(b * L + pos) = qkv.row(b).segment(2 * E, E);
        }
        attention_forward<Scalar>(attention_shape(B, 1, pos + 1, L, pos), attention_options(), qkv.leftCols(E),
                                  state.tensors[0], state.tensors[1], attn, nullptr, {},
                                  std::span<Scalar>(ws[6].data(), static_cast<std::size_t>(ws[6].size())));
        out_proj_.forward(attn, h);  // (B, E) x (E, E)
        h += x;                      // residual
        norm2_.forward(h, norm);
        linear1_.forward(norm, hidden);  // (B, E) x (E, F)
        activation_forward<Scalar>(Activation::GELU, hidden);  // the same GELU as forward
        linear2_.forward(hidden, y);  // (B, F) x (F, E)
        y += h;                       // residual
    }

private:
    AttentionShape attention_shape(Index B, Index Tq, Index Tk, Index capacity, Index q_offset) const {
        return {.batch = B, .heads = options_.num_heads, .head_dim = head_dim(), .q_steps = Tq, .kv_steps = Tk,
                .kv_capacity = capacity, .q_offset = q_offset};
    }
    AttentionOptions attention_options() const { return {.causal = options_.causal}; }

    State<Scalar> empty_cache(Index B, Index L) const {
        const std::string where = kind() + " KV cache";
        checked_elements(where, checked_mul(where, B, L), options_.d_model);  // before anything is allocated
        State<Scalar> s;
        s.batch = B;
        s.tensors = {Matrix<Scalar>::Zero(B * L, options_.d_model), Matrix<Scalar>::Zero(B * L, options_.d_model)};
        return s;
    }

    static Index capacity(const State<Scalar>& s, Index B) { return s.tensors[0].rows() / B; }

    // Copies the cache into one of `L` rows per stream (forward only; step never grows it).
    void grow_cache(State<Scalar>& s, Index B, Index L) const {
        const Index old = capacity(s, B), n = s.position;
        State<Scalar> grown = empty_cache(B, L);
        for (int c = 0; c < 2; ++c)
            for (Index b = 0; b < B; ++b) grown.tensors[c].middleRows(b * L, n) = s.tensors[c].middleRows(b * old, n);
        grown.position = n;
        s = std::move(grown);
    }

    void make_workspace(State<Scalar>& s, Index B) const {
        const Index E = options_.d_model, L = capacity(s, B);
        const Index scratch =
            attention_workspace_size(attention_shape(B, 1, L, L, L - 1), attention_options(), num_threads());
        s.workspace = {Matrix<Scalar>(B, E),    Matrix<Scalar>(B, 3 * E),          Matrix<Scalar>(B, E),
                       Matrix<Scalar>(B, E),    Matrix<Scalar>(B, ffn_),           Matrix<Scalar>(2, std::max<Index>(1, head_dim() / 2)),
                       Matrix<Scalar>(1, scratch)};
    }

    bool workspace_fits(const State<Scalar>& s, Index B) const {
        const Index L = capacity(s, B);
        return s.workspace.size() == 7 && s.workspace[0].rows() == B && s.workspace[4].cols() == ffn_ &&
               s.workspace[6].size() >= attention_workspace_size(attention_shape(B, 1, L, L, L - 1),
                                                                 attention_options(), 1);
    }

    TransformerOptions options_;
    Index ffn_ = 0;
    Linear<Scalar> in_proj_;   // (3E, E)
    Linear<Scalar> out_proj_;  // (E, E)
    Linear<Scalar> linear1_;   // (F, E)
    Linear<Scalar> linear2_;   // (E, F)
    LayerNorm<Scalar> norm1_, norm2_;
};

}  // namespace seqnn
