// GRU with PyTorch's nn.GRU semantics and weight layout (gate order r, z, n):
//   r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
//   z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
//   n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))   <- reset after the hidden map
//   h_t = (1 - z_t) * n_t + z_t * h_{t-1}
#pragma once

#include "seqnn/layers/recurrent.hpp"

namespace seqnn {

template <typename Scalar>
class GRU : public RecurrentStack<Scalar> {
    using Base = RecurrentStack<Scalar>;

public:
    GRU(RecurrentOptions options, Rng& rng) : Base("GRU", options, 3, 1, rng) {}

    std::string kind() const override { return "GRU"; }

    // One GRU step on B rows. gates (B, 3H) enters as x W_ih^T + b_ih and
    // leaves as [r, z, n]; gates_h (B, 3H) is h_{t-1} W_hh^T + b_hh; h (B, H)
    // goes from h_{t-1} to h_t.
    static void cell(MatrixRef<Scalar> gates, ConstMatrixRef<Scalar> gates_h, MatrixRef<Scalar> h) {
        const Index H = h.cols();
        gates.leftCols(2 * H) = (gates.leftCols(2 * H) + gates_h.leftCols(2 * H)).array().logistic().matrix();
        const auto r = gates.leftCols(H).array();
        const auto z = gates.middleCols(H, H).array();
        gates.rightCols(H) = (gates.rightCols(H).array() + r * gates_h.rightCols(H).array()).tanh().matrix();
        const auto n = gates.rightCols(H).array();
        h.array() = (Scalar(1) - z) * n + z * h.array();
    }

protected:
    void recur_forward(Index k, Matrix<Scalar>& gates, Index B, Index T, std::vector<Matrix<Scalar>>& state,
                       Sequence<Scalar>& y, Context<Scalar>* ctx) const override {
        const Index H = this->hidden_size();
        Matrix<Scalar>& h = state[0];                  // (B, H)
        Matrix<Scalar> gates_h(B, 3 * H);              // (B, 3H)
        Matrix<Scalar> hidden_n;                       // (B*T, H): W_hn h_{t-1} + b_hn, for backward
        if (ctx) hidden_n.resize(B * T, H);
        for (Index t = 0; t < T; ++t) {
            this->hidden_map(k, h, gates_h);
            cell(step_rows(gates, T, t), gates_h, h);
            y.at_step(t) = h;
            if (ctx) step_rows(hidden_n, T, t) = gates_h.rightCols(H);
        }
        if (ctx) {
            ctx->save("gates", std::move(gates));
            ctx->save("hidden_n", std::move(hidden_n));
            ctx->save("output", y.data);
        }
    }

    Matrix<Scalar> recur_backward(Index k, const Context<Scalar>& ctx, const Matrix<Scalar>& d_out, Index B, Index T,
                                  std::vector<Matrix<Scalar>>& d_state) override {
        const Index H = this->hidden_size();
        const Matrix<Scalar>& gates = ctx.get("gates");        // (B*T, 3H): r, z, n
        const Matrix<Scalar>& hidden_n = ctx.get("hidden_n");  // (B*T, H)
        const Matrix<Scalar> h_prev = Base::previous_steps(ctx.get("output"), ctx.get("initial0"), B, T);
        const Matrix<Scalar>& w_hh = this->weights(k).weight_hh.value;  // (3H, H)

        Matrix<Scalar> d_gates(B * T, 3 * H);    // dL/d(x W_ih^T + b_ih)
        Matrix<Scalar> d_gates_h(B * T, 3 * H);  // dL/d(h W_hh^T + b_hh)
        Matrix<Scalar>& dh = d_state[0];         // (B, H): dL/dh_t, carried back in time
        for (Index t = T - 1; t >= 0; --t) {
            dh += step_rows(d_out, T, t);
            const auto g = step_rows(gates, T, t);
            const auto r = g.leftCols(H).array(), z = g.middleCols(H, H).array(), n = g.rightCols(H).array();
            const auto hp = step_rows(h_prev, T, t).array();
            auto dg = step_rows(d_gates, T, t);
            auto dgh = step_rows(d_gates_h, T, t);
            // Through h_t = (1 - z) n + z h_{t-1}, then the activations.
            dg.rightCols(H).array() = dh.array() * (Scalar(1) - z) * (Scalar(1) - n.square());  // d pre-n
            dg.middleCols(H, H).array() = dh.array() * (hp - n) * z * (Scalar(1) - z);          // d pre-z
            dg.leftCols(H).array() =
                dg.rightCols(H).array() * step_rows(hidden_n, T, t).array() * r * (Scalar(1) - r);  // d pre-r
            dgh.leftCols(2 * H) = dg.leftCols(2 * H);
            dgh.rightCols(H).array() = dg.rightCols(H).array() * r;
            dh.array() *= z;
            dh.noalias() += dgh * w_hh;  // (B, 3H) x (3H, H)
        }
        this->accumulate_hidden_grads(k, d_gates_h, h_prev);
        return d_gates;
    }

    void cell_step(Index k, Matrix<Scalar>& gates_in, Matrix<Scalar>& gates_h, State<Scalar>& state,
                   Index B) const override {
        auto h = state.tensors[0].middleRows(k * B, B);
        this->hidden_map(k, h, gates_h);
        cell(gates_in, gates_h, h);
    }
};

}  // namespace seqnn
