/// @file
/// Elman RNN with PyTorch's nn.RNN semantics and weight layout:
///   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  act = tanh or relu.
/// The time loop is kernels/recurrent.hpp (CellKind::RNNTanh, CellKind::RNNReLU).
#pragma once

#include "seqnn/layers/recurrent.hpp"
#include "seqnn/nn/activations.hpp"

namespace seqnn {

/// Options of an Elman RNN: RecurrentOptions plus the nonlinearity.
struct RNNOptions {
    Index input_size = 0;                        ///< I
    Index hidden_size = 0;                       ///< H
    Index num_layers = 1;                        ///< L
    bool bias = true;                            ///< bias_ih and bias_hh
    Activation nonlinearity = Activation::Tanh;  ///< Tanh or ReLU, as PyTorch allows
};

/// A stack of Elman RNN layers; the state is {h (L*B, H)}, PyTorch's h_n.
template <typename Scalar>
class RNN : public RecurrentStack<Scalar> {
public:
    /// An RNN initialised as PyTorch does, U(-1/sqrt(H), 1/sqrt(H)).
    RNN(RNNOptions options, Rng& rng)
        : RecurrentStack<Scalar>("RNN", {options.input_size, options.hidden_size, options.num_layers, options.bias},
                                 cell_of(options.nonlinearity), rng),
          nonlinearity_(options.nonlinearity) {}

    std::string kind() const override { return "RNN"; }
    /// Tanh or ReLU.
    Activation nonlinearity() const { return nonlinearity_; }

private:
    static CellKind cell_of(Activation nonlinearity) {
        if (nonlinearity == Activation::Tanh) return CellKind::RNNTanh;
        if (nonlinearity == Activation::ReLU) return CellKind::RNNReLU;
        fail("RNN", "nonlinearity must be tanh or relu, got " + to_string(nonlinearity));
    }

    Activation nonlinearity_;
};

}  // namespace seqnn
