// minLSTM (Feng et al. 2024, section 3.2): the LSTM with the hidden state taken
// out of its gates and the gates normalised so that h stays time-independent in scale:
//   f_t = sigmoid(Linear_f(x_t)),  i_t = sigmoid(Linear_i(x_t))
//   f'_t = f_t / (f_t + i_t),      i'_t = i_t / (f_t + i_t)
//   h~_t = act(Linear_h(x_t))                      act = identity or g
//   h_t = f'_t * h_{t-1} + i'_t * h~_t             i.e. a_t = f'_t, b_t = i'_t * h~_t
// Parameters as lucidrains/minGRU-pytorch: to_hidden_and_f_i_gate.weight (3E, D),
// rows [hidden; forget; input]; to_out.weight (D, E) when projecting. Bidirectional
// (min_rnn.hpp): reverse.to_hidden_and_f_i_gate.weight (3E, D) too, and to_out.weight (D, 2E).
// BorealisAI/minRNNs (the paper's code, MinRNNNaming::Borealis): to_hidden_and_gate.weight
// (3E, D) and .bias, rows [hidden; forget; input], to_out.weight (D, E) and .bias, and
// init_hidden_state (E) with learned_initial_state; its minLSTM with use_coeff_norm=True
// computes exactly these a and b (in log space: log a = -softplus(d), log b = -softplus(-d)
// + log g(h~)). borealis_options() in min_rnn.hpp gives its options.
#pragma once

#include "seqnn/layers/min_rnn.hpp"

namespace seqnn {

/// minLSTM (Feng et al. 2024): normalised forget and input gates from x alone.
template <typename Scalar>
class MinLSTM : public MinRNN<Scalar> {
    using Array = typename MinRNN<Scalar>::Array;

public:
    /// A minLSTM with weights drawn as PyTorch's nn.Linear draws them.
    /// Its projection is named to_hidden_and_f_i_gate, or to_hidden_and_gate with MinRNNNaming::Borealis.
    MinLSTM(MinRNNOptions options, Rng& rng)
        : MinRNN<Scalar>("MinLSTM", options, 3,
                         options.naming == MinRNNNaming::Borealis ? "to_hidden_and_gate" : "to_hidden_and_f_i_gate", rng) {}

protected:
    /// With d = log(i / f) = softplus(-k_f) - softplus(-k_i):
    ///   a = f / (f + i) = sigmoid(-d),  b = i / (f + i) * act(h~) = sigmoid(d) * act(h~).
    /// Through d both stay accurate when one gate is tiny. d is kept in a, and every
    /// pass reads and writes one index, so a may overwrite pre's k_f block and b its h~ block.
    void coefficients(ConstMatrixRef<Scalar> pre, MatrixRef<Scalar> a, MatrixRef<Scalar> b) const override {
        const Index E = this->hidden_size();
        a.array() = min_rnn_math::softplus(-pre.middleCols(E, E).array()) -
                    min_rnn_math::softplus(-pre.rightCols(E).array());  // d
        min_rnn_math::set_gate_times_candidate<Scalar>(this->activation(), a.array().logistic(),
                                                       pre.leftCols(E).array(), b.array());
        a.array() = (-a.array()).logistic();
    }

    /// log b = -softplus(-d) + log g(h~),  log a = -softplus(d); in place as above.
    void log_coefficients(ConstMatrixRef<Scalar> pre, MatrixRef<Scalar> log_a, MatrixRef<Scalar> log_b) const override {
        const Index E = this->hidden_size();
        log_a.array() = min_rnn_math::softplus(-pre.middleCols(E, E).array()) -
                        min_rnn_math::softplus(-pre.rightCols(E).array());  // d
        log_b.array() = min_rnn_math::log_positive_g<Scalar>(pre.leftCols(E).array()) -
                        min_rnn_math::softplus(-log_a.array());
        log_a.array() = -min_rnn_math::softplus(log_a.array());
    }

    /// With s = f + i, a = f/s and c = i/s: da/df = i/s^2, da/di = -f/s^2, dc = -da;
    /// b = c v, so dL/dc = db v and dL/dv = db c.
    void coefficients_backward(ConstMatrixRef<Scalar> pre, ConstMatrixRef<Scalar> da, ConstMatrixRef<Scalar> db,
                               MatrixRef<Scalar> d_pre) const override {
        const Index E = this->hidden_size();
        const auto hidden = pre.leftCols(E).array();
        const Array f = pre.middleCols(E, E).array().logistic();
        const Array i = pre.rightCols(E).array().logistic();
        const Array s = f + i;
        Array db_v = db.array();  // dL/db * v
        min_rnn_math::multiply_by_candidate<Scalar>(this->activation(), hidden, db_v);
        const Array d_a_minus_c = (da.array() - db_v) / s.square();  // (dL/da - dL/dc) / s^2
        d_pre.middleCols(E, E).array() = i * d_a_minus_c * f * (Scalar(1) - f);
        d_pre.rightCols(E).array() = -f * d_a_minus_c * i * (Scalar(1) - i);
        auto d_hidden = d_pre.leftCols(E).array();
        d_hidden = db.array() * (i / s);
        min_rnn_math::multiply_by_candidate_derivative<Scalar>(this->activation(), hidden, d_hidden);
    }
};

}  // namespace seqnn
