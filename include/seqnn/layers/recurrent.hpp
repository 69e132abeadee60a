/// @file
/// What PyTorch's nn.RNN, nn.LSTM and nn.GRU share: stacked layers with the
/// weights weight_ih_l{k} (G*H, I_k), weight_hh_l{k} (G*H, H) and the two bias
/// vectors bias_ih_l{k}, bias_hh_l{k} (G*H), a state laid out as (L, B, H), and
/// a whole-sequence forward whose input projection is one GEMM over every step
/// of every sequence. The time loop itself is kernels/recurrent.hpp; the cells
/// (rnn.hpp, lstm.hpp, gru.hpp) only name their CellKind.
///
/// PyTorch's options are all here: `bidirectional` (a second, reverse direction per
/// layer, its parameters suffixed `_reverse`, outputs [forward | reverse]), `dropout`
/// between layers in training, and the LSTM's `proj_size` (h_t = W_hr (o * tanh(c_t))).
/// A padded batch (Sequence::lengths) runs as pack_padded_sequence runs it: each
/// sequence stops at its own end, and the reverse direction starts there.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/scratch.hpp"
#include "seqnn/kernels/elementwise.hpp"
#include "seqnn/kernels/matmul.hpp"
#include "seqnn/kernels/recurrent.hpp"
#include "seqnn/layers/dropout.hpp"
#include "seqnn/nn/activations.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace seqnn {

/// Options of an RNN, LSTM or GRU, as PyTorch's constructors take them (batch_first is
/// seqnn's only layout).
struct RecurrentOptions {
    Index input_size = 0;   ///< I
    Index hidden_size = 0;  ///< H
    Index num_layers = 1;   ///< L
    bool bias = true;       ///< bias_ih and bias_hh
    /// The RNN's nonlinearity, Tanh or ReLU, as nn.RNN allows; the LSTM and GRU have their
    /// own gates and take Tanh (the default) only.
    Activation nonlinearity = Activation::Tanh;
    /// PyTorch's bidirectional: every layer also runs each sequence from its last step back
    /// to its first, with parameters of its own (`weight_ih_l{k}_reverse`, ...); the
    /// output is (B*T, 2H), [forward | reverse], and layer k > 0 reads 2H features.
    /// A bidirectional layer cannot stream (step).
    bool bidirectional = false;
    /// PyTorch's dropout: in training, each layer's output but the last's goes through
    /// Dropout(p) before the next layer reads it. Inference and step ignore it.
    double dropout = 0.0;
    /// The seed of those dropouts' masks (each layer's dropout draws from its own stream).
    std::uint64_t dropout_seed = 0;
    /// The LSTM's proj_size P (0: none; else 0 < P < H): h_t = W_hr (o_t * tanh(c_t)) with
    /// `weight_hr_l{k}` (P, H), so h, the output and weight_hh's columns are P wide.
    Index proj_size = 0;
};

/// The base of RNN, LSTM and GRU: L stacked layers of one cell kind, one or two
/// directions each, PyTorch's weights and state layout, the forward, backward and step
/// of the Layer interface.
template <typename Scalar>
class RecurrentStack : public Layer<Scalar> {
public:
    /// The parameters of one direction of layer k, as in PyTorch.
    struct LayerWeights {
        Parameter<Scalar> weight_ih;  ///< (G*H, I_k)
        Parameter<Scalar> weight_hh;  ///< (G*H, H), or (4H, P) with proj_size P
        Parameter<Scalar> bias_ih;    ///< (G*H), empty without bias
        Parameter<Scalar> bias_hh;    ///< (G*H), empty without bias
        Parameter<Scalar> weight_hr;  ///< (P, H) with proj_size P (LSTM), empty otherwise
    };

    /// "RNN", "LSTM" or "GRU".
    std::string kind() const override { return kind_; }
    /// The options the layer was made with.
    const RecurrentOptions& options() const { return options_; }
    /// H.
    Index hidden_size() const { return options_.hidden_size; }
    /// L.
    Index num_layers() const { return options_.num_layers; }
    /// 2 for a bidirectional stack, 1 otherwise.
    Index directions() const { return options_.bidirectional ? 2 : 1; }
    /// The width of h and of each direction's output, PyTorch's real hidden size: the
    /// LSTM's proj_size when it has one, H otherwise.
    Index real_hidden_size() const { return options_.proj_size > 0 ? options_.proj_size : options_.hidden_size; }
    Index input_size() const override { return options_.input_size; }
    /// directions() * real_hidden_size(): [forward | reverse] when bidirectional.
    Index output_size() const override { return directions() * real_hidden_size(); }
    /// The parameters of layer k (0 <= k < L), direction 0 (forward) or 1 (reverse).
    LayerWeights& weights(Index k, Index direction = 0) {
        return layers_.at(static_cast<std::size_t>(k * directions() + direction));
    }
    /// The parameters of layer k (0 <= k < L), direction 0 (forward) or 1 (reverse).
    const LayerWeights& weights(Index k, Index direction = 0) const {
        return layers_.at(static_cast<std::size_t>(k * directions() + direction));
    }
    /// The dropouts between layers, L - 1 of them (after layer k = 0 .. L-2), for
    /// checkpoints: their call counters are the state of their masks' generator.
    std::vector<Dropout<Scalar>*> dropouts() {
        std::vector<Dropout<Scalar>*> out;
        for (Dropout<Scalar>& d : dropouts_) out.push_back(&d);
        return out;
    }

    /// What a training forward keeps for backward, per layer k and direction d (entry k*D + d).
    struct LayerSaved {
        /// (B*T, I_k): the layer's input, x (zero past each end) for k = 0, the output of the
        /// layer below (after its dropout) above it. Kept in the forward direction's entry only.
        Matrix<Scalar> input;
        /// (B*T, H_r): this direction's h_t, in its own time order (the reverse direction's
        /// reversed within each sequence). Empty when the next layer's saved input holds it
        /// as it is (a unidirectional layer below the top, without dropout).
        Matrix<Scalar> output;
        Matrix<Scalar> h0;        ///< (B, H_r): the initial hidden state
        Matrix<Scalar> c0;        ///< (B, H): the initial cell state (LSTM only)
        Matrix<Scalar> gates;     ///< (B*T, G*H): the gate activations (LSTM, GRU)
        Matrix<Scalar> cells;     ///< (B*T, H): the LSTM's c_t
        Matrix<Scalar> hidden_n;  ///< (B*T, H): the GRU's W_hn h_{t-1} + b_hn
    };
    /// Every layer's and direction's saved tensors.
    struct Saved {
        std::vector<LayerSaved> layers;  ///< entry k*D + d, bottom layer first, forward before reverse
    };

    /// The layer's kind and sizes, as recorded in a Context by forward and checked by backward.
    std::string signature() const override {
        static constexpr const char* cell_names[] = {"RNN(tanh)", "RNN(relu)", "LSTM", "GRU"};
        return std::string(cell_names[static_cast<int>(cell_)]) + "(" + std::to_string(options_.input_size) + " -> " +
               std::to_string(options_.hidden_size) + ", L=" + std::to_string(options_.num_layers) +
               ", bias=" + (options_.bias ? "true" : "false") + (options_.bidirectional ? ", bidirectional" : "") +
               (options_.proj_size > 0 ? ", proj_size=" + std::to_string(options_.proj_size) : std::string()) +
               (options_.dropout > 0 ? ", dropout=" + number_text(options_.dropout) : std::string()) + ")";
    }

    /// PyTorch's state_dict order: per layer, the forward direction's weight_ih, weight_hh,
    /// bias_ih, bias_hh (and weight_hr), then the same with `_reverse`.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        for (Index k = 0; k < num_layers(); ++k)
            for (Index d = 0; d < directions(); ++d) {
                const std::string l = "_l" + std::to_string(k) + (d == 1 ? "_reverse" : "");
                LayerWeights& w = weights(k, d);
                out.push_back({prefix + "weight_ih" + l, &w.weight_ih});
                out.push_back({prefix + "weight_hh" + l, &w.weight_hh});
                if (options_.bias) {
                    out.push_back({prefix + "bias_ih" + l, &w.bias_ih});
                    out.push_back({prefix + "bias_hh" + l, &w.bias_hh});
                }
                if (options_.proj_size > 0) out.push_back({prefix + "weight_hr" + l, &w.weight_hr});
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
        if (options.proj_size != 0 && cell != CellKind::LSTM)
            fail(kind, "proj_size is the LSTM's option; the " + kind + " takes 0, got " +
                           std::to_string(options.proj_size));
        if (options.proj_size < 0 || options.proj_size >= options.hidden_size)
            fail(kind, "proj_size must be 0 (none) or in [1, hidden_size), got " + std::to_string(options.proj_size) +
                           " for hidden_size " + std::to_string(options.hidden_size));
        if (!(options.dropout >= 0.0 && options.dropout <= 1.0))
            fail(kind, "dropout must be a probability in [0, 1], got " + number_text(options.dropout));
        const Index D = directions(), Hr = real_hidden_size(), H = options.hidden_size, GH = gate_width();
        // Every weight count, one layer's and the stack's, must be a size seqnn allocates.
        const Index widest_input = std::max(options.input_size, checked_mul(kind, D, Hr));
        const Index layer_weights = checked_add(
            kind, checked_mul(kind, GH, checked_add(kind, widest_input, Hr)), checked_mul(kind, Hr, H));
        checked_elements(kind, checked_mul(kind, options.num_layers, D), layer_weights);
        // PyTorch initialises every weight and bias U(-1/sqrt(H), 1/sqrt(H)).
        const Scalar bound = Scalar(1) / std::sqrt(Scalar(H));
        for (Index k = 0; k < options.num_layers; ++k)
            for (Index d = 0; d < D; ++d) {
                LayerWeights w{Parameter<Scalar>(GH, k == 0 ? options.input_size : D * Hr), Parameter<Scalar>(GH, Hr),
                               {}, {}, {}};
                w.weight_ih.init_uniform(bound, rng);
                w.weight_hh.init_uniform(bound, rng);
                if (options.bias) {
                    w.bias_ih = Parameter<Scalar>(GH);
                    w.bias_hh = Parameter<Scalar>(GH);
                    w.bias_ih.init_uniform(bound, rng);
                    w.bias_hh.init_uniform(bound, rng);
                }
                if (options.proj_size > 0) {
                    w.weight_hr = Parameter<Scalar>(Hr, H);
                    w.weight_hr.init_uniform(bound, rng);
                }
                layers_.push_back(std::move(w));
            }
        dropouts_.reserve(static_cast<std::size_t>(options.num_layers - 1));
        for (Index k = 0; k + 1 < options.num_layers; ++k)
            dropouts_.emplace_back(D * Hr, options.dropout,
                                   dropout_detail::mix64(options.dropout_seed + static_cast<std::uint64_t>(k)));
    }

    /// G*H, the width of the gate matrices.
    Index gate_width() const { return gate_count_ * options_.hidden_size; }
    /// The cell the time loop runs.
    CellKind cell_kind() const { return cell_; }

    /// prev (B*T, H_r) <- the state before each step: row b*T + t is h_{t-1} of sequence b
    /// (the initial state at t = 0). `outputs` (B*T, H_r) holds h_t.
    static void previous_steps(const Matrix<Scalar>& outputs, const Matrix<Scalar>& initial, Index B, Index T,
                               MatrixRef<Scalar> prev) {
        parallel_for(B, streamed_work(T * outputs.cols()), [&](Index b0, Index b1) {
            for (Index b = b0; b < b1; ++b) {
                prev.row(b * T) = initial.row(b);
                prev.middleRows(b * T + 1, T - 1) = outputs.middleRows(b * T, T - 1);
            }
        });
    }

    /// dst (B*T, D) <- src (B*T, D) with each sequence's steps in reverse order within its
    /// length n_b: row b*T + t of dst is row b*T + n_b - 1 - t of src for t < n_b, zero past
    /// n_b (`accumulate`: added, and dst's padding left as it is). The reverse direction
    /// reads its input this way and its outputs go back this way; twice is the identity on
    /// the real rows. src and dst must not overlap.
    static void reverse_steps(ConstMatrixRef<Scalar> src, MatrixRef<Scalar> dst, Index B, Index T,
                              const std::vector<Index>& lengths, bool accumulate = false) {
        parallel_for(B, streamed_work(T * src.cols()), [&](Index b0, Index b1) {
            for (Index b = b0; b < b1; ++b) {
                const Index n = lengths.empty() ? T : lengths[static_cast<std::size_t>(b)];
                for (Index t = 0; t < n; ++t) {
                    if (accumulate)
                        dst.row(b * T + t) += src.row(b * T + n - 1 - t);
                    else
                        dst.row(b * T + t) = src.row(b * T + n - 1 - t);
                }
                if (!accumulate) dst.middleRows(b * T + n, T - n).setZero();
            }
        });
    }

    /// reverse_steps in place: each sequence's real rows of m (B*T, D) in reverse order, its
    /// padding left as it is.
    static void reverse_steps_in_place(MatrixRef<Scalar> m, Index B, Index T, const std::vector<Index>& lengths) {
        parallel_for(B, streamed_work(T * m.cols()), [&](Index b0, Index b1) {
            for (Index b = b0; b < b1; ++b) {
                const Index n = lengths.empty() ? T : lengths[static_cast<std::size_t>(b)];
                for (Index t = 0; t < n / 2; ++t) m.row(b * T + t).swap(m.row(b * T + n - 1 - t));
            }
        });
    }

    /// Rows [j*B, (j+1)*B) of every state tensor: the (B, ...) state of layer and direction
    /// j = k*D + d.
    std::vector<Matrix<Scalar>> state_of_layer(const State<Scalar>& s, Index j, Index B) const {
        std::vector<Matrix<Scalar>> out;
        for (const auto& t : s.tensors) out.emplace_back(t.middleRows(j * B, B));
        return out;
    }
    /// Writes the state of layer and direction j = k*D + d back into rows [j*B, (j+1)*B) of `s`.
    void set_state_of_layer(State<Scalar>& s, Index j, Index B, const std::vector<Matrix<Scalar>>& layer) const {
        for (std::size_t i = 0; i < layer.size(); ++i) s.tensors[i].middleRows(j * B, B) = layer[i];
    }

    /// Zero state {h (L*D*B, H_r)} (plus c (L*D*B, H) for the LSTM), PyTorch's (L*D, B, ...)
    /// with row block k*D + d for layer k, direction d; workspace for step: two (B, G*H)
    /// buffers, and a (B, H) one with a projection.
    State<Scalar> make_state(Index batch) const override {
        State<Scalar> s;
        const Index rows = num_layers() * directions() * batch;
        s.tensors.push_back(Matrix<Scalar>::Zero(rows, real_hidden_size()));
        if (state_tensor_count_ == 2) s.tensors.push_back(Matrix<Scalar>::Zero(rows, hidden_size()));
        s.workspace = {Matrix<Scalar>(batch, gate_width()), Matrix<Scalar>(batch, gate_width())};
        if (options_.proj_size > 0) s.workspace.push_back(Matrix<Scalar>(batch, hidden_size()));
        return s;
    }

    void validate_state(const State<Scalar>& state, Index batch, Call call) const override {
        const Index rows = num_layers() * directions() * batch;
        if (options_.proj_size == 0) {
            this->check_state_tensors(state, call, static_cast<std::size_t>(state_tensor_count_), rows, hidden_size());
            return;
        }
        // With a projection h is (L*D*B, P) and c (L*D*B, H).
        if (state.tensors.size() != 2)
            fail(this->where(call), "the state has " + std::to_string(state.tensors.size()) +
                                        " tensors, expected 2 (h and c)");
        const Index widths[2] = {real_hidden_size(), hidden_size()};
        for (std::size_t i = 0; i < 2; ++i)
            if (state.tensors[i].rows() != rows || state.tensors[i].cols() != widths[i])
                fail(this->where(call), std::string(i == 0 ? "h" : "c") + " has shape " +
                                            shape_string(state.tensors[i]) + ", expected " +
                                            shape_string(rows, widths[i]));
        if (!state.children.empty())
            fail(this->where(call), "the state has " + std::to_string(state.children.size()) +
                                        " child states; this layer has no children");
    }

    /// Layer by layer, each through the whole sequence (kernels/recurrent.hpp), its two
    /// directions side by side when that pays. Each direction's loop writes its columns of
    /// the layer's output straight where the next layer reads it (the next layer's saved
    /// input in training, this thread's scratch otherwise), the reverse one's rows in its
    /// own time order, reversed in place afterwards. A training forward keeps a direction's
    /// output apart instead when backward needs it as the loop wrote it and the next layer
    /// does not read it so (see LayerSaved::output), and copies it over.
    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        const Index B = x.batch, T = x.steps, H = hidden_size(), Hr = real_hidden_size(), L = num_layers();
        const Index D = directions(), O = output_size();
        State<Scalar> zeros;
        State<Scalar>& s = state ? *state : zeros;
        if (!state) s = this->initial_state(B);
        Saved* saved = ctx ? &keep_for_backward<Saved>(*ctx) : nullptr;
        if (saved) saved->layers.resize(static_cast<std::size_t>(L * D));
        if (ctx) ctx->make_children(static_cast<std::size_t>(L - 1));  // the dropouts'
        const Index* lengths = x.padded() ? x.lengths.data() : nullptr;

        Sequence<Scalar> y(uninitialised_matrix<Scalar>(B * T, O), B, T);
        const Scalar* input = x.data.data();  // (B*T, I_k): the input of layer k
        for (Index k = 0; k < L; ++k) {
            const Index I = k == 0 ? input_size() : O;
            const bool top = k + 1 == L;
            // (B*T, O): the layer's output, where the next layer reads it.
            Scalar* out = top     ? y.data.data()
                          : saved ? resized(entry(*saved, k + 1, 0).input, B * T, O).data()
                                  : scratch_matrix<Scalar>(k % 2 == 0 ? ScratchSlot::A : ScratchSlot::B, B * T, O).data();
            const bool apart = saved && !output_is_next_input(k);
            const Eigen::Map<const Matrix<Scalar>> in(input, B * T, I);
            // (B*T, I): the reverse direction's input, each sequence's steps in reverse order.
            auto reversed = scratch_matrix<Scalar>(ScratchSlot::C, B * T, D == 2 ? I : 0);
            if (D == 2) reverse_steps(in, reversed, B, T, x.lengths);

            std::vector<Matrix<Scalar>> layer_state[2];
            RecurrentForward<Scalar> f[2];
            for (Index d = 0; d < D; ++d) {
                LayerSaved* ls = saved ? &entry(*saved, k, d) : nullptr;
                layer_state[d] = state_of_layer(s, k * D + d, B);
                f[d] = forward_args(weights(k, d), d == 0 ? input : reversed.data(), I, layer_state[d], lengths);
                f[d].y = apart ? resized(ls->output, B * T, Hr).data() : out + d * Hr;
                f[d].y_stride = apart ? Hr : O;
                if (ls) {
                    if (k == 0 && d == 0) {
                        parallel_copy<Scalar>(ls->input, x.data);
                        // Zeros past each end: W_ih's gradient reads every row (times a zero
                        // gate gradient there), and x's padding may hold anything, NaN included.
                        zero_padding<Scalar>(ls->input, T, x.lengths);
                    }
                    ls->h0 = layer_state[d][0];
                    if (cell_ == CellKind::LSTM) ls->c0 = layer_state[d][1];
                    if (cell_ == CellKind::LSTM || cell_ == CellKind::GRU)
                        f[d].gates = resized(ls->gates, B * T, gate_width()).data();
                    if (cell_ == CellKind::LSTM) f[d].cells = resized(ls->cells, B * T, H).data();
                    if (cell_ == CellKind::GRU) f[d].hidden_n = resized(ls->hidden_n, B * T, H).data();
                }
            }
            const int pair = pair_threads(B, T, I);
            if (options_.proj_size > 0) {
                for (Index d = 0; d < D; ++d)
                    projected_lstm_forward<Scalar>(f[d], weights(k, d).weight_hr.value.data(), B, T, H, Hr);
            } else if (pair > 0) {
                recurrent_forward_pair<Scalar>(f[0], f[1], B, T, H, pair);
            } else {
                for (Index d = 0; d < D; ++d) recurrent_forward<Scalar>(f[d], B, T, H);
            }
            for (Index d = 0; d < D; ++d) set_state_of_layer(s, k * D + d, B, layer_state[d]);

            // The layer's output from its directions' (the reverse one's back in the input's
            // order), then the dropout after it.
            Eigen::Map<Matrix<Scalar>> layer_out(out, B * T, O);
            if (apart) {
                const Eigen::Map<const Matrix<Scalar>> forward_out(f[0].y, B * T, Hr);
                parallel_for(B * T, streamed_work(Hr), [&](Index r0, Index r1) {
                    layer_out.block(r0, 0, r1 - r0, Hr) = forward_out.middleRows(r0, r1 - r0);
                });
                if (D == 2)
                    reverse_steps(Eigen::Map<const Matrix<Scalar>>(f[1].y, B * T, Hr), layer_out.rightCols(Hr), B, T,
                                  x.lengths);
            } else if (D == 2) {
                reverse_steps_in_place(layer_out.rightCols(Hr), B, T, x.lengths);
            }
            if (saved && !top && options_.dropout > 0)
                dropouts_[static_cast<std::size_t>(k)].apply(layer_out, &ctx->children[static_cast<std::size_t>(k)]);
            input = out;
        }
        return y;
    }

    /// Layer by layer from the top, each direction backward through time
    /// (kernels/recurrent.hpp; the two side by side when that pays), then its weight
    /// gradients as one GEMM each.
    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                   const State<Scalar>* d_final, State<Scalar>* d_initial) override {
        const Index B = ctx.batch, T = ctx.steps, H = hidden_size(), Hr = real_hidden_size(), L = num_layers();
        const Index D = directions(), O = output_size(), GH = gate_width();
        const Saved& saved = saved_for_backward<Saved>(ctx);
        const std::string where = this->where(Call::Backward);
        if (static_cast<Index>(saved.layers.size()) != L * D)
            fail(where, "the context holds " + std::to_string(saved.layers.size()) + " layers' tensors, expected " +
                            std::to_string(L * D));
        if (options_.dropout > 0 && static_cast<Index>(ctx.children.size()) != L - 1)
            fail(where, "the context holds " + std::to_string(ctx.children.size()) + " dropout masks, expected " +
                            std::to_string(L - 1));
        const auto checked = [&](const Matrix<Scalar>& m, const char* name, Index rows, Index cols) -> const Matrix<Scalar>& {
            check_matrix(where, std::string("the context's saved ") + name, m, rows, cols);
            return m;
        };

        const CellKind cell = cell_kind();
        const Index* lengths = ctx.lengths.empty() ? nullptr : ctx.lengths.data();
        // The gate gradients, (B*T, G*H) each: the forward direction's in this thread's scratch.
        auto d_gates = scratch_matrix<Scalar>(ScratchSlot::A, B * T, GH);
        auto d_gates_hidden = cell == CellKind::GRU ? scratch_matrix<Scalar>(ScratchSlot::B, B * T, GH) : d_gates;
        Matrix<Scalar> d_gates_reverse, d_gates_hidden_reverse;
        Matrix<Scalar> d_out_apart[2];           // bidirectional: dL/d(each direction's output), its own time order
        Matrix<Scalar> d_input;                  // dL/d(input of layer k), (B*T, I_k)
        Matrix<Scalar> d_input_reverse;          // the reverse direction's share, in its own time order
        Matrix<Scalar> d_above;                  // dL/d(output of layer k) below the top layer
        const Scalar* d_out = dy.data.data();    // dL/d(output of layer k), (B*T, O)
        for (Index k = L - 1; k >= 0; --k) {
            const Index I = k == 0 ? input_size() : O;
            const Matrix<Scalar>& input = checked(entry(saved, k, 0).input, "input", B * T, I);
            RecurrentSaved<Scalar> rs[2];
            RecurrentBackward<Scalar> rd[2];
            std::vector<Matrix<Scalar>> d_state[2];  // dL/d(final state), then dL/d(initial state), of (k, d)
            const Matrix<Scalar>* output[2] = {nullptr, nullptr};
            for (Index d = 0; d < D; ++d) {
                const LayerSaved& ls = entry(saved, k, d);
                output[d] = &checked(D == 1 && output_is_next_input(k) ? entry(saved, k + 1, 0).input : ls.output,
                                     "output", B * T, Hr);
                rs[d].y = output[d]->data();
                rs[d].h0 = checked(ls.h0, "h0", B, Hr).data();
                if (cell == CellKind::LSTM || cell == CellKind::GRU)
                    rs[d].gates = checked(ls.gates, "gates", B * T, GH).data();
                if (cell == CellKind::LSTM) {
                    rs[d].c0 = checked(ls.c0, "c0", B, H).data();
                    rs[d].cells = checked(ls.cells, "cells", B * T, H).data();
                }
                if (cell == CellKind::GRU) rs[d].hidden_n = checked(ls.hidden_n, "hidden_n", B * T, H).data();
                for (std::size_t j = 0; j < static_cast<std::size_t>(state_tensor_count_); ++j)
                    d_state[d].push_back(d_final ? Matrix<Scalar>(d_final->tensors[j].middleRows((k * D + d) * B, B))
                                                 : Matrix<Scalar>::Zero(B, j == 0 ? Hr : H));
                // dL/d(this direction's output): its columns of d_out, the reverse one's reversed.
                const Scalar* d_out_d = d_out;
                if (D == 2) {
                    const Eigen::Map<const Matrix<Scalar>> all(d_out, B * T, O);
                    Matrix<Scalar>& mine = resized(d_out_apart[d], B * T, Hr);
                    if (d == 0)
                        mine = all.leftCols(Hr);
                    else
                        reverse_steps(all.rightCols(Hr), mine, B, T, ctx.lengths);
                    d_out_d = mine.data();
                }
                rd[d].d_out = d_out_d;
                rd[d].dh = d_state[d][0].data();
                rd[d].dc = cell == CellKind::LSTM ? d_state[d][1].data() : nullptr;
                rd[d].d_gates = d == 0 ? d_gates.data() : resized(d_gates_reverse, B * T, GH).data();
                rd[d].d_gates_hidden = cell != CellKind::GRU ? rd[d].d_gates
                                       : d == 0              ? d_gates_hidden.data()
                                                             : resized(d_gates_hidden_reverse, B * T, GH).data();
                rd[d].lengths = lengths;
            }
            const int pair = pair_threads(B, T, 0);
            if (options_.proj_size > 0) {
                for (Index d = 0; d < D; ++d) {
                    LayerWeights& w = weights(k, d);
                    projected_lstm_backward<Scalar>(w.weight_hh.value.data(), w.weight_hr.value.data(),
                                                    w.weight_hr.grad.data(), rs[d], rd[d], B, T, H, Hr);
                }
            } else if (pair > 0) {
                recurrent_backward_pair<Scalar>(cell, weights(k, 0).weight_hh.value.data(), rs[0], rd[0],
                                                weights(k, 1).weight_hh.value.data(), rs[1], rd[1], B, T, H, pair);
            } else {
                for (Index d = 0; d < D; ++d)
                    recurrent_backward<Scalar>(cell, weights(k, d).weight_hh.value.data(), rs[d], rd[d], B, T, H);
            }

            for (Index d = 0; d < D; ++d) {
                LayerWeights& w = weights(k, d);
                const Eigen::Map<const Matrix<Scalar>> dg(rd[d].d_gates, B * T, GH), dgh(rd[d].d_gates_hidden, B * T, GH);
                add_weight_gradients(w, input, d == 1, ctx.lengths, *output[d], entry(saved, k, d).h0, dg, dgh, B, T);
                // dL/d(input) = dL/d(gates) W_ih, the reverse direction's back in the input's order.
                if (d == 0) {
                    resized(d_input, B * T, I);
                    matmul_rows<Scalar>(dg, w.weight_ih.value, d_input);  // (B*T, G*H) x (G*H, I_k)
                } else {
                    resized(d_input_reverse, B * T, I);
                    matmul_rows<Scalar>(dg, w.weight_ih.value, d_input_reverse);  // (B*T, G*H) x (G*H, I_k)
                    reverse_steps(d_input_reverse, d_input, B, T, ctx.lengths, /*accumulate=*/true);
                }
                if (d_initial) {
                    if (d_initial->empty()) *d_initial = this->initial_state(B);
                    set_state_of_layer(*d_initial, k * D + d, B, d_state[d]);
                }
            }
            if (k > 0) {
                d_above.swap(d_input);
                if (options_.dropout > 0)  // through the dropout after layer k-1
                    dropouts_[static_cast<std::size_t>(k - 1)].apply_backward(d_above,
                                                                             ctx.children[static_cast<std::size_t>(k - 1)]);
                d_out = d_above.data();
            }
        }
        return Sequence<Scalar>(std::move(d_input), B, T);
    }

    /// One step of every layer (kernels/recurrent.hpp's recurrent_step; with a projection, a
    /// plain step of Eigen products); y is the top layer's h. A bidirectional stack refuses.
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (options_.bidirectional)
            fail(this->where(Call::Step), "a bidirectional " + kind() +
                                              " cannot stream: its reverse direction needs the whole sequence");
        const Index B = x.rows();
        const std::size_t buffers = options_.proj_size > 0 ? 3 : 2;
        if (state.workspace.size() != buffers || state.workspace[0].rows() != B ||
            state.workspace[0].cols() != gate_width())
            state.workspace = make_state(B).workspace;
        if (options_.proj_size > 0) {
            projected_step(x, state);
        } else {
            const auto weights_of = [this](Index k) {
                const LayerWeights& w = weights(k);
                return CellWeights<Scalar>{&w.weight_ih.value, &w.weight_hh.value,
                                           options_.bias ? w.bias_ih.value.data() : nullptr,
                                           options_.bias ? w.bias_hh.value.data() : nullptr};
            };
            recurrent_step<Scalar>(cell_kind(), num_layers(), weights_of, x, state.tensors[0],
                                   state_tensor_count_ == 2 ? &state.tensors[1] : nullptr, state.workspace[0],
                                   state.workspace[1]);
        }
        y = state.tensors[0].middleRows((num_layers() - 1) * B, B);
    }

private:
    /// Entry (k, d) of a training forward's saved tensors.
    LayerSaved& entry(Saved& saved, Index k, Index d) const {
        return saved.layers[static_cast<std::size_t>(k * directions() + d)];
    }
    /// Entry (k, d) of a training forward's saved tensors, read-only.
    const LayerSaved& entry(const Saved& saved, Index k, Index d) const {
        return saved.layers[static_cast<std::size_t>(k * directions() + d)];
    }

    /// Whether a training forward's layer k writes its output as it is into the next layer's
    /// saved input (and keeps no copy of its own): unidirectional, below the top, no dropout.
    bool output_is_next_input(Index k) const {
        return directions() == 1 && k + 1 < num_layers() && options_.dropout == 0;
    }

    /// Threads each direction gets when the two run side by side; 0: one after the other
    /// (unidirectional, a projection, or too little work for a second thread).
    int pair_threads(Index B, Index T, Index I) const {
        if (directions() != 2 || options_.proj_size > 0) return 0;
        return recurrent_pair_threads<Scalar>(cell_, B, T, I, hidden_size());
    }

    /// The time loop's arguments for one direction but its output: input x (B*T, I), the
    /// direction's state rows {h, c}.
    RecurrentForward<Scalar> forward_args(const LayerWeights& w, const Scalar* x, Index I,
                                          std::vector<Matrix<Scalar>>& layer_state, const Index* lengths) const {
        RecurrentForward<Scalar> f;
        f.cell = cell_;
        f.input_size = I;
        f.x = x;
        f.w_ih = w.weight_ih.value.data();
        f.b_ih = options_.bias ? w.bias_ih.value.data() : nullptr;
        f.w_hh = w.weight_hh.value.data();
        f.b_hh = options_.bias ? w.bias_hh.value.data() : nullptr;
        f.h = layer_state[0].data();
        f.c = cell_ == CellKind::LSTM ? layer_state[1].data() : nullptr;
        f.lengths = lengths;
        return f;
    }

    /// The weight and bias gradients of one direction from its gate gradients dg and dgh
    /// (B*T, G*H), zero past each sequence's end, so that no padding row contributes: W_ih's
    /// from the layer's input as the direction reads it (reversed for the reverse one),
    /// W_hh's from each step's h_{t-1} (the initial state at t = 0).
    void add_weight_gradients(LayerWeights& w, const Matrix<Scalar>& input, bool reverse,
                              const std::vector<Index>& lengths, const Matrix<Scalar>& output,
                              const Matrix<Scalar>& h0, ConstMatrixRef<Scalar> dg, ConstMatrixRef<Scalar> dgh, Index B,
                              Index T) {
        const Index I = input.cols(), Hr = output.cols();
        if (cell_ == CellKind::GRU) {  // dW_hh reads its own gate gradients (r scales W_hn h)
            auto h_prev = scratch_matrix<Scalar>(ScratchSlot::C, B * T, Hr);
            previous_steps(output, h0, B, T, h_prev);
            add_transposed_product<Scalar>(dgh, h_prev, w.weight_hh.grad);  // (G*H, B*T) x (B*T, H_r)
            if (reverse) {
                auto reversed = scratch_matrix<Scalar>(ScratchSlot::C, B * T, I);
                reverse_steps(input, reversed, B, T, lengths);
                add_transposed_product<Scalar>(dg, reversed, w.weight_ih.grad);  // (G*H, B*T) x (B*T, I_k)
            } else {
                add_transposed_product<Scalar>(dg, input, w.weight_ih.grad);  // (G*H, B*T) x (B*T, I_k)
            }
        } else {  // one GEMM for both: [dW_ih | dW_hh] = dgates^T [input | h_prev]
            auto both = scratch_matrix<Scalar>(ScratchSlot::C, B * T, I + Hr);
            if (reverse)
                reverse_steps(input, both.leftCols(I), B, T, lengths);
            else
                parallel_for(B * T, streamed_work(I), [&](Index r0, Index r1) {
                    both.block(r0, 0, r1 - r0, I) = input.middleRows(r0, r1 - r0);
                });
            previous_steps(output, h0, B, T, both.rightCols(Hr));
            Matrix<Scalar> d_weights = Matrix<Scalar>::Zero(dg.cols(), I + Hr);
            add_transposed_product<Scalar>(dg, both, d_weights);  // (G*H, B*T) x (B*T, I_k + H_r)
            w.weight_ih.grad += d_weights.leftCols(I);
            w.weight_hh.grad += d_weights.rightCols(Hr);
        }
        if (options_.bias && cell_ == CellKind::GRU) {
            add_column_sums(dgh, w.bias_hh.grad);
            add_column_sums(dg, w.bias_ih.grad);
        } else if (options_.bias) {  // dgh is dg: one pass over it for both biases
            Matrix<Scalar> sums = Matrix<Scalar>::Zero(1, dg.cols());
            add_column_sums(dg, sums);
            w.bias_ih.grad += sums;
            w.bias_hh.grad += sums;
        }
    }

    /// One step of an LSTM stack with a projection: per layer, the gates from x W_ih^T and
    /// h W_hh^T, c = f c + i g, h = W_hr (o tanh(c)), in the state's workspace (no allocation).
    void projected_step(ConstMatrixRef<Scalar> x, State<Scalar>& state) const {
        const Index B = x.rows(), H = hidden_size();
        Matrix<Scalar>& gates = state.workspace[0];   // (B, 4H)
        Matrix<Scalar>& hidden = state.workspace[1];  // (B, 4H)
        Matrix<Scalar>& m = state.workspace[2];       // (B, H): o * tanh(c)
        for (Index k = 0; k < num_layers(); ++k) {
            const LayerWeights& w = weights(k);
            auto h = state.tensors[0].middleRows(k * B, B);  // (B, P)
            auto c = state.tensors[1].middleRows(k * B, B);  // (B, H)
            if (k == 0)
                gates.noalias() = x * w.weight_ih.value.transpose();  // (B, I) x (I, 4H)
            else  // layer k-1's new h: (B, P) x (P, 4H)
                gates.noalias() = state.tensors[0].middleRows((k - 1) * B, B) * w.weight_ih.value.transpose();
            hidden.noalias() = h * w.weight_hh.value.transpose();  // (B, P) x (P, 4H)
            gates += hidden;
            if (options_.bias) {
                gates.rowwise() += w.bias_ih.value.row(0);
                gates.rowwise() += w.bias_hh.value.row(0);
            }
            gates.leftCols(2 * H).array() = gates.leftCols(2 * H).array().logistic();  // i, f
            gates.middleCols(2 * H, H).array() = gates.middleCols(2 * H, H).array().tanh();  // g
            gates.rightCols(H).array() = gates.rightCols(H).array().logistic();  // o
            const auto i = gates.leftCols(H).array(), f = gates.middleCols(H, H).array();
            const auto g = gates.middleCols(2 * H, H).array(), o = gates.rightCols(H).array();
            c.array() = f * c.array() + i * g;  // c_t = f c_{t-1} + i g
            m.array() = o * c.array().tanh();   // o tanh(c_t)
            h.noalias() = m * w.weight_hr.value.transpose();  // (B, H) x (H, P)
        }
    }

    std::string kind_;
    RecurrentOptions options_;
    CellKind cell_;
    int gate_count_;
    int state_tensor_count_;
    std::vector<LayerWeights> layers_;      // entry k*D + d
    std::vector<Dropout<Scalar>> dropouts_;  // after layer k, k < L - 1
};

}  // namespace seqnn
