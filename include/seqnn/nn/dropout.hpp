// Dropout, PyTorch's nn.Dropout(p) in its training-mode semantics: each entry is
// zeroed with probability p and the rest are scaled by 1 / (1 - p).
//
// Active only in training mode, that is when forward is given a Context; without
// one (inference) and in step() it is the identity, like module.eval() in PyTorch.
//
// Masks are deterministic: entry i of training call c keeps iff
//   uniform(hash(seed, c, i)) >= p,
// a counter-based generator (SplitMix64 finalisers), so a mask does not depend on
// the thread count, and the generator's whole state is the call counter `calls()`:
// a checkpoint saves it and set_calls() restores it. Each training forward takes
// the next counter value (atomically, so forward stays const and thread-safe).
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/threading.hpp"

#include <atomic>
#include <cstdint>
#include <string>

namespace seqnn {

namespace dropout_detail {

// SplitMix64's finaliser: a bijective 64-bit mix with good avalanche.
inline std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// A uniform double in [0, 1) for entry i of call `call` under `seed`.
inline double uniform(std::uint64_t seed, std::uint64_t call, std::uint64_t i) {
    const std::uint64_t stream = mix64(seed + 0x9e3779b97f4a7c15ULL * (call + 1));
    return static_cast<double>(mix64(stream ^ mix64(i + 0x632be59bd9b4e019ULL)) >> 11) * 0x1.0p-53;
}

}  // namespace dropout_detail

/// Inverted dropout as a sequence layer: zeroes each element with probability p in training.
template <typename Scalar>
class Dropout : public Layer<Scalar> {
public:
    /// Dropout over rows of `features` elements with probability p.
    Dropout(Index features, double p, std::uint64_t seed = 0) : features_(features), p_(p), seed_(seed) {
        if (features <= 0) fail("Dropout", "features must be positive, got " + std::to_string(features));
        if (!(p >= 0.0 && p <= 1.0)) fail("Dropout", "p must be in [0, 1], got " + std::to_string(p));
    }
    /// A copy with the same seed and call count.
    Dropout(const Dropout& other)
        : features_(other.features_), p_(other.p_), seed_(other.seed_), calls_(other.calls_.load()) {}

    std::string kind() const override { return "Dropout"; }
    Index input_size() const override { return features_; }
    Index output_size() const override { return features_; }
    /// The drop probability.
    double p() const { return p_; }
    /// The seed of the masks.
    std::uint64_t seed() const { return seed_; }

    /// The generator's state: how many training forwards have drawn a mask.
    std::uint64_t calls() const { return calls_.load(); }
    /// Sets the call count (restoring a checkpoint).
    void set_calls(std::uint64_t calls) { calls_.store(calls); }

    /// Stateless: no tensors, no workspace.
    State<Scalar> initial_state(Index batch) const override {
        if (batch <= 0) fail("Dropout.initial_state", "batch must be positive, got " + std::to_string(batch));
        return {};
    }

    /// In place on x (N, D): with a context, x *= mask and the mask (0 or 1/(1-p)) is
    /// saved as "mask"; without one, nothing happens.
    void apply(MatrixRef<Scalar> x, Context<Scalar>* ctx) const {
        if (!ctx || p_ == 0.0) {
            if (ctx) ctx->saved.erase("mask");  // identity: backward passes dy through
            return;
        }
        const std::uint64_t call = calls_.fetch_add(1);
        Matrix<Scalar>& mask = ctx->buffer("mask", x.rows(), x.cols());  // (N, D)
        fill_mask(call, mask);
        multiply_by(mask, x);
    }

    /// In place on dy (N, D): dy *= the mask of the forward that filled ctx.
    void apply_backward(MatrixRef<Scalar> dy, const Context<Scalar>& ctx) const {
        const auto it = ctx.saved.find("mask");
        if (it == ctx.saved.end()) return;  // the forward was the identity
        const Matrix<Scalar>& mask = it->second;
        check_matrix("Dropout.backward", "dy", dy, mask.rows(), mask.cols());
        multiply_by(mask, dy);
    }

    /// x *= mask, element-wise, split by rows across threads.
    static void multiply_by(const Matrix<Scalar>& mask, MatrixRef<Scalar> x) {
        parallel_row_blocks(x.rows(), x.cols(), [&](Index r0, Index r1) {
            x.middleRows(r0, r1 - r0).array() *= mask.middleRows(r0, r1 - r0).array();
        });
    }

    /// The mask of training call `call`: 0 or 1 / (1 - p) per entry, (N, D). Entry i
    /// depends only on (seed, call, i), so any split across threads gives the same mask.
    void fill_mask(std::uint64_t call, Matrix<Scalar>& mask) const {
        const Scalar scale = p_ < 1.0 ? static_cast<Scalar>(1.0 / (1.0 - p_)) : Scalar(0);
        const Index cols = mask.cols();
        parallel_row_blocks(mask.rows(), cols, [&](Index r0, Index r1) {
            for (Index i = r0 * cols; i < r1 * cols; ++i)
                mask.data()[i] =
                    dropout_detail::uniform(seed_, call, static_cast<std::uint64_t>(i)) >= p_ ? scale : Scalar(0);
        });
    }

    Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const override {
        check_sequence("Dropout.forward", "input", x, features_);
        if (state) state->position += x.steps;
        Sequence<Scalar> y = x;
        if (ctx) {
            ctx->batch = x.batch;
            ctx->steps = x.steps;
        }
        apply(y.data, ctx);
        if (ctx) ctx->owner = signature();
        return y;
    }

    void step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (x.cols() != features_ || x.rows() <= 0)
            fail("Dropout.step", "input has shape " + shape_string(x) + ", expected (B, " + std::to_string(features_) +
                                     ") with B > 0");
        if (y.rows() != x.rows() || y.cols() != x.cols()) y.resize(x.rows(), x.cols());
        y = x;
        state.position += 1;
    }

    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx,
                              const State<Scalar>* d_final = nullptr, State<Scalar>* d_initial = nullptr) override {
        (void)d_final;
        check_context_owner("Dropout.backward", ctx, signature());
        check_sequence("Dropout.backward", "dy", dy, features_);
        if (dy.batch != ctx.batch || dy.steps != ctx.steps)
            fail("Dropout.backward", "dy " + shape_string(dy) + " does not match the forward's (B=" +
                                         std::to_string(ctx.batch) + ", T=" + std::to_string(ctx.steps) + ")");
        if (d_initial) *d_initial = State<Scalar>{};
        Sequence<Scalar> dx = dy;
        apply_backward(dx.data, ctx);
        return dx;
    }

    void collect_parameters(const std::string&, ParameterList<Scalar>&) override {}

    /// "Dropout(D=16, p=0.1)": the owner a training forward writes into its Context.
    std::string signature() const { return "Dropout(D=" + std::to_string(features_) + ", p=" + number_text(p_) + ")"; }

private:
    Index features_;
    double p_;
    std::uint64_t seed_;
    mutable std::atomic<std::uint64_t> calls_{0};
};

}  // namespace seqnn
