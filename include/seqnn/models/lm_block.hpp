// One block of the minGRU paper's language model (Feng et al. 2024, and
// lucidrains/minGRU-pytorch's minLM): a Block (block.hpp) with RMSNorms (PyTorch's default
// eps, as torch.nn.RMSNorm(dim) in minLM), an optional causal conv, any mixer, and
// lucidrains' names:
//   0.net.0.weight, 0.net.0.bias, 0.net.1.weight, 0.net.1.bias   (conv, when present)
//   1.weight                                                      (norm1)
//   2.<mixer's names>, e.g. 2.to_hidden_and_gate.weight, 2.to_out.weight
//   3.weight                                                      (norm2)
//   4.0.weight, 4.0.bias, 4.2.weight, 4.2.bias                    (ff)
// Dropout is active only in training mode (forward with a Context).
#pragma once

#include "seqnn/models/block.hpp"

#include <cstdint>

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

/// The Block options of an LMBlock.
inline BlockOptions lm_block_options(const LMBlockOptions& o) {
    return {.dim = o.dim, .mixer = o.mixer, .ff_mult = o.ff_mult, .norm = BlockNorm::RMSNorm, .conv = o.conv,
            .conv_kernel = o.conv_kernel, .dropout = o.dropout, .dropout_seed = o.dropout_seed,
            .names = BlockNames::MinLM};
}

/// One block of the language model: conv, norm, mixer, residual, norm, MLP, residual.
template <typename Scalar>
class LMBlock : public Block<Scalar> {
public:
    /// A block with weights drawn as PyTorch draws them.
    LMBlock(const LMBlockOptions& o, Rng& rng) : Block<Scalar>(lm_block_options(o), rng) {}

    std::string kind() const override { return "LMBlock(" + this->mixer().kind() + ")"; }
};

}  // namespace seqnn
