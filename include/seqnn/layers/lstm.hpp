/// @file
/// LSTM with PyTorch's nn.LSTM semantics and weight layout (gate order i, f, g, o):
///   [i, f, g, o] = [sigmoid, sigmoid, tanh, sigmoid](W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
///   c_t = f * c_{t-1} + i * g
///   h_t = o * tanh(c_t)
/// The time loop is kernels/recurrent.hpp (CellKind::LSTM).
#pragma once

#include "seqnn/layers/recurrent.hpp"

namespace seqnn {

/// A stack of LSTM layers; the state is {h (L*B, H), c (L*B, H)}, PyTorch's (h_n, c_n).
template <typename Scalar>
class LSTM : public RecurrentStack<Scalar> {
public:
    /// An LSTM initialised as PyTorch does, U(-1/sqrt(H), 1/sqrt(H)).
    LSTM(RecurrentOptions options, Rng& rng) : RecurrentStack<Scalar>("LSTM", options, CellKind::LSTM, rng) {}
};

}  // namespace seqnn
