// The sequence mixer of a language-model block: one factory for every layer kind,
// so a model is the same code whatever mixes its time steps. A mixer maps D
// features to D features (the block adds it to the residual stream).
//
//   RNN, LSTM, GRU:    PyTorch's nn.RNN/LSTM/GRU(D, D, num_layers), names weight_ih_l0, ...
//   MinGRU, MinLSTM:   lucidrains' minGRU/minLSTM(D, expansion_factor), names
//                      to_hidden_and_gate.weight / to_hidden_and_f_i_gate.weight and
//                      to_out.weight (when expansion != 1), no biases, g activation.
//   Transformer:       causal multi-head SelfAttention (nn.MultiheadAttention's names:
//                      in_proj_weight, in_proj_bias, out_proj.*), rotary position
//                      embeddings on by default, state = its KV cache.
//
// Adding a kind is one enum value and one case here.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/layers/gru.hpp"
#include "seqnn/layers/lstm.hpp"
#include "seqnn/layers/mingru.hpp"
#include "seqnn/layers/minlstm.hpp"
#include "seqnn/layers/rnn.hpp"
#include "seqnn/layers/attention.hpp"

#include <memory>
#include <string>

namespace seqnn {

/// The sequence layers a block can mix with.
enum class MixerKind { RNN, LSTM, GRU, MinGRU, MinLSTM, Transformer };

/// The kind's name, e.g. "MinGRU".
inline std::string to_string(MixerKind kind) {
    switch (kind) {
        case MixerKind::RNN: return "RNN";
        case MixerKind::LSTM: return "LSTM";
        case MixerKind::GRU: return "GRU";
        case MixerKind::MinGRU: return "MinGRU";
        case MixerKind::MinLSTM: return "MinLSTM";
        case MixerKind::Transformer: return "Transformer";
    }
    return "unknown";
}

/// Which mixer a block uses, and its settings.
struct MixerOptions {
    /// The mixer.
    MixerKind kind = MixerKind::MinGRU;
    double expansion = 1.5;                   ///< MinGRU, MinLSTM: inner size D * expansion (lucidrains' default)
    MinRNNMode mode = MinRNNMode::Parallel;   ///< MinGRU, MinLSTM: how the scan runs
    Index num_layers = 1;                     ///< RNN, LSTM, GRU
    Index num_heads = 2;                      ///< Transformer: D must be divisible by it
    bool rotary = true;                       ///< Transformer: RoPE on q and k
    Index max_cache_length = 1024;            ///< Transformer: KV-cache rows per stream of initial_state
    bool causal = true;                       ///< Transformer: the causal mask (false: full attention, no step)
    double rope_base = 10000.0;               ///< Transformer: RoPE's base
    bool bias = true;                         ///< Transformer: in_proj_bias and out_proj.bias
};

/// A mixer of `dim` features to `dim` features.
template <typename Scalar>
std::unique_ptr<Layer<Scalar>> make_mixer(const MixerOptions& o, Index dim, Rng& rng) {
    if (dim <= 0) fail("make_mixer(" + to_string(o.kind) + ")", "dim must be positive, got " + std::to_string(dim));
    switch (o.kind) {
        case MixerKind::RNN:
            return std::make_unique<RNN<Scalar>>(
                RNNOptions{.input_size = dim, .hidden_size = dim, .num_layers = o.num_layers}, rng);
        case MixerKind::LSTM:
            return std::make_unique<LSTM<Scalar>>(
                RecurrentOptions{.input_size = dim, .hidden_size = dim, .num_layers = o.num_layers}, rng);
        case MixerKind::GRU:
            return std::make_unique<GRU<Scalar>>(
                RecurrentOptions{.input_size = dim, .hidden_size = dim, .num_layers = o.num_layers}, rng);
        case MixerKind::MinGRU:
            return std::make_unique<MinGRU<Scalar>>(
                MinRNNOptions{.input_size = dim, .expansion = o.expansion, .mode = o.mode}, rng);
        case MixerKind::MinLSTM:
            return std::make_unique<MinLSTM<Scalar>>(
                MinRNNOptions{.input_size = dim, .expansion = o.expansion, .mode = o.mode}, rng);
        case MixerKind::Transformer:
            return std::make_unique<SelfAttention<Scalar>>(
                SelfAttentionOptions{.embed_dim = dim,
                                     .num_heads = o.num_heads,
                                     .causal = o.causal,
                                     .rotary = o.rotary,
                                     .rope_base = o.rope_base,
                                     .max_cache_length = o.max_cache_length,
                                     .bias = o.bias},
                rng);
    }
    fail("make_mixer", "unknown mixer kind " + std::to_string(static_cast<int>(o.kind)));
}

}  // namespace seqnn
