// minLSTM (Feng et al. 2024, section 3.2): the LSTM with the hidden state taken
// out of its gates and the gates normalised so that h stays time-independent in scale:
//   f_t = sigmoid(Linear_f(x_t)),  i_t = sigmoid(Linear_i(x_t))
//   f'_t = f_t / (f_t + i_t),      i'_t = i_t / (f_t + i_t)
//   h~_t = act(Linear_h(x_t))                      act = identity or g
//   h_t = f'_t * h_{t-1} + i'_t * h~_t             i.e. a_t = f'_t, b_t = i'_t * h~_t
// Parameters as lucidrains/minGRU-pytorch: to_hidden_and_f_i_gate.weight (3E, D),
// rows [hidden; forget; input]; to_out.weight (D, E) when projecting.
#pragma once

#include "seqnn/layers/min_rnn.hpp"

namespace seqnn {

template <typename Scalar>
class MinLSTM : public MinRNN<Scalar> {
    using Base = MinRNN<Scalar>;
    using Array = typename Base::Array;

public:
    MinLSTM(MinRNNOptions options, Rng& rng) : Base("MinLSTM", options, 3, "to_hidden_and_f_i_gate", rng) {}

    std::string kind() const override { return "MinLSTM"; }

protected:
    void coefficients(const Matrix<Scalar>& pre, Matrix<Scalar>& a, Matrix<Scalar>& b) const override {
        const Index E = this->hidden_size();
        const Array f = pre.middleCols(E, E).array().logistic();
        const Array i = pre.rightCols(E).array().logistic();
        a.array() = f / (f + i);
        b.array() = i / (f + i) * min_rnn_math::activate<Scalar>(this->activation(), pre.leftCols(E).array());
    }

    // log f' = log f - log(f + i) = -softplus(d),  log i' = -softplus(-d),
    // with d = softplus(-k_f) - softplus(-k_i) = log(i / f) computed stably.
    void log_coefficients(const Matrix<Scalar>& pre, Matrix<Scalar>& log_a, Matrix<Scalar>& log_b) const override {
        const Index E = this->hidden_size();
        const Array d = min_rnn_math::softplus(-pre.middleCols(E, E).array()) -
                        min_rnn_math::softplus(-pre.rightCols(E).array());
        log_a.array() = -min_rnn_math::softplus(d);
        log_b.array() = -min_rnn_math::softplus(-d) + min_rnn_math::log_positive_g<Scalar>(pre.leftCols(E).array());
    }

    // With s = f + i, a = f/s and c = i/s: da/df = i/s^2, da/di = -f/s^2, dc = -da;
    // b = c v, so dL/dc = db v and dL/dv = db c.
    void coefficients_backward(const Matrix<Scalar>& pre, const Matrix<Scalar>& da, const Matrix<Scalar>& db,
                               Matrix<Scalar>& d_pre) const override {
        const Index E = this->hidden_size();
        const auto hidden = pre.leftCols(E).array();
        const Array f = pre.middleCols(E, E).array().logistic();
        const Array i = pre.rightCols(E).array().logistic();
        const Array s = f + i;
        const Array v = min_rnn_math::activate<Scalar>(this->activation(), hidden);
        const Array d_a_minus_c = (da.array() - db.array() * v) / s.square();  // dL/da - dL/dc, over s^2
        d_pre.middleCols(E, E).array() = i * d_a_minus_c * f * (Scalar(1) - f);
        d_pre.rightCols(E).array() = -f * d_a_minus_c * i * (Scalar(1) - i);
        d_pre.leftCols(E).array() =
            db.array() * (i / s) * min_rnn_math::activate_derivative<Scalar>(this->activation(), hidden);
    }
};

}  // namespace seqnn
