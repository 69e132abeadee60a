/// @file
/// Elman RNN with PyTorch's nn.RNN semantics and weight layout:
///   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  act = tanh or relu.
/// The time loop is kernels/recurrent.hpp (CellKind::RNNTanh, CellKind::RNNReLU).
#pragma once

#include "seqnn/layers/recurrent.hpp"

namespace seqnn {

/// Options of an Elman RNN: RecurrentOptions, whose nonlinearity (Tanh or ReLU) is the RNN's.
using RNNOptions = RecurrentOptions;

/// A stack of Elman RNN layers, one or two directions each; the state is {h (L*D*B, H)},
/// PyTorch's h_n of shape (L*D, B, H) (D = 2 when bidirectional).
template <typename Scalar>
class RNN : public RecurrentStack<Scalar> {
public:
    /// An RNN initialised as PyTorch does, U(-1/sqrt(H), 1/sqrt(H)).
    RNN(RNNOptions options, Rng& rng) : RecurrentStack<Scalar>("RNN", options, cell_of(options.nonlinearity), rng) {}

    /// Tanh or ReLU.
    Activation nonlinearity() const { return this->options().nonlinearity; }

private:
    static CellKind cell_of(Activation nonlinearity) {
        if (nonlinearity == Activation::Tanh) return CellKind::RNNTanh;
        if (nonlinearity == Activation::ReLU) return CellKind::RNNReLU;
        fail("RNN", "nonlinearity must be tanh or relu, got " + to_string(nonlinearity));
    }
};

}  // namespace seqnn
