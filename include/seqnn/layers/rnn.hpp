// Elman RNN with PyTorch's nn.RNN semantics and weight layout:
//   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  act = tanh or relu.
#pragma once

#include "seqnn/layers/recurrent.hpp"
#include "seqnn/nn/activations.hpp"

namespace seqnn {

struct RNNOptions {
    Index input_size = 0;                        // I
    Index hidden_size = 0;                       // H
    Index num_layers = 1;                        // L
    bool bias = true;                            // bias_ih and bias_hh
    Activation nonlinearity = Activation::Tanh;  // Tanh or ReLU, as PyTorch allows
};

template <typename Scalar>
class RNN : public RecurrentStack<Scalar> {
    using Base = RecurrentStack<Scalar>;

public:
    RNN(RNNOptions options, Rng& rng)
        : Base("RNN", {options.input_size, options.hidden_size, options.num_layers, options.bias}, 1, 1, rng),
          nonlinearity_(options.nonlinearity) {
        if (nonlinearity_ != Activation::Tanh && nonlinearity_ != Activation::ReLU)
            fail("RNN", "nonlinearity must be tanh or relu, got " + to_string(nonlinearity_));
    }

    std::string kind() const override { return "RNN"; }
    Activation nonlinearity() const { return nonlinearity_; }

protected:
    void recur_forward(Index k, Matrix<Scalar>& gates, Index B, Index T, std::vector<Matrix<Scalar>>& state,
                       Sequence<Scalar>& y, Context<Scalar>* ctx) const override {
        const Index H = this->hidden_size();
        Matrix<Scalar>& h = state[0];  // (B, H)
        Matrix<Scalar> gates_h(B, H);  // (B, H)
        for (Index t = 0; t < T; ++t) {
            this->hidden_map(k, h, gates_h);
            h = step_rows(gates, T, t) + gates_h;
            activation_forward<Scalar>(nonlinearity_, h);
            y.at_step(t) = h;
        }
        if (ctx) ctx->save("output", y.data);
    }

    Matrix<Scalar> recur_backward(Index k, const Context<Scalar>& ctx, const Matrix<Scalar>& d_out, Index B, Index T,
                                  std::vector<Matrix<Scalar>>& d_state) override {
        const Index H = this->hidden_size();
        const Matrix<Scalar>& output = ctx.get("output");  // (B*T, H)
        const Matrix<Scalar>& w_hh = this->weights(k).weight_hh.value;  // (H, H)
        Matrix<Scalar> d_pre(B * T, H);   // dL/d(pre-activation), the same for both maps
        Matrix<Scalar>& dh = d_state[0];  // (B, H)
        for (Index t = T - 1; t >= 0; --t) {
            dh += step_rows(d_out, T, t);
            auto dp = step_rows(d_pre, T, t);
            dp = dh;
            // tanh' and relu' are functions of the output, so no pre-activation is kept.
            const auto out = step_rows(output, T, t);
            activation_backward<Scalar>(nonlinearity_, out, out, dp);
            dh.noalias() = dp * w_hh;  // (B, H) x (H, H)
        }
        this->accumulate_hidden_grads(k, d_pre, Base::previous_steps(output, ctx.get("initial0"), B, T));
        return d_pre;
    }

    void cell_step(Index k, Matrix<Scalar>& gates_in, Matrix<Scalar>& gates_h, State<Scalar>& state,
                   Index B) const override {
        auto h = state.tensors[0].middleRows(k * B, B);
        this->hidden_map(k, h, gates_h);
        h = gates_in + gates_h;
        activation_forward<Scalar>(nonlinearity_, h);
    }

private:
    Activation nonlinearity_;
};

}  // namespace seqnn
