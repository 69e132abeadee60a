/// @file
/// realtime::CausalConv: seqnn::CausalDepthwiseConv1d (layers/causal_conv.hpp) for one
/// stream, one sample or one block at a time, with no allocation, virtual call, parallel
/// region or exception after set-up.
///
///   u[t] = b0 + sum_{k<K} w0[:, k] * x[t + k - (K-1)]   per channel, oldest input first
///   y[t] = W1 u[t] + b1                                  the pointwise conv (optional), (D, D) x (D)
///
/// The inputs live in a history of rows, each padded to whole packets (Dp) and aligned: the
/// window's K-1 rows followed by the newest inputs. A sample appends its row and reads the
/// K rows ending there, so the taps of every output are K contiguous rows and nothing is
/// shifted per sample; when the history is full, its last K-1 rows (the window) move to
/// its front, once every max_block samples. A block appends its piece's rows the same way
/// and runs the depthwise conv over all of them, then the pointwise conv over the piece.
/// The taps are kept as K rows of D channels (w0 transposed), the pointwise weight
/// column-major (realtime/detail.hpp), so both are multiply-adds on whole packets; a block
/// runs the pointwise conv four rows at a time, each load of its weight serving four rows.
#pragma once

#include "seqnn/core/aligned.hpp"
#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"
#include "seqnn/layers/causal_conv.hpp"
#include "seqnn/realtime/detail.hpp"

#include <algorithm>
#include <string>

namespace seqnn::realtime {

/// A real-time twin of seqnn::CausalDepthwiseConv1d: the layer's weights (depthwise taps,
/// optional pointwise conv, biases on or off) copied into a layout for one stream.
template <typename Scalar>
class CausalConv {
public:
    /// Copies the layer's weights. max_block: the longest block process_block runs in one
    /// pass (longer ones run in pieces); its scratch is allocated here. May allocate and throw.
    explicit CausalConv(const seqnn::CausalDepthwiseConv1d<Scalar>& layer, Index max_block = 512)
        : D_(layer.input_size()), K_(layer.kernel_size()), Dp_(detail::padded<Scalar>(D_)), max_block_(max_block),
          pointwise_(layer.options().pointwise) {
        detail::check_max_block(kName, max_block);
        const auto expect = [&](const char* what, const Matrix<Scalar>& m, Index rows, Index cols) {
            if (m.rows() != rows || m.cols() != cols)
                fail(kName, std::string(what) + " has shape " + shape_string(m) + ", expected " +
                                shape_string(rows, cols) + " for " + layer.signature());
        };
        const bool bias = layer.options().bias;
        expect("net.0.weight", layer.weight.value, D_, K_);
        if (bias) expect("net.0.bias", layer.bias.value, 1, D_);
        taps_ = detail::zeros<Scalar>(K_ * Dp_);  // (K, Dp): row k is tap k of every channel
        for (Index k = 0; k < K_; ++k)
            for (Index c = 0; c < D_; ++c) taps_[static_cast<std::size_t>(k * Dp_ + c)] = layer.weight.value(c, k);
        bias_ = detail::pack_segments<Scalar>(layer.bias.value, 1, D_, Dp_);
        if (pointwise_) {
            expect("net.1.weight", layer.pointwise_weight.value, D_, D_);
            if (bias) expect("net.1.bias", layer.pointwise_bias.value, 1, D_);
            pointwise_w_ = detail::pack_columns<Scalar>(layer.pointwise_weight.value, 1, D_, Dp_);  // (Dp, D)
            pointwise_b_ = detail::pack_segments<Scalar>(layer.pointwise_bias.value, 1, D_, Dp_);
            out_ = detail::zeros<Scalar>(4 * Dp_);
        }
        // The history: the window's K-1 rows and room for a whole piece after them.
        capacity_ = checked_add(kName, K_ - 1, max_block);
        history_ = detail::zeros<Scalar>(checked_mul(kName, capacity_, Dp_));
        u_ = detail::zeros<Scalar>(checked_mul(kName, max_block, Dp_));
        reset();
    }

    /// D, the features per sample in.
    Index input_size() const noexcept { return D_; }
    /// D, the features per sample out.
    Index output_size() const noexcept { return D_; }
    /// K, the samples each output sees.
    Index kernel_size() const noexcept { return K_; }
    /// The longest block process_block runs in one pass; longer ones run in pieces.
    Index max_block() const noexcept { return max_block_; }

    /// Back to the zero window (PyTorch's zero padding), as the layer's initial_state.
    void reset() noexcept {
        // Only the window is read before it is written; every row's padding stays zero.
        std::fill_n(history_.begin(), (K_ - 1) * Dp_, Scalar(0));
        end_ = K_ - 1;
        position_ = 0;
    }

    /// The window as layer.initial_state(1) shapes it: {window (K-1, D)}, the last K-1
    /// inputs, oldest first, with the step workspace, B = 1 and the samples consumed so far
    /// as its position. Allocates.
    State<Scalar> state() const {
        State<Scalar> s;
        s.batch = 1;
        s.position = position_;
        s.tensors.push_back(Matrix<Scalar>(K_ - 1, D_));
        for (Index j = 0; j < K_ - 1; ++j)
            std::copy_n(history_.data() + (end_ - (K_ - 1) + j) * Dp_, D_, s.tensors[0].row(j).data());
        s.workspace = {Matrix<Scalar>(1, D_)};
        return s;
    }

    /// Takes the window of one stream from the general API (initial_state(1), forward or
    /// step with B = 1, or state()); an empty state is the zero window. Throws on other shapes.
    void set_state(const State<Scalar>& state) {
        if (state.empty()) return reset();
        const std::string where = std::string(kName) + ".set_state";
        const std::string expected = "{window " + shape_string(K_ - 1, D_) + "}";
        if (state.batch > 1)
            fail(where, "the state was made for B=" + std::to_string(state.batch) + " streams; a twin runs one");
        if (!state.children.empty())
            fail(where, "the state has " + std::to_string(state.children.size()) + " child states, expected " + expected);
        if (state.tensors.size() != 1)
            fail(where, "the state has " + std::to_string(state.tensors.size()) + " tensors, expected " + expected);
        const Matrix<Scalar>& window = state.tensors[0];
        if (window.rows() != K_ - 1 || window.cols() != D_)
            fail(where, "window has shape " + shape_string(window) + ", expected " + shape_string(K_ - 1, D_) +
                            " (K-1, D) for one stream");
        reset();
        for (Index j = 0; j < K_ - 1; ++j) std::copy_n(window.row(j).data(), D_, history_.data() + j * Dp_);
        position_ = state.position;
    }

    /// One sample: x[D] -> y[D]. x is read in full before y is written, so x and y may overlap.
    void process_sample(const Scalar* x, Scalar* y) noexcept {
        if (end_ == capacity_) rewind();
        std::copy_n(x, D_, history_.data() + end_ * Dp_);
        ++end_;
        depthwise(1, u_.data());
        emit(u_.data(), 1, y);
        ++position_;
    }

    /// One block: x (steps, D) row-major and contiguous -> y (steps, D); any steps >= 0, in
    /// pieces of max_block(). Gives what as many process_sample calls give. x is read in
    /// pieces before y is written, so x and y may be the same pointer; otherwise they must
    /// not overlap.
    void process_block(const Scalar* x, Index steps, Scalar* y) noexcept {
        for (Index t0 = 0; t0 < steps; t0 += max_block_) {
            const Index T = std::min(max_block_, steps - t0);
            if (end_ + T > capacity_) rewind();
            for (Index t = 0; t < T; ++t) std::copy_n(x + (t0 + t) * D_, D_, history_.data() + (end_ + t) * Dp_);
            end_ += T;
            depthwise(T, u_.data());  // (T, Dp)
            emit(u_.data(), T, y + t0 * D_);
            position_ += T;
        }
    }

    /// process_block on Eigen matrices, x (steps, D) -> y (steps, D); throws on other shapes.
    /// Any row strides.
    void process_block(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) {
        detail::check_block<Scalar>(kName, x, y, D_, D_);
        if ((x.rows() <= 1 || x.outerStride() == D_) && (y.rows() <= 1 || y.outerStride() == D_))
            return process_block(x.data(), x.rows(), y.data());
        for (Index t = 0; t < x.rows(); ++t) process_sample(x.row(t).data(), y.row(t).data());
    }

private:
    using Pk = detail::Packet<Scalar>;
    static constexpr Index P = detail::kPacket<Scalar>;
    static constexpr const char* kName = "realtime::CausalConv";

    // The window (the history's last K-1 rows) moves to the front of the history.
    void rewind() noexcept {
        std::copy_n(history_.data() + (end_ - (K_ - 1)) * Dp_, (K_ - 1) * Dp_, history_.data());
        end_ = K_ - 1;
    }

    // u (T, Dp) for the history's last T rows: u[t] = b0 + sum_k taps[k] * row(t + k), the
    // K rows ending at the t-th of them, oldest first as the layer adds them.
    void depthwise(Index T, Scalar* u) const noexcept {
        namespace ei = Eigen::internal;
        const Scalar* first = history_.data() + (end_ - T - (K_ - 1)) * Dp_;  // the oldest row output 0 reads
        for (Index t = 0; t < T; ++t) {
            const Scalar* rows = first + t * Dp_;
            for (Index c = 0; c < Dp_; c += P) {
                Pk acc = ei::pload<Pk>(bias_.data() + c);
                for (Index k = 0; k < K_; ++k)
                    acc = ei::pmadd(ei::pload<Pk>(taps_.data() + k * Dp_ + c), ei::pload<Pk>(rows + k * Dp_ + c), acc);
                ei::pstore(u + t * Dp_ + c, acc);
            }
        }
    }

    // out (NR, Dp) = b1 + u (NR, Dp) W1^T for output packets c .. c + NC*P: NR rows share each
    // load of W1's columns. Every output is one chain of multiply-adds over the D inputs in
    // order, so its value does not depend on how rows and packets are grouped: a block gives
    // the bits of as many samples.
    template <int NR, int NC>
    EIGEN_STRONG_INLINE void pointwise_tile(const Scalar* u, Index c, Scalar* out) const noexcept {
        namespace ei = Eigen::internal;
        Pk acc[NR][NC];
        for (int j = 0; j < NC; ++j) {
            const Pk b = ei::pload<Pk>(pointwise_b_.data() + c + j * P);
            for (int r = 0; r < NR; ++r) acc[r][j] = b;
        }
        for (Index i = 0; i < D_; ++i) {
            const Scalar* column = pointwise_w_.data() + i * Dp_ + c;
            Pk w[NC];
            for (int j = 0; j < NC; ++j) w[j] = ei::pload<Pk>(column + j * P);
            for (int r = 0; r < NR; ++r) {
                const Pk x = ei::pset1<Pk>(u[r * Dp_ + i]);
                for (int j = 0; j < NC; ++j) acc[r][j] = ei::pmadd(x, w[j], acc[r][j]);
            }
        }
        for (int r = 0; r < NR; ++r)
            for (int j = 0; j < NC; ++j) ei::pstore(out + r * Dp_ + c + j * P, acc[r][j]);
    }

    // NR rows of u -> out (NR, Dp), the pointwise conv: (NR, D) x (D, D).
    template <int NR, int NC>
    void pointwise_rows(const Scalar* u, Scalar* out) const noexcept {
        Index c = 0;
        for (; c + NC * P <= Dp_; c += NC * P) pointwise_tile<NR, NC>(u, c, out);
        for (; c < Dp_; c += P) pointwise_tile<NR, 1>(u, c, out);
    }

    // T rows of u (T, Dp) -> y (T, D): the pointwise conv four rows at a time, or u itself.
    void emit(const Scalar* u, Index T, Scalar* y) noexcept {
        if (!pointwise_) {
            for (Index t = 0; t < T; ++t) std::copy_n(u + t * Dp_, D_, y + t * D_);
            return;
        }
        Index t = 0;
        for (; t + 4 <= T; t += 4) {
            pointwise_rows<4, 2>(u + t * Dp_, out_.data());
            for (Index r = 0; r < 4; ++r) std::copy_n(out_.data() + r * Dp_, D_, y + (t + r) * D_);
        }
        for (; t < T; ++t) {
            pointwise_rows<1, 8>(u + t * Dp_, out_.data());
            std::copy_n(out_.data(), D_, y + t * D_);
        }
    }

    Index D_, K_, Dp_, max_block_;
    bool pointwise_;
    Index capacity_ = 0;  // rows of the history: K-1 + max_block
    Index end_ = 0;       // one past the newest input's row; the window is the K-1 rows before it
    Index position_ = 0;  // samples since reset, or the position set_state gave

    AlignedVector<Scalar> taps_;         // (K, Dp): w0 transposed, zero padded
    AlignedVector<Scalar> bias_;         // (Dp): b0, zeros without bias
    AlignedVector<Scalar> pointwise_w_;  // (Dp, D) column-major: W1; empty without pointwise
    AlignedVector<Scalar> pointwise_b_;  // (Dp): b1, zeros without bias
    AlignedVector<Scalar> history_;      // (K-1 + max_block, Dp): the window, then the newest inputs
    AlignedVector<Scalar> u_;            // (max_block, Dp): the depthwise conv's output
    AlignedVector<Scalar> out_;          // (4, Dp): up to four rows of the pointwise conv's output
};

}  // namespace seqnn::realtime
