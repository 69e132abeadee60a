// What PyTorch's nn.RNN, nn.LSTM and nn.GRU share: stacked layers with the
// weights weight_ih_l{k} (G*H, I_k), weight_hh_l{k} (G*H, H) and the two bias
// vectors bias_ih_l{k}, bias_hh_l{k} (G*H), a state laid out as (L, B, H), and
// a whole-sequence forward whose input projection is one GEMM over every step
// of every sequence. The cells (rnn.hpp, lstm.hpp, gru.hpp) supply only the
// recurrence of one layer: its forward over time, its backward through time
// and its single step.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/core/threading.hpp"
#include "seqnn/kernels/matmul.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace seqnn {

struct RecurrentOptions {
    Index input_size = 0;   // I
    Index hidden_size = 0;  // H
    Index num_layers = 1;   // L
    bool bias = true;       // bias_ih and bias_hh
};

template <typename Scalar>
class RecurrentStack : public Layer<Scalar> {
public:
    // The parameters of layer k, as in PyTorch.
    struct LayerWeights {
        Parameter<Scalar> weight_ih;  // (G*H, I_k)
        Parameter<Scalar> weight_hh;  // (G*H, H)
        Parameter<Scalar> bias_ih;    // (G*H), empty without bias
        Parameter<Scalar> bias_hh;    // (G*H), empty without bias
    };

    const RecurrentOptions& options() const { return options_; }
    Index hidden_size() const { return options_.hidden_size; }
    Index num_layers() const { return options_.num_layers; }
    Index input_size() const override { return options_.input_size; }
    Index output_size() const override { return options_.hidden_size; }
    LayerWeights& weights(Index k) { return layers_.at(static_cast<std::size_t>(k)); }
    const LayerWeights& weights(Index k) const { return layers_.at(static_cast<std::size_t>(k)); }

    // Zero state {h (L*B, H)} (plus c for LSTM) and the step workspace.
    State<Scalar> initial_state(Index batch) const override {
        if (batch <= 0) fail(this->kind() + ".initial_state", "batch must be positive, got " + std::to_string(batch));
        State<Scalar> s;
        for (int j = 0; j < state_tensor_count_; ++j)
            s.tensors.push_back(Matrix<Scalar>::Zero(options_.num_layers * batch, options_.hidden_size));
        s.workspace = {Matrix<Scalar>(batch, gate_width()), Matrix<Scalar>(batch, gate_width())};
        return s;
    }

    Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const override {
        const std::string where = this->kind() + ".forward";
        check_sequence(where, "input", x, input_size());
        const Index B = x.batch, T = x.steps, H = hidden_size(), L = num_layers();
        State<Scalar> zeros;
        State<Scalar>& s = state ? *state : zeros;
        if (s.empty()) s = initial_state(B);
        check_state(where, s, B);
        if (ctx) {
            ctx->batch = B;
            ctx->steps = T;
            ctx->make_children(static_cast<std::size_t>(L));
        }

        Sequence<Scalar> layer_input = x;
        Sequence<Scalar> y(B, T, H);
        for (Index k = 0; k < L; ++k) {
            const LayerWeights& w = weights(k);
            // The input projection of every step of every sequence, one GEMM.
            Matrix<Scalar> gates_in(B * T, gate_width());
            matmul_rows<Scalar>(layer_input.data, w.weight_ih.value.transpose(), gates_in,
                                options_.bias ? w.bias_ih.value.data() : nullptr);  // (B*T, I_k) x (I_k, G*H)

            std::vector<Matrix<Scalar>> layer_state = state_of_layer(s, k, B);
            Context<Scalar>* layer_ctx = ctx ? &ctx->children[static_cast<std::size_t>(k)] : nullptr;
            if (layer_ctx) {
                layer_ctx->save("input", layer_input.data);
                for (std::size_t j = 0; j < layer_state.size(); ++j)
                    layer_ctx->save("initial" + std::to_string(j), layer_state[j]);
            }
            recur_forward(k, gates_in, B, T, layer_state, y, layer_ctx);
            set_state_of_layer(s, k, B, layer_state);
            if (k + 1 < L) layer_input = y;
        }
        s.position += T;
        return y;
    }

    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                              const State<Scalar>* d_final = nullptr, State<Scalar>* d_initial = nullptr) override {
        const std::string where = this->kind() + ".backward";
        const Index B = ctx.batch, T = ctx.steps, H = hidden_size(), L = num_layers();
        if (static_cast<Index>(ctx.children.size()) != L)
            fail(where, "the context holds no training forward of this layer (" + std::to_string(ctx.children.size()) +
                            " sub-contexts, expected " + std::to_string(L) + ")");
        check_sequence(where, "dy", dy, H);
        if (dy.batch != B || dy.steps != T)
            fail(where, "dy " + shape_string(dy) + " does not match the forward's (B=" + std::to_string(B) +
                            ", T=" + std::to_string(T) + ")");
        if (d_final && !d_final->empty()) check_state(where + " d_final", *d_final, B);
        if (d_initial) *d_initial = State<Scalar>{};

        Matrix<Scalar> d_out = dy.data;  // dL/d(output of layer k), (B*T, H)
        for (Index k = L - 1; k >= 0; --k) {
            LayerWeights& w = weights(k);
            const Context<Scalar>& layer_ctx = ctx.children[static_cast<std::size_t>(k)];
            std::vector<Matrix<Scalar>> d_state;
            for (int j = 0; j < state_tensor_count_; ++j)
                d_state.push_back(d_final && !d_final->empty() ? Matrix<Scalar>(d_final->tensors[j].middleRows(k * B, B))
                                                               : Matrix<Scalar>::Zero(B, H));
            // Backward through time: dL/d(gates_in) (B*T, G*H); d_state becomes dL/d(initial state).
            Matrix<Scalar> d_gates_in = recur_backward(k, layer_ctx, d_out, B, T, d_state);

            const Matrix<Scalar>& input = layer_ctx.get("input");
            w.weight_ih.grad.noalias() += d_gates_in.transpose() * input;  // (G*H, B*T) x (B*T, I_k)
            if (options_.bias) add_column_sums(d_gates_in, w.bias_ih.grad);
            d_out.resize(B * T, w.weight_ih.value.cols());
            matmul_rows<Scalar>(d_gates_in, w.weight_ih.value, d_out);  // (B*T, G*H) x (G*H, I_k)

            if (d_initial) {
                if (d_initial->empty()) *d_initial = initial_state(B);
                set_state_of_layer(*d_initial, k, B, d_state);
            }
        }
        return Sequence<Scalar>(std::move(d_out), B, T);
    }

    void step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        const std::string where = this->kind() + ".step";
        if (x.cols() != input_size() || x.rows() <= 0)
            fail(where, "input has shape " + shape_string(x) + ", expected (B, " + std::to_string(input_size()) +
                            ") with B > 0");
        const Index B = x.rows(), H = hidden_size();
        if (state.empty()) state = initial_state(B);
        check_state(where, state, B);
        if (state.workspace.size() != 2 || state.workspace[0].rows() != B)
            state.workspace = initial_state(B).workspace;
        Matrix<Scalar>& gates_in = state.workspace[0];  // (B, G*H)
        Matrix<Scalar>& gates_h = state.workspace[1];   // (B, G*H)
        for (Index k = 0; k < num_layers(); ++k) {
            const LayerWeights& w = weights(k);
            // Layer k reads layer k-1's new hidden state, already written into the state.
            if (k == 0)
                gates_in.noalias() = x * w.weight_ih.value.transpose();  // (B, I) x (I, G*H)
            else
                gates_in.noalias() = state.tensors[0].middleRows((k - 1) * B, B) * w.weight_ih.value.transpose();
            if (options_.bias) gates_in.rowwise() += w.bias_ih.row();
            cell_step(k, gates_in, gates_h, state, B);
        }
        if (y.rows() != B || y.cols() != H) y.resize(B, H);
        y = state.tensors[0].middleRows((num_layers() - 1) * B, B);
        state.position += 1;
    }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        for (Index k = 0; k < num_layers(); ++k) {
            const std::string l = "_l" + std::to_string(k);
            LayerWeights& w = weights(k);
            out.push_back({prefix + "weight_ih" + l, &w.weight_ih});
            out.push_back({prefix + "weight_hh" + l, &w.weight_hh});
            if (options_.bias) {
                out.push_back({prefix + "bias_ih" + l, &w.bias_ih});
                out.push_back({prefix + "bias_hh" + l, &w.bias_hh});
            }
        }
    }

protected:
    // gate_count: 1 (RNN), 4 (LSTM), 3 (GRU); state_tensor_count: 1 (h) or 2 (h, c).
    RecurrentStack(const std::string& kind, RecurrentOptions options, int gate_count, int state_tensor_count, Rng& rng)
        : options_(options), gate_count_(gate_count), state_tensor_count_(state_tensor_count) {
        if (options.input_size <= 0 || options.hidden_size <= 0 || options.num_layers <= 0)
            fail(kind, "input_size, hidden_size and num_layers must be positive, got " +
                           std::to_string(options.input_size) + ", " + std::to_string(options.hidden_size) + ", " +
                           std::to_string(options.num_layers));
        // PyTorch initialises every weight and bias U(-1/sqrt(H), 1/sqrt(H)).
        const Scalar bound = Scalar(1) / std::sqrt(Scalar(options.hidden_size));
        const Index GH = gate_width(), H = options.hidden_size;
        for (Index k = 0; k < options.num_layers; ++k) {
            LayerWeights w{Parameter<Scalar>(GH, k == 0 ? options.input_size : H), Parameter<Scalar>(GH, H), {}, {}};
            w.weight_ih.init_uniform(bound, rng);
            w.weight_hh.init_uniform(bound, rng);
            if (options.bias) {
                w.bias_ih = Parameter<Scalar>(GH);
                w.bias_hh = Parameter<Scalar>(GH);
                w.bias_ih.init_uniform(bound, rng);
                w.bias_hh.init_uniform(bound, rng);
            }
            layers_.push_back(std::move(w));
        }
    }

    Index gate_width() const { return gate_count_ * options_.hidden_size; }

    // Runs layer k over all T steps. gates (B*T, G*H) enters holding
    // x W_ih^T + b_ih and may be overwritten (with the gate activations); state holds the layer's (B, H) state tensors and is left at the final
    // state; y (B*T, H) receives the hidden state of every step. With a
    // context, keeps what recur_backward needs.
    virtual void recur_forward(Index k, Matrix<Scalar>& gates, Index B, Index T,
                               std::vector<Matrix<Scalar>>& state, Sequence<Scalar>& y, Context<Scalar>* ctx) const = 0;

    // Backward through time of layer k. d_out (B*T, H) is dL/d(hidden state of
    // each step) from above; d_state enters as dL/d(final state) and leaves as
    // dL/d(initial state). Adds the gradients of weight_hh and bias_hh and
    // returns dL/d(gates_in) (B*T, G*H).
    virtual Matrix<Scalar> recur_backward(Index k, const Context<Scalar>& ctx, const Matrix<Scalar>& d_out, Index B,
                                          Index T, std::vector<Matrix<Scalar>>& d_state) = 0;

    // One step of layer k: gates_in (B, G*H) holds x W_ih^T + b_ih, gates_h is
    // scratch of the same shape; updates rows [k*B, (k+1)*B) of the state in place.
    virtual void cell_step(Index k, Matrix<Scalar>& gates_in, Matrix<Scalar>& gates_h, State<Scalar>& state,
                           Index B) const = 0;

    // The state before each step, (B*T, H): row b*T + t is h_{t-1} of sequence b
    // (the initial state at t = 0). `outputs` (B*T, H) holds h_t.
    static Matrix<Scalar> previous_steps(const Matrix<Scalar>& outputs, const Matrix<Scalar>& initial, Index B,
                                         Index T) {
        Matrix<Scalar> prev(outputs.rows(), outputs.cols());
        for (Index b = 0; b < B; ++b) {
            prev.row(b * T) = initial.row(b);
            prev.middleRows(b * T + 1, T - 1) = outputs.middleRows(b * T, T - 1);
        }
        return prev;
    }

    // The hidden map's gradients in one GEMM over all steps: d_gates_h (B*T, G*H)
    // is dL/d(h_{t-1} W_hh^T + b_hh) and h_prev (B*T, H) is h_{t-1}.
    void accumulate_hidden_grads(Index k, const Matrix<Scalar>& d_gates_h, const Matrix<Scalar>& h_prev) {
        LayerWeights& w = weights(k);
        w.weight_hh.grad.noalias() += d_gates_h.transpose() * h_prev;  // (G*H, B*T) x (B*T, H)
        if (options_.bias) add_column_sums(d_gates_h, w.bias_hh.grad);
    }

    // gates_h = h W_hh^T + b_hh: the hidden map of one step, (B, H) -> (B, G*H).
    void hidden_map(Index k, ConstMatrixRef<Scalar> h, Matrix<Scalar>& gates_h) const {
        const LayerWeights& w = weights(k);
        gates_h.noalias() = h * w.weight_hh.value.transpose();  // (B, H) x (H, G*H)
        if (options_.bias) gates_h.rowwise() += w.bias_hh.row();
    }

    // Rows [k*B, (k+1)*B) of every state tensor: the (B, H) state of layer k.
    std::vector<Matrix<Scalar>> state_of_layer(const State<Scalar>& s, Index k, Index B) const {
        std::vector<Matrix<Scalar>> out;
        for (const auto& t : s.tensors) out.emplace_back(t.middleRows(k * B, B));
        return out;
    }
    void set_state_of_layer(State<Scalar>& s, Index k, Index B, const std::vector<Matrix<Scalar>>& layer) const {
        for (std::size_t j = 0; j < layer.size(); ++j) s.tensors[j].middleRows(k * B, B) = layer[j];
    }

    void check_state(const std::string& where, const State<Scalar>& s, Index B) const {
        if (static_cast<int>(s.tensors.size()) != state_tensor_count_)
            fail(where, "state has " + std::to_string(s.tensors.size()) + " tensors, expected " +
                            std::to_string(state_tensor_count_));
        for (const auto& t : s.tensors)
            check_matrix(where, "state tensor", t, num_layers() * B, hidden_size());
    }

private:
    RecurrentOptions options_;
    int gate_count_;
    int state_tensor_count_;
    std::vector<LayerWeights> layers_;
};

}  // namespace seqnn
