/// @file
/// GRU with PyTorch's nn.GRU semantics and weight layout (gate order r, z, n):
///   r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
///   z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
///   n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))   <- reset after the hidden map
///   h_t = (1 - z_t) * n_t + z_t * h_{t-1}
/// The time loop is kernels/recurrent.hpp (CellKind::GRU).
#pragma once

#include "seqnn/layers/recurrent.hpp"

namespace seqnn {

/// A stack of GRU layers, one or two directions each; the state is {h (L*D*B, H)},
/// PyTorch's h_n of shape (L*D, B, H) (D = 2 when bidirectional).
template <typename Scalar>
class GRU : public RecurrentStack<Scalar> {
public:
    /// A GRU initialised as PyTorch does, U(-1/sqrt(H), 1/sqrt(H)).
    GRU(RecurrentOptions options, Rng& rng) : RecurrentStack<Scalar>("GRU", options, CellKind::GRU, rng) {}
};

}  // namespace seqnn
