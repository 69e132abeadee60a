// minGRU (Feng et al. 2024, section 3.1): the GRU with the hidden state taken
// out of its gates, so every step's gate comes from x alone:
//   z_t  = sigmoid(Linear_z(x_t))
//   h~_t = act(Linear_h(x_t))                    act = identity or g
//   h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t      i.e. a_t = 1 - z_t, b_t = z_t * h~_t
// Parameters as lucidrains/minGRU-pytorch: to_hidden_and_gate.weight (2E, D),
// hidden rows first then gate rows; to_out.weight (D, E) when projecting.
#pragma once

#include "seqnn/layers/min_rnn.hpp"

namespace seqnn {

template <typename Scalar>
class MinGRU : public MinRNN<Scalar> {
    using Base = MinRNN<Scalar>;
    using Array = typename Base::Array;

public:
    MinGRU(MinRNNOptions options, Rng& rng) : Base("MinGRU", options, 2, "to_hidden_and_gate", rng) {}

    std::string kind() const override { return "MinGRU"; }

protected:
    void coefficients(const Matrix<Scalar>& pre, Matrix<Scalar>& a, Matrix<Scalar>& b) const override {
        const Index E = this->hidden_size();
        const auto z = pre.rightCols(E).array().logistic();
        a.array() = Scalar(1) - z;
        b.array() = z * min_rnn_math::activate<Scalar>(this->activation(), pre.leftCols(E).array());
    }

    // log a = log(1 - z) = -softplus(k),  log b = log z + log g(h~) = -softplus(-k) + log g(h~).
    void log_coefficients(const Matrix<Scalar>& pre, Matrix<Scalar>& log_a, Matrix<Scalar>& log_b) const override {
        const Index E = this->hidden_size();
        const auto k = pre.rightCols(E).array();
        log_a.array() = -min_rnn_math::softplus(k);
        log_b.array() = -min_rnn_math::softplus(-k) + min_rnn_math::log_positive_g<Scalar>(pre.leftCols(E).array());
    }

    // With z = sigmoid(k), v = act(h~): da/dk = -z(1-z), db/dk = z(1-z) v, db/dv = z.
    void coefficients_backward(const Matrix<Scalar>& pre, const Matrix<Scalar>& da, const Matrix<Scalar>& db,
                               Matrix<Scalar>& d_pre) const override {
        const Index E = this->hidden_size();
        const Array z = pre.rightCols(E).array().logistic();
        const auto hidden = pre.leftCols(E).array();
        const Array v = min_rnn_math::activate<Scalar>(this->activation(), hidden);
        d_pre.rightCols(E).array() = z * (Scalar(1) - z) * (db.array() * v - da.array());
        d_pre.leftCols(E).array() =
            db.array() * z * min_rnn_math::activate_derivative<Scalar>(this->activation(), hidden);
    }
};

}  // namespace seqnn
