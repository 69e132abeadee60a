// Causal depthwise convolution over time, the short convolution of the minGRU
// language model (kernel 4 in the paper, 3 in lucidrains/minGRU-pytorch), followed by
// a pointwise (1x1) convolution that mixes channels:
//   u[t] = b0 + sum_{k<K} w0[:, k] * x[t + k - (K-1)]      (per channel; x[s < 0] from the state)
//   y[t] = u[t] W1^T + b1                                   (pointwise, W1 (D, D))
// which is PyTorch's nn.Sequential(nn.Conv1d(D, D, K, groups=D), nn.Conv1d(D, D, 1))
// applied to x left-padded with K-1 zeros (a cross-correlation, as Conv1d computes).
//
// Parameters, named as lucidrains' CausalDepthWiseConv1d.net:
//   net.0.weight  (D, 1, K), stored as a (D, K) matrix      net.0.bias (D)
//   net.1.weight  (D, D, 1), stored as a (D, D) matrix      net.1.bias (D)
// (both omitted for net.1 when pointwise is false).
//
// State: {window (B*(K-1), D)}: the last K-1 inputs of each stream, oldest first
// (row b*(K-1) + j). Zeros are PyTorch's zero padding, so a stream can be fed in
// chunks and step by step, which lucidrains' version cannot (it disables caching
// with a conv).
//
// Padded batches (Sequence::lengths): a causal output sees no later input, so the real
// outputs of sequence b (t < lengths[b]) read only its real inputs and the initial window.
// The padding's outputs are not computed (the layer contract makes them zero), the final
// window holds each sequence's own last K-1 real inputs (preceded by the initial window's
// last rows when the sequence is shorter than K-1, as running it alone gives), and the
// padding's inputs reach no gradient, whatever they hold.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/kernels/elementwise.hpp"
#include "seqnn/kernels/matmul.hpp"
#include "seqnn/nn/linear.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace seqnn {

/// The sizes of a CausalDepthwiseConv1d.
struct CausalConvOptions {
    Index channels = 0;     ///< D
    Index kernel_size = 4;  ///< K
    bool pointwise = true;  ///< the 1x1 channel-mixing conv after the depthwise one
    /// Whether the convolutions have biases.
    bool bias = true;
};

/// A causal depthwise 1-D convolution over time, optionally followed by a pointwise one.
template <typename Scalar>
class CausalDepthwiseConv1d : public Layer<Scalar> {
public:
    Parameter<Scalar> weight;            ///< (D, K), PyTorch shape (D, 1, K)
    Parameter<Scalar> bias;              ///< (D), empty without bias
    Parameter<Scalar> pointwise_weight;  ///< (D, D), PyTorch shape (D, D, 1); empty without pointwise
    Parameter<Scalar> pointwise_bias;    ///< (D), empty without pointwise or bias

    /// PyTorch's Conv1d initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight
    /// and bias, fan_in = K for the depthwise conv and D for the pointwise one.
    CausalDepthwiseConv1d(CausalConvOptions options, Rng& rng) : options_(options) {
        const Index D = options.channels, K = options.kernel_size;
        if (D <= 0 || K <= 0)
            fail("CausalDepthwiseConv1d", "channels and kernel_size must be positive, got " + std::to_string(D) +
                                              ", " + std::to_string(K));
        if (options.pointwise) checked_elements("CausalDepthwiseConv1d", D, D);  // before anything is allocated
        weight = Parameter<Scalar>(D, K);
        weight.shape = {D, 1, K};
        const Scalar bound0 = Scalar(1) / std::sqrt(Scalar(K));
        weight.init_uniform(bound0, rng);
        if (options.bias) {
            bias = Parameter<Scalar>(D);
            bias.init_uniform(bound0, rng);
        }
        if (options.pointwise) {
            pointwise_weight = Parameter<Scalar>(D, D);
            pointwise_weight.shape = {D, D, 1};
            const Scalar bound1 = Scalar(1) / std::sqrt(Scalar(D));
            pointwise_weight.init_uniform(bound1, rng);
            if (options.bias) {
                pointwise_bias = Parameter<Scalar>(D);
                pointwise_bias.init_uniform(bound1, rng);
            }
        }
    }

    std::string kind() const override { return "CausalDepthwiseConv1d"; }
    Index input_size() const override { return options_.channels; }
    Index output_size() const override { return options_.channels; }
    /// K, the steps each output sees.
    Index kernel_size() const { return options_.kernel_size; }
    /// The options it was made with.
    const CausalConvOptions& options() const { return options_; }

    /// The layer's sizes, e.g. "CausalDepthwiseConv1d(D=16, K=3, pointwise)": the owner a
    /// training forward writes into its Context and backward expects there.
    std::string signature() const override {
        return kind() + "(D=" + std::to_string(options_.channels) + ", K=" + std::to_string(options_.kernel_size) +
               (options_.pointwise ? ", pointwise)" : ")");
    }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        out.push_back({prefix + "net.0.weight", &weight});
        if (options_.bias) out.push_back({prefix + "net.0.bias", &bias});
        if (options_.pointwise) {
            out.push_back({prefix + "net.1.weight", &pointwise_weight});
            if (options_.bias) out.push_back({prefix + "net.1.bias", &pointwise_bias});
        }
    }

    /// What a training forward keeps for backward.
    struct Saved {
        Matrix<Scalar> input;   ///< (B*T, D)
        Matrix<Scalar> window;  ///< (B*(K-1), D): the initial window
        Matrix<Scalar> u;       ///< (B*T, D): the depthwise output, when pointwise
    };

protected:
    /// {window (B*(K-1), D)} of zeros; workspace: u (B, D) for step.
    State<Scalar> make_state(Index batch) const override {
        const Index rows = checked_mul(kind() + ".initial_state", batch, kernel_size() - 1);
        checked_elements(kind() + ".initial_state", rows, options_.channels);
        State<Scalar> s;
        s.tensors.push_back(Matrix<Scalar>::Zero(rows, options_.channels));
        s.workspace = {Matrix<Scalar>(batch, options_.channels)};
        return s;
    }

    void validate_state(const State<Scalar>& state, Index batch, Call call) const override {
        this->check_state_tensors(state, call, 1, batch * (kernel_size() - 1), options_.channels);
    }

    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        const Index B = x.batch, T = x.steps, D = options_.channels, K = kernel_size();
        State<Scalar> zeros;
        State<Scalar>& s = state ? *state : zeros;
        if (!state) s = this->initial_state(B);
        const Matrix<Scalar> window = s.tensors[0];  // (B*(K-1), D)

        Matrix<Scalar> u(B * T, D);  // the depthwise conv's output, (B*T, D)
        parallel_for(B, streamed_work(T * D * K), [&](Index b0, Index b1) {
            for (Index b = b0; b < b1; ++b) {
                const Index L = x.length(b);
                u.middleRows(b * T + L, T - L).setZero();  // padding: its inputs are never read
                for (Index t = 0; t < L; ++t) {
                    auto u_t = u.row(b * T + t);
                    if (options_.bias)
                        u_t = bias.row();
                    else
                        u_t.setZero();
                    for (Index k = 0; k < K; ++k)
                        u_t.array() += weight.value.col(k).transpose().array() * input_row(x.data, window, b, T, K, t + k - (K - 1)).array();
                }
            }
        });
        update_window(s.tensors[0], x, window, K);

        if (ctx) {
            Saved& saved = keep_for_backward<Saved>(*ctx);
            saved.input = x.data;
            saved.window = window;
            if (options_.pointwise) saved.u = u;
        }
        if (!options_.pointwise) return Sequence<Scalar>(std::move(u), B, T);
        Sequence<Scalar> y(B, T, D);
        pointwise_forward(u, y.data);  // (B*T, D) x (D, D)
        return y;
    }

    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                                   const State<Scalar>* d_final, State<Scalar>* d_initial) override {
        const Index B = ctx.batch, T = ctx.steps, D = options_.channels, K = kernel_size();
        const Saved& saved = saved_for_backward<Saved>(ctx);
        const Matrix<Scalar>& x = saved.input;        // (B*T, D)
        const Matrix<Scalar>& window = saved.window;  // (B*(K-1), D)
        const bool has_final = d_final != nullptr;

        // Through the pointwise conv: du = dy W1 (B*T, D).
        Matrix<Scalar> du;
        if (options_.pointwise) {
            const Matrix<Scalar>& u = saved.u;
            add_transposed_product<Scalar>(dy.data, u, pointwise_weight.grad);  // (D, B*T) x (B*T, D)
            if (options_.bias) add_column_sums(dy.data, pointwise_bias.grad);
            du.resize(dy.data.rows(), pointwise_weight.value.cols());
            matmul_rows<Scalar>(dy.data, pointwise_weight.value, du);  // (B*T, D) x (D, D)
        } else {
            du = dy.data;
        }
        if (options_.bias) add_column_sums(du, bias.grad);

        // Through the depthwise conv: dx[s] += du[t] * w0[:, k] and dw0[:, k] += du[t] * x[s],
        // s = t + k - (K-1); s < 0 reaches the initial window. dx is split across threads
        // by sequence and dw0 by channel, so each sum runs in the serial order. Only real
        // steps t < L (L = lengths[b], or T) take part: the padding's du is zero, and its
        // inputs must reach no weight gradient.
        Sequence<Scalar> dx(B, T, D);
        Matrix<Scalar> d_window = Matrix<Scalar>::Zero(B * (K - 1), D);
        parallel_for(B, streamed_work(T * D * K), [&](Index b0, Index b1) {
            for (Index b = b0; b < b1; ++b) {
                const Index L = length_of(ctx.lengths, b, T);
                // dL/d(final window) flows to the inputs it holds: row j is step L-(K-1)+j.
                if (has_final)
                    for (Index j = 0; j < K - 1; ++j)
                        grad_row(dx.data, d_window, b, T, K, L - (K - 1) + j) += d_final->tensors[0].row(b * (K - 1) + j);
                for (Index t = 0; t < L; ++t) {
                    const auto du_t = du.row(b * T + t).array();
                    for (Index k = 0; k < K; ++k)
                        grad_row(dx.data, d_window, b, T, K, t + k - (K - 1)).array() +=
                            du_t * weight.value.col(k).transpose().array();
                }
            }
        });
        parallel_for(D, streamed_work(B * T * K), [&](Index d0, Index d1) {
            const Index n = d1 - d0;
            for (Index b = 0; b < B; ++b)
                for (Index t = 0; t < length_of(ctx.lengths, b, T); ++t) {
                    const auto du_t = du.row(b * T + t).segment(d0, n).array();
                    for (Index k = 0; k < K; ++k)
                        weight.grad.col(k).segment(d0, n).array() +=
                            (du_t * input_row(x, window, b, T, K, t + k - (K - 1)).segment(d0, n).array()).transpose();
                }
        });
        if (d_initial) {
            *d_initial = this->initial_state(B);
            d_initial->tensors[0] = std::move(d_window);
        }
        return dx;
    }

    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        const Index B = x.rows(), K = kernel_size();
        if (state.workspace.size() != 1 || state.workspace[0].rows() != B) state.workspace = make_state(B).workspace;
        Matrix<Scalar>& window = state.tensors[0];  // (B*(K-1), D)
        Matrix<Scalar>& u = state.workspace[0];     // (B, D)
        for (Index b = 0; b < B; ++b) {
            auto u_b = u.row(b);
            if (options_.bias)
                u_b = bias.row();
            else
                u_b.setZero();
            for (Index k = 0; k + 1 < K; ++k)
                u_b.array() += weight.value.col(k).transpose().array() * window.row(b * (K - 1) + k).array();
            u_b.array() += weight.value.col(K - 1).transpose().array() * x.row(b).array();
            // Shift the window by one step, oldest out, x in.
            for (Index j = 0; j + 1 < K - 1; ++j) window.row(b * (K - 1) + j) = window.row(b * (K - 1) + j + 1);
            if (K > 1) window.row(b * (K - 1) + K - 2) = x.row(b);
        }
        if (options_.pointwise)
            pointwise_forward(u, y);  // (B, D) x (D, D)
        else
            y = u;
    }

private:
    // y = u W1^T + b1.
    void pointwise_forward(const Matrix<Scalar>& u, Matrix<Scalar>& y) const {
        y.resize(u.rows(), pointwise_weight.value.rows());
        matmul_rows<Scalar>(u, pointwise_weight.value.transpose(), y,
                            options_.bias ? pointwise_bias.value.data() : nullptr);  // (N, D) x (D, D)
    }

    // Input step s of stream b: x's row for s >= 0, the window's for -(K-1) <= s < 0.
    static auto input_row(const Matrix<Scalar>& x, const Matrix<Scalar>& window, Index b, Index T, Index K, Index s) {
        return s >= 0 ? x.row(b * T + s) : window.row(b * (K - 1) + (K - 1) + s);
    }
    static auto grad_row(Matrix<Scalar>& dx, Matrix<Scalar>& d_window, Index b, Index T, Index K, Index s) {
        return s >= 0 ? dx.row(b * T + s) : d_window.row(b * (K - 1) + (K - 1) + s);
    }

    // The real steps of sequence b: lengths[b], or T without lengths.
    static Index length_of(const std::vector<Index>& lengths, Index b, Index T) {
        return lengths.empty() ? T : lengths[static_cast<std::size_t>(b)];
    }

    // The last K-1 inputs of each stream after x: the old window followed by x's real
    // steps, cut at each sequence's own end.
    static void update_window(Matrix<Scalar>& out, const Sequence<Scalar>& x, const Matrix<Scalar>& window, Index K) {
        for (Index b = 0; b < x.batch; ++b)
            for (Index j = 0; j < K - 1; ++j)
                out.row(b * (K - 1) + j) = input_row(x.data, window, b, x.steps, K, x.length(b) - (K - 1) + j);
    }

    CausalConvOptions options_;
};

}  // namespace seqnn
