/// @file
/// LSTM with PyTorch's nn.LSTM semantics and weight layout (gate order i, f, g, o):
///   [i, f, g, o] = [sigmoid, sigmoid, tanh, sigmoid](W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
///   c_t = f * c_{t-1} + i * g
///   h_t = o * tanh(c_t)
/// With proj_size P (RecurrentOptions::proj_size): h_t = W_hr (o * tanh(c_t)), weight_hr_l{k} (P, H).
/// The time loop is kernels/recurrent.hpp (CellKind::LSTM; projected_lstm_forward with P).
#pragma once

#include "seqnn/layers/recurrent.hpp"

namespace seqnn {

/// A stack of LSTM layers, one or two directions each; the state is {h (L*D*B, H_r),
/// c (L*D*B, H)}, PyTorch's (h_n, c_n) of shapes (L*D, B, H_r) and (L*D, B, H), where D = 2
/// when bidirectional and H_r is proj_size with a projection, H otherwise.
template <typename Scalar>
class LSTM : public RecurrentStack<Scalar> {
public:
    /// An LSTM initialised as PyTorch does, U(-1/sqrt(H), 1/sqrt(H)).
    LSTM(RecurrentOptions options, Rng& rng) : RecurrentStack<Scalar>("LSTM", options, CellKind::LSTM, rng) {}
};

}  // namespace seqnn
