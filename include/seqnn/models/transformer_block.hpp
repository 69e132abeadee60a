// A pre-norm Transformer encoder block with a causal mask, PyTorch's
//   nn.TransformerEncoderLayer(d_model=E, nhead=H, dim_feedforward=F, dropout=0,
//                              activation="gelu", batch_first=True, norm_first=True)
// called with is_causal / a causal src_mask, with the same parameter names and shapes:
//
//   h = x + self_attn(norm1(x))                      SelfAttention (layers/attention.hpp)
//   y = h + linear2(gelu(linear1(norm2(h))))         FeedForward (layers/feed_forward.hpp)
//
//   self_attn.in_proj_weight (3E, E), self_attn.in_proj_bias (3E)   rows [W_q; W_k; W_v]
//   self_attn.out_proj.weight (E, E), self_attn.out_proj.bias (E)
//   linear1.weight (F, E), linear1.bias (F), linear2.weight (E, F), linear2.bias (E)
//   norm1.weight/bias (E), norm2.weight/bias (E)
//
// It is a Block (block.hpp) with LayerNorms and self-attention as its mixer: its state is
// {the attention's state (a KV cache), the norm's}, as the block's own, and a step never
// allocates once the state exists. Optionally (not in PyTorch's layer) rotary embeddings
// rotate q and k.
#pragma once

#include "seqnn/layers/attention.hpp"
#include "seqnn/models/block.hpp"

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

/// The Block options of a TransformerBlock.
inline BlockOptions transformer_block_options(const TransformerOptions& o) {
    if (o.d_model <= 0 || o.num_heads <= 0)
        fail("TransformerBlock", "d_model and num_heads must be positive, got E=" + std::to_string(o.d_model) +
                                     ", H=" + std::to_string(o.num_heads));
    if (o.dim_feedforward < 0)
        fail("TransformerBlock", "dim_feedforward must be >= 0, got " + std::to_string(o.dim_feedforward));
    return {.dim = o.d_model,
            .mixer = {.kind = MixerKind::Transformer, .num_heads = o.num_heads, .rotary = o.rotary,
                      .max_cache_length = o.max_cache_length, .causal = o.causal, .rope_base = o.rope_base,
                      .bias = o.bias},
            .dim_feedforward = o.dim_feedforward > 0 ? o.dim_feedforward : checked_mul("TransformerBlock", 4, o.d_model),
            .mlp_bias = o.bias,
            .norm = BlockNorm::LayerNorm,
            .layer_norm_eps = o.layer_norm_eps,
            .layer_norm_bias = o.bias,
            .names = BlockNames::TransformerEncoderLayer};
}

/// A pre-norm causal Transformer block, PyTorch's nn.TransformerEncoderLayer(norm_first=True).
template <typename Scalar>
class TransformerBlock : public Block<Scalar> {
public:
    /// A block with weights drawn as PyTorch draws them.
    TransformerBlock(const TransformerOptions& options, Rng& rng)
        : Block<Scalar>(transformer_block_options(options), rng), options_(options) {}

    std::string kind() const override { return "TransformerBlock"; }
    /// The options it was made with.
    const TransformerOptions& options() const { return options_; }

    /// The attention's KV cache within a state of this block: {K (B*L, E), V (B*L, E)} and
    /// its fill level (the state's children are the attention branch's and the MLP
    /// branch's; the attention branch's first child is the attention's).
    static State<Scalar>& kv_cache(State<Scalar>& state) { return state.children.at(0).children.at(0); }
    /// The same, read-only.
    static const State<Scalar>& kv_cache(const State<Scalar>& state) { return state.children.at(0).children.at(0); }
    /// Attention heads.
    Index num_heads() const { return options_.num_heads; }
    /// Dh = d_model / heads.
    Index head_dim() const { return options_.d_model / options_.num_heads; }
    /// The MLP's hidden width.
    Index dim_feedforward() const { return this->feed_forward().hidden_size(); }

    /// The self-attention.
    SelfAttention<Scalar>& attention() { return static_cast<SelfAttention<Scalar>&>(this->mixer()); }
    /// The fused q, k, v projection (self_attn.in_proj_weight).
    Linear<Scalar>& in_proj() { return attention().in_proj(); }
    /// The attention's output projection.
    Linear<Scalar>& out_proj() { return attention().out_proj(); }
    /// The MLP's first layer.
    Linear<Scalar>& linear1() { return this->feed_forward().up(); }
    /// The MLP's second layer.
    Linear<Scalar>& linear2() { return this->feed_forward().down(); }
    /// The norm before attention.
    LayerNorm<Scalar>& norm1() { return static_cast<Rowwise<Scalar, LayerNorm<Scalar>>&>(Block<Scalar>::norm1()).block(); }
    /// The norm before the MLP.
    LayerNorm<Scalar>& norm2() { return static_cast<Rowwise<Scalar, LayerNorm<Scalar>>&>(Block<Scalar>::norm2()).block(); }

private:
    TransformerOptions options_;
};

}  // namespace seqnn
