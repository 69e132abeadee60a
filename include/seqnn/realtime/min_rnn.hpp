// The real-time twins of MinGRU and MinLSTM (layers/mingru.hpp, layers/minlstm.hpp): one
// stream, one sample or one block at a time, with no allocation, no OpenMP region, no
// virtual call and no exception once made.
//
// Both cells are the linear recurrence h_t = a_t * h_{t-1} + b_t, with a_t and b_t from
// x_t alone (min_rnn.hpp). Written with one gate value k per channel, both are
//   a = sigmoid(-k),  b = sigmoid(k) * act(h~)
// minGRU:  k = the gate's pre-activation (z = sigmoid(k), a = 1 - z)
// minLSTM: k = d = softplus(-k_f) - softplus(-k_i) = log(i / f), so that
//          a = f / (f + i) and b = i / (f + i) * act(h~)
// which is how the layer computes its coefficients; the twin evaluates the same formulas
// in the same order, so its outputs equal the layer's to rounding.
//
// Per sample:  pre = b_in + x W_in^T        (1, D) x (D, G*E): D vectorised axpys
//              h   = a(pre) * h + b(pre)    one element-wise pass over E
//              y   = h W_out^T + b_out      (1, E) x (E, D): D dot products, or y = h
// Per block, in pieces of at most max_block samples:
//              pre = X W_in^T + b_in        (T, D) x (D, G*E): one product into scratch
//              the scan over the piece's T rows, in time order
//              Y   = H W_out^T + b_out      (T, E) x (E, D): one product
// The input weight is kept as W_in^T (D, G*E) row-major, i.e. W_in column-major: a
// row of pre is sum_i x_i W_in[:, i], wide vectorised axpys without horizontal sums (an
// input of one feature is a single scaled copy). to_out maps the wide h to few features,
// so it keeps the layer's row-major (D, E) W_out and takes D vectorised dot products.
//
// Products are Eigen lazy (coefficient-based) products: never Eigen's GEMM, which may
// enter an OpenMP region or take heap memory for its blocks.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"
#include "seqnn/layers/mingru.hpp"
#include "seqnn/layers/minlstm.hpp"

#include <algorithm>
#include <string>

namespace seqnn::realtime {

/// What realtime::MinGRU and realtime::MinLSTM share: one stream of a unidirectional
/// minGRU or minLSTM, sample by sample or block by block. Made only through those two.
template <typename Scalar>
class MinRNN {
public:
    /// D, the features per sample in.
    Index input_size() const noexcept { return input_size_; }
    /// Features per sample out: D when the layer projects back with to_out, else E.
    Index output_size() const noexcept { return projects_ ? input_size_ : hidden_size_; }
    /// E, the width of h.
    Index hidden_size() const noexcept { return hidden_size_; }
    /// The longest block process_block runs in one pass; longer ones run in pieces.
    Index max_block() const noexcept { return max_block_; }
    /// Whether to_out maps h back to D features.
    bool projects() const noexcept { return projects_; }

    /// Back to the layer's start state: h = 0, or h = g(init_hidden_state) for a layer
    /// with a learned initial state, as the layer's initial_state gives.
    void reset() noexcept {
        h_ = h0_;
        learned_start_ = learns_initial_state_;
        position_ = 0;
    }

    /// The carried state as the layer's State for one stream: {h (1, E)} with the step
    /// workspace, the samples consumed as its position, and (right after reset() of a layer
    /// with a learned initial state) the layer's mark of the learned start, exactly as
    /// layer.initial_state(1) makes it. Allocates.
    State<Scalar> state() const {
        State<Scalar> s;
        s.tensors.push_back(Matrix<Scalar>(h_));
        s.workspace = {Matrix<Scalar>(1, gate_count_ * hidden_size_)};
        if (learned_start_) s.workspace.emplace_back();  // the layer's mark: see layers/min_rnn.hpp
        s.batch = 1;
        s.position = position_;
        return s;
    }

    /// Continues from a state of the layer for one stream (from its initial_state(1),
    /// forward or step, or from state()). Throws when its shape is not {h (1, E)}.
    void set_state(const State<Scalar>& state) {
        const std::string where = name_ + ".set_state";
        if (state.batch != 0 && state.batch != 1)
            fail(where, "the state was made for " + std::to_string(state.batch) + " streams; the twin runs one");
        if (!state.children.empty())
            fail(where, "the state has " + std::to_string(state.children.size()) +
                            " child states; expected none, {h (1, " + std::to_string(hidden_size_) + ")}");
        if (state.tensors.size() != 1)
            fail(where, "the state has " + std::to_string(state.tensors.size()) + " tensors, expected 1: {h (1, " +
                            std::to_string(hidden_size_) + ")}");
        check_matrix(where, "state tensor h", state.tensors[0], 1, hidden_size_);
        h_ = state.tensors[0];
        // The layer treats a state as its learned start while it is marked and holds g(init).
        learned_start_ = learns_initial_state_ && state.workspace.size() > 1 && h_ == h0_;
        position_ = state.position;
    }

    /// One sample: x[input_size()] -> y[output_size()]. x and y may be the same pointer
    /// (in place) when input_size() == output_size(); otherwise they must not overlap.
    void process_sample(const Scalar* x, Scalar* y) noexcept {
        Scalar* pre = pre_.data();  // (1, G*E), the first row of the block scratch
        project(x, 1, pre);
        advance(pre, h_.data(), h_.data());
        if (projects_)
            output(h_.data(), 1, y);
        else
            std::copy(h_.data(), h_.data() + hidden_size_, y);
        learned_start_ = false;
        ++position_;
    }

    /// `steps` samples, x (steps, input_size()) -> y (steps, output_size()), both row-major
    /// and contiguous; any steps >= 0 (pieces of max_block()). Gives what as many
    /// process_sample calls give. x and y may be the same pointer (in place) when
    /// input_size() == output_size(); otherwise they must not overlap.
    void process_block(const Scalar* x, Index steps, Scalar* y) noexcept {
        const Index in = input_size_, out = output_size();
        for (Index done = 0; done < steps;) {
            const Index n = std::min(max_block_, steps - done);
            run_piece(x + done * in, n, y + done * out);
            done += n;
        }
    }

    /// The same with Eigen matrices, x (T, input_size()) -> y (T, output_size()) (views
    /// allowed); throws on a wrong shape before any work.
    void process_block(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) {
        if (x.cols() != input_size_)  // messages are built only on failure: the right shapes allocate nothing
            fail(name_ + ".process_block",
                 "x has shape " + shape_string(x) + ", expected (T, " + std::to_string(input_size_) + ")");
        if (y.rows() != x.rows() || y.cols() != output_size())
            fail(name_ + ".process_block",
                 "y has shape " + shape_string(y) + ", expected " + shape_string(x.rows(), output_size()));
        if (x.outerStride() == x.cols() && y.outerStride() == y.cols()) {
            process_block(x.data(), x.rows(), y.data());
        } else {  // rows with gaps between them: one sample at a time
            for (Index t = 0; t < x.rows(); ++t) process_sample(x.row(t).data(), y.row(t).data());
        }
    }

protected:
    /// Copies the weights of `layer` (gate_count 2: minGRU, 3: minLSTM); `name` is the
    /// twin's name in messages.
    MinRNN(const std::string& name, const seqnn::MinRNN<Scalar>& layer, int gate_count, Index max_block)
        : name_(name), gate_count_(gate_count) {
        if (layer.bidirectional())
            fail(name_, "cannot stream " + layer.signature() +
                            ": it is bidirectional, and its reverse direction needs the whole sequence (run the "
                            "layer's forward on whole sequences, or use a unidirectional layer)");
        if (max_block <= 0) fail(name_, "max_block must be positive, got " + std::to_string(max_block));
        input_size_ = layer.input_size();
        hidden_size_ = layer.hidden_size();
        projects_ = layer.projects();
        identity_ = layer.options().activation == HiddenActivation::Identity;
        learns_initial_state_ = layer.learns_initial_state();
        max_block_ = max_block;
        const Index D = input_size_, E = hidden_size_, GE = gate_count_ * E;

        const Linear<Scalar>& in_proj = layer.in_projection();
        if (in_proj.in_features() != D || in_proj.out_features() != GE)
            fail(name_, "the input projection of " + layer.signature() + " has weight " +
                            shape_string(in_proj.weight.value) + ", expected " + shape_string(GE, D));
        w_in_t_ = in_proj.weight.value.transpose();  // (D, G*E): W_in column-major
        b_in_ = in_proj.has_bias() ? RowVector<Scalar>(in_proj.bias.value.row(0)) : RowVector<Scalar>::Zero(GE);
        if (projects_) {
            const Linear<Scalar>& to_out = layer.out_projection();
            if (to_out.in_features() != E || to_out.out_features() != D)
                fail(name_, "to_out of " + layer.signature() + " has weight " + shape_string(to_out.weight.value) +
                                ", expected " + shape_string(D, E));
            w_out_ = to_out.weight.value;  // (D, E)
            b_out_ = to_out.has_bias() ? RowVector<Scalar>(to_out.bias.value.row(0)) : RowVector<Scalar>::Zero(D);
        }
        h0_ = learns_initial_state_ ? RowVector<Scalar>(layer.learned_h0().row(0)) : RowVector<Scalar>::Zero(E);

        // Scratch for the longest piece: pre (max_block, G*E), and h (max_block, E) when
        // to_out reads it afterwards.
        checked_elements(name_ + " scratch", max_block, GE);
        pre_.resize(max_block, GE);
        if (projects_) hidden_.resize(max_block, E);
        reset();
    }

private:
    using RowMap = Eigen::Map<Matrix<Scalar>>;
    using ConstRowMap = Eigen::Map<const Matrix<Scalar>>;
    using ArrayMap = Eigen::Map<Eigen::Array<Scalar, 1, Eigen::Dynamic>>;
    using ConstArrayMap = Eigen::Map<const Eigen::Array<Scalar, 1, Eigen::Dynamic>>;

    // pre = x W_in^T + b_in for n rows: x (n, D) -> pre (n, G*E), both contiguous.
    void project(const Scalar* x, Index n, Scalar* pre) const noexcept {
        const Index D = input_size_, GE = w_in_t_.cols();
        RowMap p(pre, n, GE);
        if (D == 1) {  // one feature: a scaled copy of W_in's column per row
            const auto w = w_in_t_.row(0);
            for (Index t = 0; t < n; ++t) p.row(t) = b_in_ + x[t] * w;
        } else {
            p.noalias() = ConstRowMap(x, n, D).lazyProduct(w_in_t_) + b_in_.replicate(n, 1);  // (n, D) x (D, G*E)
        }
    }

    // One step of the recurrence from a row of pre [h~ | k (| k_i)] (G*E): h_next = a * h_prev
    // + b. h_next may be h_prev. For the minLSTM, d overwrites pre's k_f block first.
    void advance(Scalar* pre, const Scalar* h_prev, Scalar* h_next) const noexcept {
        const Index E = hidden_size_;
        const ConstArrayMap hidden(pre, E);
        ArrayMap k(pre + E, E);
        if (gate_count_ == 3)  // d = log(i / f), as MinLSTM::coefficients
            k = min_rnn_math::softplus(-k) - min_rnn_math::softplus(-ConstArrayMap(pre + 2 * E, E));
        const ConstArrayMap h(h_prev, E);
        ArrayMap h_out(h_next, E);
        if (identity_)
            h_out = (-k).logistic() * h + k.logistic() * hidden;
        else
            h_out = (-k).logistic() * h + k.logistic() * min_rnn_math::positive_g<Scalar>(hidden);
    }

    // y = h W_out^T + b_out for n rows: h (n, E) -> y (n, D), both contiguous.
    void output(const Scalar* h, Index n, Scalar* y) const noexcept {
        RowMap(y, n, input_size_).noalias() =
            ConstRowMap(h, n, hidden_size_).lazyProduct(w_out_.transpose()) + b_out_.replicate(n, 1);  // (n, E) x (E, D)
    }

    // n <= max_block samples: the projection into pre, the scan writing h row by row (into
    // y itself when there is no to_out), then to_out over the whole piece.
    void run_piece(const Scalar* x, Index n, Scalar* y) noexcept {
        const Index E = hidden_size_, GE = pre_.cols();
        project(x, n, pre_.data());  // (n, D) x (D, G*E)
        Scalar* h = projects_ ? hidden_.data() : y;  // (n, E)
        const Scalar* h_prev = h_.data();
        for (Index t = 0; t < n; ++t) {
            advance(pre_.data() + t * GE, h_prev, h + t * E);
            h_prev = h + t * E;
        }
        std::copy(h_prev, h_prev + E, h_.data());
        if (projects_) output(h, n, y);  // (n, E) x (E, D)
        learned_start_ = false;
        position_ += n;
    }

    std::string name_;
    int gate_count_ = 2;
    Index input_size_ = 0;
    Index hidden_size_ = 0;
    Index max_block_ = 0;
    bool projects_ = false;
    bool identity_ = false;
    bool learns_initial_state_ = false;
    bool learned_start_ = false;  // h is still the layer's learned start (state() marks it)
    Index position_ = 0;          // samples since reset, or the position set_state gave

    Matrix<Scalar> w_in_t_;   // (D, G*E): W_in^T row-major, i.e. W_in column-major
    RowVector<Scalar> b_in_;  // (G*E), zeros without bias
    Matrix<Scalar> w_out_;    // (D, E), row-major; empty without to_out
    RowVector<Scalar> b_out_; // (D), zeros without bias
    RowVector<Scalar> h0_;    // (E): zeros or g(init_hidden_state)
    RowVector<Scalar> h_;     // (E): the carried state
    Matrix<Scalar> pre_;      // (max_block, G*E) scratch
    Matrix<Scalar> hidden_;   // (max_block, E) scratch, when projecting
};

/// The real-time twin of seqnn::MinGRU: one stream, no allocation after construction.
template <typename Scalar>
class MinGRU : public MinRNN<Scalar> {
public:
    /// Copies the layer's weights (input projection, to_out, learned initial state);
    /// refuses a bidirectional layer. Blocks longer than max_block run in pieces.
    explicit MinGRU(const seqnn::MinGRU<Scalar>& layer, Index max_block = 512)
        : MinRNN<Scalar>("realtime::MinGRU", layer, 2, max_block) {}
};

/// The real-time twin of seqnn::MinLSTM: one stream, no allocation after construction.
template <typename Scalar>
class MinLSTM : public MinRNN<Scalar> {
public:
    /// Copies the layer's weights (input projection, to_out, learned initial state);
    /// refuses a bidirectional layer. Blocks longer than max_block run in pieces.
    explicit MinLSTM(const seqnn::MinLSTM<Scalar>& layer, Index max_block = 512)
        : MinRNN<Scalar>("realtime::MinLSTM", layer, 3, max_block) {}
};

}  // namespace seqnn::realtime
