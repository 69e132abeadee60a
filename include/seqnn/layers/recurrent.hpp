/// @file
/// What PyTorch's nn.RNN, nn.LSTM and nn.GRU share: stacked layers with the
/// weights weight_ih_l{k} (G*H, I_k), weight_hh_l{k} (G*H, H) and the two bias
/// vectors bias_ih_l{k}, bias_hh_l{k} (G*H), a state laid out as (L, B, H), and
/// a whole-sequence forward whose input projection is one GEMM over every step
/// of every sequence. The time loop itself is kernels/recurrent.hpp; the cells
/// (rnn.hpp, lstm.hpp, gru.hpp) only name their CellKind.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/scratch.hpp"
#include "seqnn/kernels/elementwise.hpp"
#include "seqnn/kernels/matmul.hpp"
#include "seqnn/kernels/recurrent.hpp"
#include "seqnn/nn/activations.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace seqnn {

/// Options of an RNN, LSTM or GRU, as PyTorch's constructors take them.
struct RecurrentOptions {
    Index input_size = 0;   ///< I
    Index hidden_size = 0;  ///< H
    Index num_layers = 1;   ///< L
    bool bias = true;       ///< bias_ih and bias_hh
    /// The RNN's nonlinearity, Tanh or ReLU, as nn.RNN allows; the LSTM and GRU have their
    /// own gates and take Tanh (the default) only.
    Activation nonlinearity = Activation::Tanh;
};

/// The base of RNN, LSTM and GRU: L stacked layers of one cell kind, PyTorch's weights
/// and state layout, the forward, backward and step of the Layer interface.
template <typename Scalar>
class RecurrentStack : public Layer<Scalar> {
public:
    /// The parameters of layer k, as in PyTorch.
    struct LayerWeights {
        Parameter<Scalar> weight_ih;  ///< (G*H, I_k)
        Parameter<Scalar> weight_hh;  ///< (G*H, H)
        Parameter<Scalar> bias_ih;    ///< (G*H), empty without bias
        Parameter<Scalar> bias_hh;    ///< (G*H), empty without bias
    };

    /// "RNN", "LSTM" or "GRU".
    std::string kind() const override { return kind_; }
    /// The options the layer was made with.
    const RecurrentOptions& options() const { return options_; }
    /// H.
    Index hidden_size() const { return options_.hidden_size; }
    /// L.
    Index num_layers() const { return options_.num_layers; }
    Index input_size() const override { return options_.input_size; }
    Index output_size() const override { return options_.hidden_size; }
    /// The parameters of layer k (0 <= k < L).
    LayerWeights& weights(Index k) { return layers_.at(static_cast<std::size_t>(k)); }
    /// The parameters of layer k (0 <= k < L).
    const LayerWeights& weights(Index k) const { return layers_.at(static_cast<std::size_t>(k)); }

    /// What a training forward keeps for backward, per layer k of the stack.
    struct LayerSaved {
        Matrix<Scalar> input;     ///< (B*T, I_k): x for k = 0, layer k-1's output above it
        Matrix<Scalar> h0;        ///< (B, H): the initial hidden state
        Matrix<Scalar> c0;        ///< (B, H): the initial cell state (LSTM only)
        Matrix<Scalar> gates;     ///< (B*T, G*H): the gate activations (LSTM, GRU)
        Matrix<Scalar> cells;     ///< (B*T, H): the LSTM's c_t
        Matrix<Scalar> hidden_n;  ///< (B*T, H): the GRU's W_hn h_{t-1} + b_hn
    };
    /// Every layer's, and the top layer's output (the others' outputs are the next inputs).
    struct Saved {
        std::vector<LayerSaved> layers;  ///< one per layer of the stack, bottom first
        Matrix<Scalar> output;  ///< (B*T, H)
    };

    /// The layer's kind and sizes, as recorded in a Context by forward and checked by backward.
    std::string signature() const override {
        static constexpr const char* cell_names[] = {"RNN(tanh)", "RNN(relu)", "LSTM", "GRU"};
        return std::string(cell_names[static_cast<int>(cell_)]) + "(" + std::to_string(options_.input_size) + " -> " +
               std::to_string(options_.hidden_size) + ", L=" + std::to_string(options_.num_layers) +
               ", bias=" + (options_.bias ? "true" : "false") + ")";
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
    /// `kind` names the layer in errors; the cell fixes the gate count G and the state
    /// tensors ({h}, or {h, c} for the LSTM).
    RecurrentStack(const std::string& kind, RecurrentOptions options, CellKind cell, Rng& rng)
        : kind_(kind), options_(options), cell_(cell), gate_count_(static_cast<int>(gate_count(cell))),
          state_tensor_count_(cell == CellKind::LSTM ? 2 : 1) {
        if (options.input_size <= 0 || options.hidden_size <= 0 || options.num_layers <= 0)
            fail(kind, "input_size, hidden_size and num_layers must be positive, got " +
                           std::to_string(options.input_size) + ", " + std::to_string(options.hidden_size) + ", " +
                           std::to_string(options.num_layers));
        const bool rnn = cell == CellKind::RNNTanh || cell == CellKind::RNNReLU;
        if (!rnn && options.nonlinearity != Activation::Tanh)
            fail(kind, "nonlinearity is the RNN's option (tanh or relu); the " + kind +
                           " has its own gates, got " + to_string(options.nonlinearity));
        // Every weight count, one layer's and the stack's, must be a size seqnn allocates.
        const Index layer_weights = checked_mul(kind, checked_mul(kind, gate_count_, options.hidden_size),
                                                checked_add(kind, options.input_size, options.hidden_size));
        checked_elements(kind, options.num_layers, layer_weights);
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

    /// G*H, the width of the gate matrices.
    Index gate_width() const { return gate_count_ * options_.hidden_size; }
    /// The cell the time loop runs.
    CellKind cell_kind() const { return cell_; }

    /// prev (B*T, H) <- the state before each step: row b*T + t is h_{t-1} of sequence b
    /// (the initial state at t = 0). `outputs` (B*T, H) holds h_t.
    static void previous_steps(const Matrix<Scalar>& outputs, const Matrix<Scalar>& initial, Index B, Index T,
                               MatrixRef<Scalar> prev) {
        parallel_for(B, streamed_work(T * outputs.cols()), [&](Index b0, Index b1) {
            for (Index b = b0; b < b1; ++b) {
                prev.row(b * T) = initial.row(b);
                prev.middleRows(b * T + 1, T - 1) = outputs.middleRows(b * T, T - 1);
            }
        });
    }

    /// Rows [k*B, (k+1)*B) of every state tensor: the (B, H) state of layer k.
    std::vector<Matrix<Scalar>> state_of_layer(const State<Scalar>& s, Index k, Index B) const {
        std::vector<Matrix<Scalar>> out;
        for (const auto& t : s.tensors) out.emplace_back(t.middleRows(k * B, B));
        return out;
    }
    /// Writes the (B, H) state of layer k back into rows [k*B, (k+1)*B) of `s`.
    void set_state_of_layer(State<Scalar>& s, Index k, Index B, const std::vector<Matrix<Scalar>>& layer) const {
        for (std::size_t j = 0; j < layer.size(); ++j) s.tensors[j].middleRows(k * B, B) = layer[j];
    }

    /// Zero state {h (L*B, H)} (plus c for the LSTM); workspace: two (B, G*H) buffers for step.
    State<Scalar> make_state(Index batch) const override {
        State<Scalar> s;
        for (int j = 0; j < state_tensor_count_; ++j)
            s.tensors.push_back(Matrix<Scalar>::Zero(options_.num_layers * batch, options_.hidden_size));
        s.workspace = {Matrix<Scalar>(batch, gate_width()), Matrix<Scalar>(batch, gate_width())};
        return s;
    }

    void validate_state(const State<Scalar>& state, Index batch, Call call) const override {
        this->check_state_tensors(state, call, static_cast<std::size_t>(state_tensor_count_), num_layers() * batch,
                                  hidden_size());
    }

    /// Layer by layer, each through the whole sequence (kernels/recurrent.hpp); each layer
    /// writes its output straight where the next layer reads it: the next layer's saved
    /// input in training, this thread's scratch otherwise.
    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        const Index B = x.batch, T = x.steps, H = hidden_size(), L = num_layers();
        State<Scalar> zeros;
        State<Scalar>& s = state ? *state : zeros;
        if (!state) s = this->initial_state(B);
        Saved* saved = ctx ? &keep_for_backward<Saved>(*ctx) : nullptr;
        if (saved) saved->layers.resize(static_cast<std::size_t>(L));

        const CellKind cell = cell_kind();
        Sequence<Scalar> y(Matrix<Scalar>(B * T, H), B, T);
        const Scalar* input = x.data.data();  // (B*T, I_k): the input of layer k
        for (Index k = 0; k < L; ++k) {
            const LayerWeights& w = weights(k);
            const Index I = w.weight_ih.value.cols();
            LayerSaved* ls = saved ? &saved->layers[static_cast<std::size_t>(k)] : nullptr;
            std::vector<Matrix<Scalar>> layer_state = state_of_layer(s, k, B);
            RecurrentForward<Scalar> f;
            f.cell = cell;
            f.input_size = I;
            f.x = input;
            f.w_ih = w.weight_ih.value.data();
            f.b_ih = options_.bias ? w.bias_ih.value.data() : nullptr;
            f.w_hh = w.weight_hh.value.data();
            f.b_hh = options_.bias ? w.bias_hh.value.data() : nullptr;
            f.h = layer_state[0].data();
            f.c = cell == CellKind::LSTM ? layer_state[1].data() : nullptr;
            f.y = k + 1 == L ? y.data.data()
                  : ls       ? resized(saved->layers[static_cast<std::size_t>(k + 1)].input, B * T, H).data()
                             : scratch_matrix<Scalar>(k % 2 == 0 ? ScratchSlot::A : ScratchSlot::B, B * T, H).data();
            if (ls) {
                if (k == 0) parallel_copy<Scalar>(ls->input, x.data);
                ls->h0 = layer_state[0];
                if (cell == CellKind::LSTM) ls->c0 = layer_state[1];
                if (cell == CellKind::LSTM || cell == CellKind::GRU) f.gates = resized(ls->gates, B * T, gate_width()).data();
                if (cell == CellKind::LSTM) f.cells = resized(ls->cells, B * T, H).data();
                if (cell == CellKind::GRU) f.hidden_n = resized(ls->hidden_n, B * T, H).data();
            }
            recurrent_forward<Scalar>(f, B, T, H);
            set_state_of_layer(s, k, B, layer_state);
            input = f.y;
        }
        if (saved) parallel_copy<Scalar>(saved->output, y.data);
        return y;
    }

    /// Layer by layer from the top, each backward through time (kernels/recurrent.hpp),
    /// then its weight gradients as one GEMM each.
    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                   const State<Scalar>* d_final, State<Scalar>* d_initial) override {
        const Index B = ctx.batch, T = ctx.steps, H = hidden_size(), L = num_layers();
        const Saved& saved = saved_for_backward<Saved>(ctx);
        const std::string where = this->where(Call::Backward);
        if (static_cast<Index>(saved.layers.size()) != L)
            fail(where, "the context holds " + std::to_string(saved.layers.size()) + " layers' tensors, expected " +
                            std::to_string(L));
        const auto checked = [&](const Matrix<Scalar>& m, const char* name, Index rows, Index cols) -> const Matrix<Scalar>& {
            check_matrix(where, std::string("the context's saved ") + name, m, rows, cols);
            return m;
        };

        const CellKind cell = cell_kind();
        auto d_gates = scratch_matrix<Scalar>(ScratchSlot::A, B * T, gate_width());
        auto d_gates_hidden = cell == CellKind::GRU ? scratch_matrix<Scalar>(ScratchSlot::B, B * T, gate_width()) : d_gates;
        Matrix<Scalar> d_input;                  // dL/d(input of layer k), (B*T, I_k)
        Matrix<Scalar> d_above;                  // dL/d(output of layer k) below the top layer
        const Scalar* d_out = dy.data.data();    // dL/d(output of layer k), (B*T, H)
        for (Index k = L - 1; k >= 0; --k) {
            LayerWeights& w = weights(k);
            const LayerSaved& ls = saved.layers[static_cast<std::size_t>(k)];
            const Matrix<Scalar>& output =
                checked(k + 1 < L ? saved.layers[static_cast<std::size_t>(k + 1)].input : saved.output, "output", B * T, H);
            const Matrix<Scalar>& input = checked(ls.input, "input", B * T, w.weight_ih.value.cols());
            const Matrix<Scalar>& h0 = checked(ls.h0, "h0", B, H);
            std::vector<Matrix<Scalar>> d_state;  // dL/d(final state), then dL/d(initial state), of layer k
            for (int j = 0; j < state_tensor_count_; ++j)
                d_state.push_back(d_final ? Matrix<Scalar>(d_final->tensors[static_cast<std::size_t>(j)].middleRows(k * B, B))
                                          : Matrix<Scalar>::Zero(B, H));
            RecurrentSaved<Scalar> rs;
            rs.y = output.data();
            rs.h0 = h0.data();
            if (cell == CellKind::LSTM || cell == CellKind::GRU) rs.gates = checked(ls.gates, "gates", B * T, gate_width()).data();
            if (cell == CellKind::LSTM) {
                rs.c0 = checked(ls.c0, "c0", B, H).data();
                rs.cells = checked(ls.cells, "cells", B * T, H).data();
            }
            if (cell == CellKind::GRU) rs.hidden_n = checked(ls.hidden_n, "hidden_n", B * T, H).data();
            RecurrentBackward<Scalar> d;
            d.d_out = d_out;
            d.dh = d_state[0].data();
            d.dc = cell == CellKind::LSTM ? d_state[1].data() : nullptr;
            d.d_gates = d_gates.data();
            d.d_gates_hidden = d_gates_hidden.data();
            recurrent_backward<Scalar>(cell, w.weight_hh.value.data(), rs, d, B, T, H);

            // The weight gradients: dW_hh needs each step's h_{t-1}, the initial state at t = 0.
            const Index I = input.cols();
            if (cell == CellKind::GRU) {  // dW_hh reads its own gate gradients (r scales W_hn h)
                auto h_prev = scratch_matrix<Scalar>(ScratchSlot::C, B * T, H);
                previous_steps(output, h0, B, T, h_prev);
                w.weight_hh.grad.noalias() += d_gates_hidden.transpose() * h_prev;  // (G*H, B*T) x (B*T, H)
                w.weight_ih.grad.noalias() += d_gates.transpose() * input;          // (G*H, B*T) x (B*T, I_k)
            } else {  // one GEMM for both: [dW_ih | dW_hh] = dgates^T [input | h_prev]
                auto both = scratch_matrix<Scalar>(ScratchSlot::C, B * T, I + H);
                parallel_for(B * T, streamed_work(I), [&](Index r0, Index r1) {
                    both.block(r0, 0, r1 - r0, I) = input.middleRows(r0, r1 - r0);
                });
                previous_steps(output, h0, B, T, both.rightCols(H));
                const Matrix<Scalar> d_weights = d_gates.transpose() * both;  // (G*H, B*T) x (B*T, I_k + H)
                w.weight_ih.grad += d_weights.leftCols(I);
                w.weight_hh.grad += d_weights.rightCols(H);
            }
            if (options_.bias) {
                add_column_sums(d_gates_hidden, w.bias_hh.grad);
                add_column_sums(d_gates, w.bias_ih.grad);
            }
            d_input.resize(B * T, w.weight_ih.value.cols());
            matmul_rows<Scalar>(d_gates, w.weight_ih.value, d_input);  // (B*T, G*H) x (G*H, I_k)

            if (d_initial) {
                if (d_initial->empty()) *d_initial = this->initial_state(B);
                set_state_of_layer(*d_initial, k, B, d_state);
            }
            if (k > 0) {
                d_above.swap(d_input);
                d_out = d_above.data();
            }
        }
        return Sequence<Scalar>(std::move(d_input), B, T);
    }

    /// One step of every layer (kernels/recurrent.hpp's recurrent_step); y is the top layer's h.
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        const Index B = x.rows();
        if (state.workspace.size() != 2 || state.workspace[0].rows() != B || state.workspace[0].cols() != gate_width())
            state.workspace = make_state(B).workspace;
        const auto weights_of = [this](Index k) {
            const LayerWeights& w = weights(k);
            return CellWeights<Scalar>{&w.weight_ih.value, &w.weight_hh.value,
                                       options_.bias ? w.bias_ih.value.data() : nullptr,
                                       options_.bias ? w.bias_hh.value.data() : nullptr};
        };
        recurrent_step<Scalar>(cell_kind(), num_layers(), weights_of, x, state.tensors[0],
                               state_tensor_count_ == 2 ? &state.tensors[1] : nullptr, state.workspace[0],
                               state.workspace[1]);
        y = state.tensors[0].middleRows((num_layers() - 1) * B, B);
    }

private:
    std::string kind_;
    RecurrentOptions options_;
    CellKind cell_;
    int gate_count_;
    int state_tensor_count_;
    std::vector<LayerWeights> layers_;
};

}  // namespace seqnn
