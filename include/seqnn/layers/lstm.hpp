// LSTM with PyTorch's nn.LSTM semantics and weight layout (gate order i, f, g, o):
//   [i, f, g, o] = [sigmoid, sigmoid, tanh, sigmoid](W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(c_t)
// The state is {h (L*B, H), c (L*B, H)}, PyTorch's (h_n, c_n).
#pragma once

#include "seqnn/layers/recurrent.hpp"

namespace seqnn {

template <typename Scalar>
class LSTM : public RecurrentStack<Scalar> {
    using Base = RecurrentStack<Scalar>;

public:
    LSTM(RecurrentOptions options, Rng& rng) : Base("LSTM", options, 4, 2, rng) {}

    std::string kind() const override { return "LSTM"; }

    // One LSTM step on B rows. gates (B, 4H) enters as the sum of both linear
    // maps and leaves as [i, f, g, o]; (h, c) go from step t-1 to step t.
    static void cell(MatrixRef<Scalar> gates, MatrixRef<Scalar> h, MatrixRef<Scalar> c) {
        const Index H = h.cols();
        gates.leftCols(2 * H) = gates.leftCols(2 * H).array().logistic().matrix();
        gates.middleCols(2 * H, H) = gates.middleCols(2 * H, H).array().tanh().matrix();
        gates.rightCols(H) = gates.rightCols(H).array().logistic().matrix();
        const auto i = gates.leftCols(H).array(), f = gates.middleCols(H, H).array();
        const auto g = gates.middleCols(2 * H, H).array(), o = gates.rightCols(H).array();
        c.array() = f * c.array() + i * g;
        h.array() = o * c.array().tanh();
    }

protected:
    void recur_forward(Index k, Matrix<Scalar>& gates, Index B, Index T, std::vector<Matrix<Scalar>>& state,
                       Sequence<Scalar>& y, Context<Scalar>* ctx) const override {
        const Index H = this->hidden_size();
        Matrix<Scalar>& h = state[0];      // (B, H)
        Matrix<Scalar>& c = state[1];      // (B, H)
        Matrix<Scalar> gates_h(B, 4 * H);  // (B, 4H)
        Matrix<Scalar> cells;              // (B*T, H): c_t, for backward
        if (ctx) cells.resize(B * T, H);
        for (Index t = 0; t < T; ++t) {
            this->hidden_map(k, h, gates_h);
            auto g = step_rows(gates, T, t);
            g += gates_h;
            cell(g, h, c);
            y.at_step(t) = h;
            if (ctx) step_rows(cells, T, t) = c;
        }
        if (ctx) {
            ctx->save("gates", std::move(gates));
            ctx->save("cells", std::move(cells));
            ctx->save("output", y.data);
        }
    }

    Matrix<Scalar> recur_backward(Index k, const Context<Scalar>& ctx, const Matrix<Scalar>& d_out, Index B, Index T,
                                  std::vector<Matrix<Scalar>>& d_state) override {
        const Index H = this->hidden_size();
        const Matrix<Scalar>& gates = ctx.get("gates");  // (B*T, 4H): i, f, g, o
        const Matrix<Scalar>& cells = ctx.get("cells");  // (B*T, H)
        const Matrix<Scalar> h_prev = Base::previous_steps(ctx.get("output"), ctx.get("initial0"), B, T);
        const Matrix<Scalar> c_prev = Base::previous_steps(cells, ctx.get("initial1"), B, T);
        const Matrix<Scalar>& w_hh = this->weights(k).weight_hh.value;  // (4H, H)

        // Both linear maps feed the same sum, so one gradient serves both.
        Matrix<Scalar> d_gates(B * T, 4 * H);
        Matrix<Scalar>& dh = d_state[0];  // (B, H)
        Matrix<Scalar>& dc = d_state[1];  // (B, H)
        Matrix<Scalar> tanh_c(B, H);
        for (Index t = T - 1; t >= 0; --t) {
            dh += step_rows(d_out, T, t);
            const auto gt = step_rows(gates, T, t);
            const auto i = gt.leftCols(H).array(), f = gt.middleCols(H, H).array();
            const auto g = gt.middleCols(2 * H, H).array(), o = gt.rightCols(H).array();
            tanh_c = step_rows(cells, T, t).array().tanh().matrix();
            const auto tc = tanh_c.array();
            // Through h_t = o tanh(c_t) into c_t, then c_t = f c_{t-1} + i g, then the activations.
            dc.array() += dh.array() * o * (Scalar(1) - tc.square());
            auto dg = step_rows(d_gates, T, t);
            dg.leftCols(H).array() = dc.array() * g * i * (Scalar(1) - i);
            dg.middleCols(H, H).array() = dc.array() * step_rows(c_prev, T, t).array() * f * (Scalar(1) - f);
            dg.middleCols(2 * H, H).array() = dc.array() * i * (Scalar(1) - g.square());
            dg.rightCols(H).array() = dh.array() * tc * o * (Scalar(1) - o);
            dc.array() *= f;
            dh.noalias() = dg * w_hh;  // (B, 4H) x (4H, H)
        }
        this->accumulate_hidden_grads(k, d_gates, h_prev);
        return d_gates;
    }

    void cell_step(Index k, Matrix<Scalar>& gates_in, Matrix<Scalar>& gates_h, State<Scalar>& state,
                   Index B) const override {
        auto h = state.tensors[0].middleRows(k * B, B);
        auto c = state.tensors[1].middleRows(k * B, B);
        this->hidden_map(k, h, gates_h);
        gates_in += gates_h;
        cell(gates_in, h, c);
    }
};

}  // namespace seqnn
