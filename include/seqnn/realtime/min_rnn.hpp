/// @file
/// realtime::MinGRU and realtime::MinLSTM: seqnn::MinGRU and seqnn::MinLSTM (layers/mingru.hpp,
/// layers/minlstm.hpp) for one stream, one sample or one block at a time, with no allocation,
/// virtual call, parallel region or exception after set-up.
///
/// Both cells are the linear recurrence h_t = a_t * h_{t-1} + b_t with a_t, b_t from x_t
/// alone (layers/min_rnn.hpp):
///   minGRU:  a = 1 - z = sigmoid(-k),           b = z * act(h~),  z = sigmoid(k)
///   minLSTM: a = f / (f + i) = sigmoid(-d),     b = i / (f + i) * act(h~),
///            f = sigmoid(k_f), i = sigmoid(k_i), d = log(i / f)     act = identity or g
/// The layer computes the minLSTM's a and b through d (two softplus, each an exp and a
/// log1p); the twin computes the same two ratios from three exponentials and one division
/// (lstm_gates), equally safe when both gates are tiny, and each cell's sigmoid(k) and
/// sigmoid(-k) from one exponential. The outputs equal the layer's to a few roundings.
///
/// Per sample:  pre = W_in x + b_in          (G*E, D) x (D): multiply-adds over D columns
///              h   = a(pre) * h + b(pre)    one pass over the packets of E units
///              y   = W_out h + b_out        (D, E) x (E): to_out (see emit), or y = h
/// Per block, in pieces of at most max_block samples: the input projection of every sample
/// of the piece into scratch, (T, D) x (D, G*E), then the scan over the piece in time order,
/// then to_out over the piece, (T, E) x (E, D).
///
/// Layout (realtime/detail.hpp): W_in column-major with its G segments of E rows each padded
/// to whole packets (Ep) and aligned, so the projection of one input feature is one
/// multiply-add per packet. to_out maps the wide h to few features: one packet dot product
/// per output feature over W_out's rows (zero padded to Ep), or, for more outputs, W_out
/// column-major as the input projection (the form with fewer packet operations). The padded
/// units compute finite values that nothing reads: their weights and biases are zero.
#pragma once

#include "seqnn/core/aligned.hpp"
#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"
#include "seqnn/layers/mingru.hpp"
#include "seqnn/layers/minlstm.hpp"
#include "seqnn/realtime/detail.hpp"

#include <algorithm>
#include <string>

namespace seqnn::realtime {

/// What realtime::MinGRU and realtime::MinLSTM share: one stream of a unidirectional minGRU
/// or minLSTM, sample by sample or block by block. Made only through those two.
template <typename Scalar>
class MinRNN {
public:
    /// D, the features per sample in.
    Index input_size() const noexcept { return D_; }
    /// Features per sample out: D when the layer projects back with to_out, else E.
    Index output_size() const noexcept { return projects_ ? D_ : E_; }
    /// E, the width of h.
    Index hidden_size() const noexcept { return E_; }
    /// The longest block process_block runs in one pass; longer ones run in pieces.
    Index max_block() const noexcept { return max_block_; }
    /// Whether to_out maps h back to D features.
    bool projects() const noexcept { return projects_; }

    /// Back to the layer's start state: h = 0, or h = g(init_hidden_state) for a layer with
    /// a learned initial state, as the layer's initial_state gives.
    void reset() noexcept {
        std::copy(h0_.begin(), h0_.end(), h_.begin());
        learned_start_ = learns_initial_state_;
        position_ = 0;
    }

    /// The carried state as the layer's State for one stream: {h (1, E)}, with the step
    /// workspace, B = 1, the samples consumed so far as its position, and (right after
    /// reset() of a layer with a learned initial state) the layer's mark of the learned
    /// start: exactly what layer.initial_state(1) makes. Allocates.
    State<Scalar> state() const {
        State<Scalar> s;
        s.batch = 1;
        s.position = position_;
        s.tensors.push_back(Matrix<Scalar>(1, E_));
        std::copy_n(h_.data(), E_, s.tensors[0].data());
        s.workspace = {Matrix<Scalar>(1, G_ * E_)};
        if (learned_start_) s.workspace.emplace_back();  // the mark (layers/min_rnn.hpp)
        return s;
    }

    /// Takes the state of one stream from the general API (initial_state(1), forward or
    /// step with B = 1, or state()); an empty state is the layer's start, as reset().
    /// Throws on other shapes.
    void set_state(const State<Scalar>& state) {
        if (state.empty()) return reset();
        const std::string where = std::string(name_) + ".set_state";
        const std::string expected = "{h " + shape_string(1, E_) + "}";
        if (state.batch > 1)
            fail(where, "the state was made for B=" + std::to_string(state.batch) + " streams; a twin runs one");
        if (!state.children.empty())
            fail(where, "the state has " + std::to_string(state.children.size()) + " child states, expected " + expected);
        if (state.tensors.size() != 1)
            fail(where, "the state has " + std::to_string(state.tensors.size()) + " tensors, expected " + expected);
        const Matrix<Scalar>& h = state.tensors[0];
        if (h.rows() != 1 || h.cols() != E_)
            fail(where, "h has shape " + shape_string(h) + ", expected " + shape_string(1, E_) + " (1, E) for one stream");
        std::fill(h_.begin(), h_.end(), Scalar(0));
        std::copy_n(h.data(), E_, h_.data());
        // The layer takes a state for its learned start while it is marked and holds g(init).
        learned_start_ = learns_initial_state_ && state.workspace.size() > 1 && std::equal(h_.begin(), h_.end(), h0_.begin());
        position_ = state.position;
    }

    /// One sample: x[input_size()] -> y[output_size()]. x is read in full before y is
    /// written, so x and y may overlap.
    void process_sample(const Scalar* x, Scalar* y) noexcept {
        detail::project(x, D_, w_in_.data(), b_in_.data(), G_ * Ep_, pre_.data());  // (D) -> (G*Ep)
        scan(pre_.data(), 1, h_.data(), h_.data(), 0);
        emit(h_.data(), 1, 0, y);
        learned_start_ = false;
        ++position_;
    }

    /// One block: x (steps, input_size()) row-major and contiguous -> y (steps,
    /// output_size()); any steps >= 0, in pieces of at most max_block() samples (fewer where
    /// a piece's scratch would outgrow the L1 cache). Gives what as many process_sample calls
    /// give. x and y may be the same pointer when output_size() <= input_size(); otherwise
    /// they must not overlap.
    void process_block(const Scalar* x, Index steps, Scalar* y) noexcept {
        const Index R = G_ * Ep_, out = output_size();
        for (Index t0 = 0; t0 < steps; t0 += piece_) {
            const Index T = std::min(piece_, steps - t0);
            detail::project_rows(x + t0 * D_, T, D_, w_in_.data(), b_in_.data(), R, pre_.data());  // (T, D) x (D, G*Ep)
            scan(pre_.data(), T, h_.data(), hidden_.data(), Ep_);  // (T, Ep)
            std::copy_n(hidden_.data() + (T - 1) * Ep_, Ep_, h_.data());
            emit(hidden_.data(), T, Ep_, y + t0 * out);  // (T, E) x (E, D), or h itself
            learned_start_ = false;
            position_ += T;
        }
    }

    /// process_block on Eigen matrices, x (steps, input_size()) -> y (steps, output_size());
    /// throws on other shapes. Any row strides.
    void process_block(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) {
        detail::check_block<Scalar>(name_, x, y, D_, output_size());
        if ((x.rows() <= 1 || x.outerStride() == D_) && (y.rows() <= 1 || y.outerStride() == output_size()))
            return process_block(x.data(), x.rows(), y.data());
        for (Index t = 0; t < x.rows(); ++t) process_sample(x.row(t).data(), y.row(t).data());
    }

protected:
    /// Copies the weights of `layer`, whose cell has `gates` projections (2: minGRU's hidden
    /// and gate, 3: minLSTM's hidden, forget and input); `twin` names the twin in errors.
    MinRNN(const char* twin, const seqnn::MinRNN<Scalar>& layer, Index gates, Index max_block)
        : name_(twin), G_(gates), D_(layer.input_size()), E_(layer.hidden_size()), Ep_(detail::padded<Scalar>(E_)),
          max_block_(max_block), projects_(layer.projects()),
          identity_(layer.options().activation == HiddenActivation::Identity),
          learns_initial_state_(layer.learns_initial_state()) {
        detail::check_max_block(twin, max_block);
        if (layer.bidirectional())
            fail(twin, "a bidirectional " + layer.kind() + " (" + layer.signature() +
                           ") cannot stream: its reverse direction needs the whole sequence");
        const seqnn::Linear<Scalar>& in_proj = layer.in_projection();
        const auto expect = [&](const std::string& what, const Matrix<Scalar>& m, Index rows, Index cols) {
            if (m.rows() != rows || m.cols() != cols)
                fail(twin, what + " has shape " + shape_string(m) + ", expected " + shape_string(rows, cols) + " for " +
                               layer.signature());
        };
        expect("the input projection's weight", in_proj.weight.value, G_ * E_, D_);
        if (in_proj.has_bias()) expect("the input projection's bias", in_proj.bias.value, 1, G_ * E_);
        w_in_ = detail::pack_columns<Scalar>(in_proj.weight.value, G_, E_, Ep_);  // (G*Ep, D) column-major
        b_in_ = detail::pack_segments<Scalar>(in_proj.bias.value, G_, E_, Ep_);    // (G*Ep), zeros without bias
        if (projects_) {
            const seqnn::Linear<Scalar>& to_out = layer.out_projection();
            expect("to_out's weight", to_out.weight.value, D_, E_);
            if (to_out.has_bias()) expect("to_out's bias", to_out.bias.value, 1, D_);
            // The cheaper of the two forms in packet operations (as realtime::Linear chooses).
            const Index Dp = detail::padded<Scalar>(D_);
            out_columns_ = E_ * (Dp / P) < D_ * (Ep_ / P + 4);
            if (out_columns_) {
                w_out_ = detail::pack_columns<Scalar>(to_out.weight.value, 1, D_, Dp);  // (Dp, E) column-major
                b_out_ = detail::pack_segments<Scalar>(to_out.bias.value, 1, D_, Dp);
                out_ = detail::zeros<Scalar>(Dp);
            } else {
                w_out_ = detail::zeros<Scalar>(D_ * Ep_);  // (D, Ep) row-major, zero padded
                for (Index d = 0; d < D_; ++d)
                    std::copy_n(to_out.weight.value.row(d).data(), E_, w_out_.data() + d * Ep_);
                b_out_ = detail::pack_segments<Scalar>(to_out.bias.value, 1, D_, D_);
            }
        }
        h0_ = detail::zeros<Scalar>(Ep_);
        if (learns_initial_state_) {
            const Matrix<Scalar> h0 = layer.learned_h0();  // (1, E): g(init_hidden_state)
            std::copy_n(h0.data(), E_, h0_.data());
        }
        h_ = detail::zeros<Scalar>(Ep_);
        // A piece's projections and h, (G + 1) * Ep scalars a sample, stay within kPieceBytes
        // so that the scan and to_out read them back from L1.
        piece_ = std::clamp<Index>(kPieceBytes / ((G_ + 1) * Ep_ * Index(sizeof(Scalar))), 1, max_block);
        pre_ = detail::zeros<Scalar>(checked_mul(twin, piece_, G_ * Ep_));
        hidden_ = detail::zeros<Scalar>(checked_mul(twin, piece_, Ep_));
        reset();
    }

private:
    using Pk = detail::Packet<Scalar>;
    static constexpr Index P = detail::kPacket<Scalar>;
    // |k| beyond which exp(k) could overflow: 80 for float (exp(88.7) overflows), 700 for double.
    static constexpr Scalar kExpLimit = sizeof(Scalar) == 4 ? Scalar(80) : Scalar(700);

    // g(x) = max(x, 0) + sigmoid(min(x, 0)), as min_rnn_math::positive_g.
    static EIGEN_STRONG_INLINE Pk positive_g(const Pk& x) noexcept {
        namespace ei = Eigen::internal;
        const Pk zero = ei::pset1<Pk>(Scalar(0));
        return ei::padd(ei::pmax(x, zero), detail::logistic<Scalar>(ei::pmin(x, zero)));
    }

    // minGRU: z = sigmoid(k) and a = 1 - z = sigmoid(-k) from one exponential, e = exp(-k):
    // z = 1 / (1 + e), a = e z, with k clamped to where e is finite (beyond it z and a are
    // 0 and 1 to far below a rounding of 1).
    static EIGEN_STRONG_INLINE void gru_gates(const Pk& k, Pk& a, Pk& z) noexcept {
        namespace ei = Eigen::internal;
        const Pk one = ei::pset1<Pk>(Scalar(1));
        const Pk e = ei::pexp(ei::pnegate(ei::pmin(ei::pmax(k, ei::pset1<Pk>(-kExpLimit)), ei::pset1<Pk>(kExpLimit))));
        z = ei::pdiv(one, ei::padd(one, e));
        a = ei::pmul(e, z);
    }

    // minLSTM: a = f / (f + i) and z = i / (f + i) (the layer's sigmoid(-d) and sigmoid(d),
    // d = log(i / f)) without d's logarithms. As 1 + exp(-k) = exp(relu(-k)) (1 + exp(-|k|)),
    // 1/i : 1/f = exp(s) (1 + exp(-|k_i|)) : (1 + exp(-|k_f|)) with s = relu(-k_i) - relu(-k_f),
    // and a = (1/i) / (1/f + 1/i), z = (1/f) / (1/f + 1/i). Both terms are >= 1 or exp(s) times
    // that, so no ratio is 0/0 however small both gates are (the reason the layer goes through
    // d); s is clamped where exp(s) would overflow (a or z is then 0 to far below a rounding).
    static EIGEN_STRONG_INLINE void lstm_gates(const Pk& k_f, const Pk& k_i, Pk& a, Pk& z) noexcept {
        namespace ei = Eigen::internal;
        const Pk one = ei::pset1<Pk>(Scalar(1)), zero = ei::pset1<Pk>(Scalar(0));
        const Pk s = ei::psub(ei::pmax(ei::pnegate(k_i), zero), ei::pmax(ei::pnegate(k_f), zero));
        const Pk inv_i = ei::pmul(ei::pexp(ei::pmin(ei::pmax(s, ei::pset1<Pk>(-kExpLimit)), ei::pset1<Pk>(kExpLimit))),
                                  ei::padd(one, ei::pexp(ei::pnegate(ei::pabs(k_i)))));  // 1/i, times exp(-relu(-k_f))
        const Pk inv_f = ei::padd(one, ei::pexp(ei::pnegate(ei::pabs(k_f))));             // 1/f, likewise
        const Pk scale = ei::pdiv(one, ei::padd(inv_i, inv_f));
        a = ei::pmul(inv_i, scale);
        z = ei::pmul(inv_f, scale);
    }

    // T steps from h0 (Ep): pre (T, G*Ep) rows [h~ | k (| k_i)] -> h_t into h + t*stride.
    // h may be h0 when T = 1 (stride 0): each packet of h0 is read before it is written.
    template <bool Lstm, bool Identity>
    void scan_cell(const Scalar* pre, Index T, const Scalar* h0, Scalar* h, Index stride) const noexcept {
        namespace ei = Eigen::internal;
        const Index Ep = Ep_, R = G_ * Ep_;
        const Scalar* h_prev = h0;
        for (Index t = 0; t < T; ++t, pre += R) {
            Scalar* h_next = h + t * stride;
            for (Index u = 0; u < Ep; u += P) {
                const Pk hidden = ei::pload<Pk>(pre + u);
                Pk a, z;  // a and sigmoid(k), the weight of act(h~) in b
                if constexpr (Lstm)
                    lstm_gates(ei::pload<Pk>(pre + Ep + u), ei::pload<Pk>(pre + 2 * Ep + u), a, z);
                else
                    gru_gates(ei::pload<Pk>(pre + Ep + u), a, z);
                const Pk b = ei::pmul(z, Identity ? hidden : positive_g(hidden));  // z * act(h~)
                ei::pstore(h_next + u, ei::pmadd(a, ei::pload<Pk>(h_prev + u), b));  // a * h + b
            }
            h_prev = h_next;
        }
    }

    void scan(const Scalar* pre, Index T, const Scalar* h0, Scalar* h, Index stride) const noexcept {
        if (G_ == 3) {
            if (identity_)
                scan_cell<true, true>(pre, T, h0, h, stride);
            else
                scan_cell<true, false>(pre, T, h0, h, stride);
        } else {
            if (identity_)
                scan_cell<false, true>(pre, T, h0, h, stride);
            else
                scan_cell<false, false>(pre, T, h0, h, stride);
        }
    }

    // T rows of h (stride apart, Ep wide) -> y (T, output_size()): to_out on each row, or
    // the E values of h. to_out takes one of two forms, fixed at set-up:
    //  - rows: y_d = b_d + W_out[d, :] . h, one packet dot product and one horizontal sum
    //    per output, for few outputs (the usual E -> 1 of an audio model);
    //  - columns: y = b + sum_j h_j W_out[:, j] over packets of outputs, four interleaved
    //    chains of multiply-adds over the E columns, for more outputs than the dot products
    //    pay horizontal sums for.
    void emit(const Scalar* h, Index T, Index stride, Scalar* y) noexcept {
        namespace ei = Eigen::internal;
        if (!projects_) {
            for (Index t = 0; t < T; ++t) std::copy_n(h + t * stride, E_, y + t * E_);
            return;
        }
        if (out_columns_) {
            const Index Dp = static_cast<Index>(out_.size());
            for (Index t = 0; t < T; ++t, h += stride, y += D_) {
                for (Index r = 0; r < Dp; r += P) {  // (Dp, E) x (E)
                    const Scalar* w = w_out_.data() + r;
                    Pk s0 = ei::pload<Pk>(b_out_.data() + r), s1 = ei::pset1<Pk>(Scalar(0)), s2 = s1, s3 = s1;
                    Index j = 0;
                    for (; j + 4 <= E_; j += 4) {
                        s0 = ei::pmadd(ei::pset1<Pk>(h[j]), ei::pload<Pk>(w + j * Dp), s0);
                        s1 = ei::pmadd(ei::pset1<Pk>(h[j + 1]), ei::pload<Pk>(w + (j + 1) * Dp), s1);
                        s2 = ei::pmadd(ei::pset1<Pk>(h[j + 2]), ei::pload<Pk>(w + (j + 2) * Dp), s2);
                        s3 = ei::pmadd(ei::pset1<Pk>(h[j + 3]), ei::pload<Pk>(w + (j + 3) * Dp), s3);
                    }
                    for (; j < E_; ++j) s0 = ei::pmadd(ei::pset1<Pk>(h[j]), ei::pload<Pk>(w + j * Dp), s0);
                    ei::pstore(out_.data() + r, ei::padd(ei::padd(s0, s1), ei::padd(s2, s3)));
                }
                std::copy_n(out_.data(), D_, y);
            }
            return;
        }
        for (Index t = 0; t < T; ++t, h += stride, y += D_)
            for (Index d = 0; d < D_; ++d) {  // y_d = b_d + W_out[d, :] . h
                const Scalar* w = w_out_.data() + d * Ep_;
                Pk acc0 = ei::pmul(ei::pload<Pk>(w), ei::pload<Pk>(h)), acc1 = ei::pset1<Pk>(Scalar(0));
                Index k = P;
                for (; k + 2 * P <= Ep_; k += 2 * P) {  // two chains
                    acc1 = ei::pmadd(ei::pload<Pk>(w + k), ei::pload<Pk>(h + k), acc1);
                    acc0 = ei::pmadd(ei::pload<Pk>(w + k + P), ei::pload<Pk>(h + k + P), acc0);
                }
                if (k < Ep_) acc1 = ei::pmadd(ei::pload<Pk>(w + k), ei::pload<Pk>(h + k), acc1);
                y[d] = ei::predux(ei::padd(acc0, acc1)) + b_out_[static_cast<std::size_t>(d)];
            }
    }

    const char* name_;  // the twin's name in messages
    /// Bytes of scratch a piece of a block may fill: a third of a 48 KiB L1 data cache.
    static constexpr Index kPieceBytes = 16 * 1024;

    Index G_, D_, E_, Ep_, max_block_;
    Index piece_ = 1;  // samples per piece of a block: max_block, or fewer to stay in L1
    bool projects_, identity_, learns_initial_state_;
    bool out_columns_ = false;    // to_out in the columns form (see emit)
    bool learned_start_ = false;  // h is still the learned start (state() marks it)
    Index position_ = 0;          // samples since reset, or the position set_state gave

    AlignedVector<Scalar> w_in_;    // (G*Ep, D) column-major: W_in's gate segments, zero padded
    AlignedVector<Scalar> b_in_;    // (G*Ep), zeros without bias
    AlignedVector<Scalar> w_out_;   // to_out's weight: rows form (D, Ep) row-major, columns form (Dp, E)
                                    // column-major, zero padded; empty without to_out
    AlignedVector<Scalar> b_out_;   // (D) or (Dp), zeros without bias; empty without to_out
    AlignedVector<Scalar> out_;     // (Dp): one row of to_out in the columns form
    AlignedVector<Scalar> h0_;      // (Ep): zeros or g(init_hidden_state)
    AlignedVector<Scalar> h_;       // (Ep): the carried state
    AlignedVector<Scalar> pre_;     // (piece, G*Ep): a piece's input projections
    AlignedVector<Scalar> hidden_;  // (piece, Ep): a piece's h
};

/// A real-time twin of seqnn::MinGRU: the layer's weights (input projection with or without
/// bias, to_out, the learned initial state) copied into a layout for one stream.
template <typename Scalar>
class MinGRU : public MinRNN<Scalar> {
public:
    /// Copies the layer's weights. Refuses a bidirectional layer. max_block: the longest
    /// block process_block runs in one pass (longer ones run in pieces); its scratch is
    /// allocated here. May allocate and throw.
    explicit MinGRU(const seqnn::MinGRU<Scalar>& layer, Index max_block = 512)
        : MinRNN<Scalar>("realtime::MinGRU", layer, 2, max_block) {}
};

/// A real-time twin of seqnn::MinLSTM: the layer's weights (input projection with or without
/// bias, to_out, the learned initial state) copied into a layout for one stream.
template <typename Scalar>
class MinLSTM : public MinRNN<Scalar> {
public:
    /// Copies the layer's weights. Refuses a bidirectional layer. max_block: the longest
    /// block process_block runs in one pass (longer ones run in pieces); its scratch is
    /// allocated here. May allocate and throw.
    explicit MinLSTM(const seqnn::MinLSTM<Scalar>& layer, Index max_block = 512)
        : MinRNN<Scalar>("realtime::MinLSTM", layer, 3, max_block) {}
};

}  // namespace seqnn::realtime
