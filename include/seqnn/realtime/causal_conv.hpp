// The real-time twin of CausalDepthwiseConv1d (layers/causal_conv.hpp): one stream, one
// sample or one block at a time, with no allocation, no OpenMP region, no virtual call
// and no exception once made.
//
//   u[t] = b0 + sum_{k<K} w0[:, k] * x[t + k - (K-1)]   per channel, x[s < 0] from the window
//   y[t] = u[t] W1^T + b1                                pointwise (optional), (1, D) x (D, D)
//
// The window holds the last K-1 inputs as a ring of K-1 rows: a sample overwrites the
// oldest row and moves the ring's start, so nothing is shifted. The taps are kept as
// rows, w0^T (K, D), so each tap is one vectorised multiply-add over the D channels, in
// the layer's order (oldest input first); the pointwise weight as W1^T (D, D) row-major,
// so its product is D vectorised axpys. A block computes u for every sample of the piece
// into scratch, then the pointwise product over the whole piece at once.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"
#include "seqnn/layers/causal_conv.hpp"

#include <algorithm>
#include <string>

namespace seqnn::realtime {

/// The real-time twin of seqnn::CausalDepthwiseConv1d: one stream, no allocation after
/// construction.
template <typename Scalar>
class CausalConv {
public:
    /// Copies the layer's weights (depthwise taps, pointwise weight, biases). Blocks longer
    /// than max_block run in pieces.
    explicit CausalConv(const seqnn::CausalDepthwiseConv1d<Scalar>& layer, Index max_block = 512)
        : channels_(layer.input_size()), kernel_size_(layer.kernel_size()), max_block_(max_block),
          pointwise_(layer.options().pointwise) {
        if (max_block <= 0) fail(name(), "max_block must be positive, got " + std::to_string(max_block));
        const Index D = channels_, K = kernel_size_;
        check_matrix(name(), "the depthwise weight of " + layer.signature(), layer.weight.value, D, K);
        taps_ = layer.weight.value.transpose();  // (K, D): row k is tap k of every channel
        bias_ = layer.options().bias ? RowVector<Scalar>(layer.bias.value.row(0)) : RowVector<Scalar>::Zero(D);
        if (pointwise_) {
            check_matrix(name(), "the pointwise weight of " + layer.signature(), layer.pointwise_weight.value, D, D);
            pointwise_t_ = layer.pointwise_weight.value.transpose();  // (D, D): W1^T
            pointwise_bias_ = layer.options().bias ? RowVector<Scalar>(layer.pointwise_bias.value.row(0))
                                                   : RowVector<Scalar>::Zero(D);
        }
        window_.resize(K - 1, D);
        checked_elements(name() + " scratch", max_block, D);
        u_.resize(max_block, D);
        reset();
    }

    /// D, the features per sample in.
    Index input_size() const noexcept { return channels_; }
    /// D, the features per sample out.
    Index output_size() const noexcept { return channels_; }
    /// K, the samples each output sees.
    Index kernel_size() const noexcept { return kernel_size_; }
    /// The longest block process_block runs in one pass; longer ones run in pieces.
    Index max_block() const noexcept { return max_block_; }

    /// Back to the zero window (PyTorch's zero padding), as the layer's initial_state.
    void reset() noexcept {
        window_.setZero();
        oldest_ = 0;
        position_ = 0;
    }

    /// The window as the layer's State for one stream: {window (K-1, D)}, oldest input
    /// first, with the step workspace and the samples consumed as its position. Allocates.
    State<Scalar> state() const {
        const Index K1 = kernel_size_ - 1;
        State<Scalar> s;
        Matrix<Scalar> window(K1, channels_);
        for (Index j = 0; j < K1; ++j) window.row(j) = window_.row(ring_row(j));
        s.tensors.push_back(std::move(window));
        s.workspace = {Matrix<Scalar>(1, channels_)};
        s.batch = 1;
        s.position = position_;
        return s;
    }

    /// Continues from a state of the layer for one stream (from its initial_state(1),
    /// forward or step, or from state()). Throws when its shape is not {window (K-1, D)}.
    void set_state(const State<Scalar>& state) {
        const std::string where = name() + ".set_state";
        const std::string expected = "{window " + shape_string(kernel_size_ - 1, channels_) + "}";
        if (state.batch != 0 && state.batch != 1)
            fail(where, "the state was made for " + std::to_string(state.batch) + " streams; the twin runs one");
        if (!state.children.empty())
            fail(where, "the state has " + std::to_string(state.children.size()) + " child states; expected " + expected);
        if (state.tensors.size() != 1)
            fail(where, "the state has " + std::to_string(state.tensors.size()) + " tensors, expected 1: " + expected);
        check_matrix(where, "state tensor window", state.tensors[0], kernel_size_ - 1, channels_);
        window_ = state.tensors[0];
        oldest_ = 0;
        position_ = state.position;
    }

    /// One sample: x[D] -> y[D]. x and y may be the same pointer (in place); otherwise
    /// they must not overlap.
    void process_sample(const Scalar* x, Scalar* y) noexcept {
        Scalar* u = u_.data();  // (1, D), the first row of the block scratch
        depthwise(x, 0, u);
        push(x);
        finish(u, 1, y);
        ++position_;
    }

    /// `steps` samples, x (steps, D) -> y (steps, D), both row-major and contiguous; any
    /// steps >= 0 (pieces of max_block()). Gives what as many process_sample calls give.
    /// x and y may be the same pointer (in place); otherwise they must not overlap.
    void process_block(const Scalar* x, Index steps, Scalar* y) noexcept {
        const Index D = channels_;
        for (Index done = 0; done < steps;) {
            const Index n = std::min(max_block_, steps - done);
            run_piece(x + done * D, n, y + done * D);
            done += n;
        }
    }

    /// The same with Eigen matrices, x (T, D) -> y (T, D) (views allowed); throws on a
    /// wrong shape before any work.
    void process_block(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) {
        if (x.cols() != channels_)  // messages are built only on failure: the right shapes allocate nothing
            fail(name() + ".process_block",
                 "x has shape " + shape_string(x) + ", expected (T, " + std::to_string(channels_) + ")");
        if (y.rows() != x.rows() || y.cols() != channels_)
            fail(name() + ".process_block",
                 "y has shape " + shape_string(y) + ", expected " + shape_string(x.rows(), channels_));
        if (x.outerStride() == x.cols() && y.outerStride() == y.cols()) {
            process_block(x.data(), x.rows(), y.data());
        } else {  // rows with gaps between them: one sample at a time
            for (Index t = 0; t < x.rows(); ++t) process_sample(x.row(t).data(), y.row(t).data());
        }
    }

private:
    using RowMap = Eigen::Map<Matrix<Scalar>>;
    using ConstRowMap = Eigen::Map<const Matrix<Scalar>>;
    using ArrayMap = Eigen::Map<Eigen::Array<Scalar, 1, Eigen::Dynamic>>;
    using ConstArrayMap = Eigen::Map<const Eigen::Array<Scalar, 1, Eigen::Dynamic>>;

    static std::string name() { return "realtime::CausalConv"; }

    // The ring row holding the j-th oldest input of the window (0 <= j < K-1).
    Index ring_row(Index j) const noexcept {
        const Index r = oldest_ + j;
        return r >= kernel_size_ - 1 ? r - (kernel_size_ - 1) : r;
    }

    // u = b0 + sum_k w0[:, k] * input[t + k - (K-1)], for sample t of a piece x whose
    // earlier inputs (t + k - (K-1) < 0) are in the window, added oldest first as the layer does.
    void depthwise(const Scalar* x, Index t, Scalar* u) const noexcept {
        const Index D = channels_, K = kernel_size_;
        ArrayMap out(u, D);
        out = bias_.array();
        for (Index k = 0; k < K; ++k) {
            const Index s = t + k - (K - 1);
            const Scalar* in = s >= 0 ? x + s * D : window_.data() + ring_row(K - 1 + s) * D;
            out += taps_.row(k).array() * ConstArrayMap(in, D);
        }
    }

    // The window takes x as its newest input, over its oldest.
    void push(const Scalar* x) noexcept {
        if (kernel_size_ == 1) return;
        std::copy(x, x + channels_, window_.data() + oldest_ * channels_);
        oldest_ = oldest_ + 1 == kernel_size_ - 1 ? 0 : oldest_ + 1;
    }

    // y = u W1^T + b1 (or y = u) for n rows.
    void finish(const Scalar* u, Index n, Scalar* y) const noexcept {
        const Index D = channels_;
        if (pointwise_)
            RowMap(y, n, D).noalias() =
                ConstRowMap(u, n, D).lazyProduct(pointwise_t_) + pointwise_bias_.replicate(n, 1);  // (n, D) x (D, D)
        else
            std::copy(u, u + n * D, y);
    }

    // n <= max_block samples: u for each into scratch, the window moved past them, then
    // the pointwise product over the whole piece (so y may be x).
    void run_piece(const Scalar* x, Index n, Scalar* y) noexcept {
        const Index D = channels_, K1 = kernel_size_ - 1;
        for (Index t = 0; t < n; ++t) depthwise(x, t, u_.data() + t * D);
        if (n >= K1) {  // the window becomes the piece's last K-1 inputs
            std::copy(x + (n - K1) * D, x + n * D, window_.data());
            oldest_ = 0;
        } else {
            for (Index t = 0; t < n; ++t) push(x + t * D);
        }
        finish(u_.data(), n, y);
        position_ += n;
    }

    Index channels_ = 0;
    Index kernel_size_ = 0;
    Index max_block_ = 0;
    bool pointwise_ = false;
    Index oldest_ = 0;    // the ring row of the oldest input in the window
    Index position_ = 0;  // samples since reset, or the position set_state gave

    Matrix<Scalar> taps_;                // (K, D): w0^T
    RowVector<Scalar> bias_;             // (D), zeros without bias
    Matrix<Scalar> pointwise_t_;         // (D, D): W1^T, row-major; empty without pointwise
    RowVector<Scalar> pointwise_bias_;   // (D), zeros without bias
    Matrix<Scalar> window_;              // (K-1, D): the last K-1 inputs, a ring from row oldest_
    Matrix<Scalar> u_;                   // (max_block, D) scratch: the depthwise output
};

}  // namespace seqnn::realtime
