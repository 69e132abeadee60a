// The one block every model is built from: pre-norm residual branches in a row,
//   h1 = x + conv(x)                  optional causal depthwise conv (the minGRU paper's)
//   h2 = h1 + drop(mixer(norm1(h1)))  any sequence mixer (mixer.hpp): RNN, LSTM, GRU,
//                                     minGRU, minLSTM or causal self-attention
//   y  = h2 + drop(mlp(norm2(h2)))    FeedForward: Linear(D, F) -> GELU -> Linear(F, D)
// With self-attention and LayerNorms it is PyTorch's
//   nn.TransformerEncoderLayer(norm_first=True, activation="gelu", batch_first=True);
// with a recurrent mixer and RMSNorms it is a block of lucidrains' minLM. A Block is a
// Sequential of Residuals, so its state, context, step and backward are theirs; the
// block adds only its parameter names, which follow one of the two:
//
//   BlockNames::MinLM (nn.ModuleList([conv, norm, mixer, ff_norm, ff])):
//     0.net.0.weight ... (conv)  1.weight (norm1)  2.<mixer's names>  3.weight (norm2)
//     4.0.weight, 4.0.bias, 4.2.weight, 4.2.bias (the MLP)
//   BlockNames::TransformerEncoderLayer, in its state_dict order:
//     self_attn.<mixer's names>  linear1.*  linear2.*  norm1.*  norm2.*
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/layers/causal_conv.hpp"
#include "seqnn/layers/feed_forward.hpp"
#include "seqnn/layers/rowwise.hpp"
#include "seqnn/models/mixer.hpp"
#include "seqnn/models/residual.hpp"
#include "seqnn/models/sequential.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

namespace seqnn {

/// The norm before each branch.
enum class BlockNorm {
    RMSNorm,    ///< torch.nn.RMSNorm(D), eps = the scalar's machine epsilon (minLM)
    LayerNorm,  ///< torch.nn.LayerNorm(D, eps, bias) (the Transformer)
};

/// Whose parameter names the block uses.
enum class BlockNames { MinLM, TransformerEncoderLayer };

/// The sizes and choices of a Block.
struct BlockOptions {
    Index dim = 0;                         ///< D
    MixerOptions mixer;                    ///< the sequence mixer and its options
    Index dim_feedforward = 0;             ///< F, the MLP's hidden width; 0 means D * ff_mult
    double ff_mult = 4.0;                  ///< F = D * ff_mult when dim_feedforward is 0
    bool mlp_bias = true;                  ///< the MLP's biases
    BlockNorm norm = BlockNorm::RMSNorm;   ///< the norms before the mixer and the MLP
    double layer_norm_eps = 1e-5;          ///< LayerNorm's epsilon
    bool layer_norm_bias = true;           ///< LayerNorm's bias
    bool conv = false;                     ///< the causal depthwise conv in front (lucidrains' enable_conv)
    Index conv_kernel = 3;                 ///< its width: 3 in lucidrains, 4 in the paper
    double dropout = 0.0;                  ///< on the mixer's and the MLP's outputs, training only
    std::uint64_t dropout_seed = 0;        ///< seed of the dropout masks
    BlockNames names = BlockNames::MinLM;  ///< parameter names
};

/// One pre-norm residual block: [conv,] norm, mixer, residual, norm, MLP, residual.
template <typename Scalar>
class Block : public Sequential<Scalar> {
public:
    /// A block with weights drawn as PyTorch draws them (conv, mixer, MLP, in this order).
    Block(const BlockOptions& o, Rng& rng) : options_(checked(o)) {
        const Index D = o.dim;
        if (o.conv) {
            auto conv = std::make_unique<CausalDepthwiseConv1d<Scalar>>(
                CausalConvOptions{.channels = D, .kernel_size = o.conv_kernel}, rng);
            conv_ = conv.get();
            this->template emplace<Residual<Scalar>>(std::move(conv));
        }
        std::unique_ptr<Layer<Scalar>> mixer = make_mixer<Scalar>(o.mixer, D, rng);
        if (mixer->input_size() != D || mixer->output_size() != D)
            fail("Block", "the mixer (" + mixer->kind() + ") maps " + std::to_string(mixer->input_size()) + " -> " +
                              std::to_string(mixer->output_size()) + " features, expected " + std::to_string(D) +
                              " -> " + std::to_string(D));
        mixer_ = mixer.get();
        mixer_part_ = &this->template emplace<Residual<Scalar>>(std::move(mixer), make_norm(),
                                                                o.dropout, dropout_detail::mix64(o.dropout_seed * 2 + 1));
        const Index F = o.dim_feedforward > 0 ? o.dim_feedforward : checked_scaled_size("Block", "ff_mult", D, o.ff_mult);
        FeedForwardNames ff_names;
        if (o.names == BlockNames::TransformerEncoderLayer) ff_names = {.up = "linear1.", .down = "linear2."};
        auto ff = std::make_unique<FeedForward<Scalar>>(D, F, rng, ff_names, o.mlp_bias);
        ff_ = ff.get();
        ff_part_ = &this->template emplace<Residual<Scalar>>(std::move(ff), make_norm(), o.dropout,
                                                             dropout_detail::mix64(o.dropout_seed * 2 + 2));
    }

    std::string kind() const override { return "Block(" + mixer_->kind() + ")"; }
    /// The options it was made with.
    const BlockOptions& options() const { return options_; }
    /// The sequence mixer.
    Layer<Scalar>& mixer() { return *mixer_; }
    /// The sequence mixer, read-only.
    const Layer<Scalar>& mixer() const { return *mixer_; }
    /// The MLP.
    FeedForward<Scalar>& feed_forward() { return *ff_; }
    /// The MLP, read-only.
    const FeedForward<Scalar>& feed_forward() const { return *ff_; }
    /// The causal conv; null when the block has none.
    CausalDepthwiseConv1d<Scalar>* conv() { return conv_; }
    /// The norm before the mixer.
    Layer<Scalar>& norm1() { return *mixer_part_->norm(); }
    /// The norm before the MLP.
    Layer<Scalar>& norm2() { return *ff_part_->norm(); }
    /// The mixer's own node within a state of this block (the block's state has one child per
    /// branch: [conv,] mixer, MLP; a branch's first child is its layer's).
    State<Scalar>& mixer_state(State<Scalar>& state) const { return state.children.at(conv_ ? 1 : 0).children.at(0); }
    /// Dropout after the mixer.
    Dropout<Scalar>& mixer_dropout() { return mixer_part_->dropout(); }
    /// Dropout after the MLP.
    Dropout<Scalar>& ff_dropout() { return ff_part_->dropout(); }

    /// The names of options.names (the comment at the top of this file).
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        if (options_.names == BlockNames::TransformerEncoderLayer) {
            mixer_->collect_parameters(prefix + "self_attn.", out);
            ff_->collect_parameters(prefix, out);  // linear1.*, linear2.*
            norm1().collect_parameters(prefix + "norm1.", out);
            norm2().collect_parameters(prefix + "norm2.", out);
            return;
        }
        if (conv_) conv_->collect_parameters(prefix + "0.", out);
        norm1().collect_parameters(prefix + "1.", out);
        mixer_->collect_parameters(prefix + "2.", out);
        norm2().collect_parameters(prefix + "3.", out);
        ff_->collect_parameters(prefix + "4.", out);
    }

    /// "Block(<its parts' kinds and sizes>)": the owner a training forward writes into its Context.
    std::string signature() const override { return "Block" + this->children_signature(); }

private:
    std::unique_ptr<Layer<Scalar>> make_norm() const {
        if (options_.norm == BlockNorm::LayerNorm)
            return make_layer_norm_layer<Scalar>(options_.dim, options_.layer_norm_eps, options_.layer_norm_bias);
        return make_rms_norm_layer<Scalar>(options_.dim);
    }
    static const BlockOptions& checked(const BlockOptions& o) {
        if (o.dim <= 0) fail("Block", "dim must be positive, got " + std::to_string(o.dim));
        if (o.dim_feedforward < 0) fail("Block", "dim_feedforward must be >= 0, got " + std::to_string(o.dim_feedforward));
        if (!(o.layer_norm_eps >= 0) || !std::isfinite(o.layer_norm_eps))
            fail("Block", "layer_norm_eps must be a finite number >= 0, got " + number_text(o.layer_norm_eps));
        return o;
    }

    BlockOptions options_;
    CausalDepthwiseConv1d<Scalar>* conv_ = nullptr;  // owned by conv_part_
    Layer<Scalar>* mixer_ = nullptr;                 // owned by mixer_part_
    FeedForward<Scalar>* ff_ = nullptr;              // owned by ff_part_
    Residual<Scalar>* mixer_part_ = nullptr;         // the branches, owned by the Sequential
    Residual<Scalar>* ff_part_ = nullptr;
};

}  // namespace seqnn
