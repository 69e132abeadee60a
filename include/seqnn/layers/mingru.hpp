// minGRU (Feng et al. 2024, section 3.1): the GRU with the hidden state taken
// out of its gates, so every step's gate comes from x alone:
//   z_t  = sigmoid(Linear_z(x_t))
//   h~_t = act(Linear_h(x_t))                    act = identity or g
//   h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t      i.e. a_t = 1 - z_t, b_t = z_t * h~_t
// Parameters as lucidrains/minGRU-pytorch: to_hidden_and_gate.weight (2E, D),
// hidden rows first then gate rows; to_out.weight (D, E) when projecting. Bidirectional
// (min_rnn.hpp): reverse.to_hidden_and_gate.weight (2E, D) too, and to_out.weight (D, 2E).
// BorealisAI/minRNNs (the paper's code) uses the same names, with .bias on both
// projections, to_out always, and init_hidden_state (E) with learned_initial_state;
// borealis_options() in min_rnn.hpp gives its options.
#pragma once

#include "seqnn/layers/min_rnn.hpp"

namespace seqnn {

/// minGRU (Feng et al. 2024): a_t = 1 - z_t, b_t = z_t * h~_t, z and h~ from x alone.
template <typename Scalar>
class MinGRU : public MinRNN<Scalar> {
public:
    /// A minGRU with weights drawn as PyTorch's nn.Linear draws them.
    MinGRU(MinRNNOptions options, Rng& rng) : MinRNN<Scalar>("MinGRU", options, 2, "to_hidden_and_gate", rng) {}

protected:
    /// b = z * act(h~), then a = 1 - z = sigmoid(-k), with pre = [h~ | k]. Each
    /// output is one element-wise pass over inputs at the same index, so both may
    /// overwrite pre (b the h~ block, a the k block) in this order.
    void coefficients(ConstMatrixRef<Scalar> pre, MatrixRef<Scalar> a, MatrixRef<Scalar> b) const override {
        const Index E = this->hidden_size();
        const auto k = pre.rightCols(E).array();
        min_rnn_math::set_gate_times_candidate<Scalar>(this->activation(), k.logistic(), pre.leftCols(E).array(),
                                                       b.array());
        a.array() = (-k).logistic();
    }

    /// log b = log z + log g(h~) = -softplus(-k) + log g(h~),  log a = log(1 - z) = -softplus(k);
    /// in place as above.
    void log_coefficients(ConstMatrixRef<Scalar> pre, MatrixRef<Scalar> log_a, MatrixRef<Scalar> log_b) const override {
        const Index E = this->hidden_size();
        const auto k = pre.rightCols(E).array();
        log_b.array() = min_rnn_math::log_positive_g<Scalar>(pre.leftCols(E).array()) - min_rnn_math::softplus(-k);
        log_a.array() = -min_rnn_math::softplus(k);
    }

    /// With z = sigmoid(k), v = act(h~): da/dk = -z(1-z), db/dk = z(1-z) v, db/dv = z.
    void coefficients_backward(ConstMatrixRef<Scalar> pre, ConstMatrixRef<Scalar> da, ConstMatrixRef<Scalar> db,
                               MatrixRef<Scalar> d_pre) const override {
        const Index E = this->hidden_size();
        const auto hidden = pre.leftCols(E).array();
        const typename MinRNN<Scalar>::Array z = pre.rightCols(E).array().logistic();
        typename MinRNN<Scalar>::Array db_v = db.array();  // dL/db * v
        min_rnn_math::multiply_by_candidate<Scalar>(this->activation(), hidden, db_v);
        d_pre.rightCols(E).array() = z * (Scalar(1) - z) * (db_v - da.array());
        auto d_hidden = d_pre.leftCols(E).array();
        d_hidden = db.array() * z;
        min_rnn_math::multiply_by_candidate_derivative<Scalar>(this->activation(), hidden, d_hidden);
    }
};

}  // namespace seqnn
