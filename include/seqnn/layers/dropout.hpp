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
#include "seqnn/core/parallel.hpp"

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

    /// What a training forward keeps: the mask, (N, D), when it was not the identity.
    struct Saved {
        Matrix<Scalar> mask;   ///< 0 or 1 / (1 - p) per entry
        bool active = false;   ///< false: the forward was the identity (p = 0)
    };

    /// In place on x (N, D): with a context, x *= mask and the mask (0 or 1/(1-p)) is
    /// kept in it; without one, nothing happens.
    void apply(MatrixRef<Scalar> x, Context<Scalar>* ctx) const {
        if (!ctx) return;
        Saved& saved = keep_for_backward<Saved>(*ctx);
        saved.active = p_ != 0.0;
        if (!saved.active) return;  // identity: backward passes dy through
        const std::uint64_t call = calls_.fetch_add(1);
        saved.mask.resize(x.rows(), x.cols());  // (N, D); no allocation when a reused context has the shape
        fill_mask(call, saved.mask);
        multiply_by(saved.mask, x);
    }

    /// In place on dy (N, D): dy *= the mask of the forward that filled ctx.
    void apply_backward(MatrixRef<Scalar> dy, const Context<Scalar>& ctx) const {
        const Saved& saved = saved_for_backward<Saved>(ctx);
        if (!saved.active) return;  // the forward was the identity
        check_matrix("Dropout.backward", "dy", dy, saved.mask.rows(), saved.mask.cols());
        multiply_by(saved.mask, dy);
    }

    /// x *= mask, element-wise, split by rows across threads.
    static void multiply_by(const Matrix<Scalar>& mask, MatrixRef<Scalar> x) {
        parallel_for(x.rows(), streamed_work(x.cols()), [&](Index r0, Index r1) {
            x.middleRows(r0, r1 - r0).array() *= mask.middleRows(r0, r1 - r0).array();
        });
    }

    /// The mask of training call `call`: 0 or 1 / (1 - p) per entry, (N, D). Entry i
    /// depends only on (seed, call, i), so any split across threads gives the same mask.
    void fill_mask(std::uint64_t call, Matrix<Scalar>& mask) const {
        const Scalar scale = p_ < 1.0 ? static_cast<Scalar>(1.0 / (1.0 - p_)) : Scalar(0);
        const Index cols = mask.cols();
        parallel_for(mask.rows(), streamed_work(cols), [&](Index r0, Index r1) {
            for (Index i = r0 * cols; i < r1 * cols; ++i)
                mask.data()[i] =
                    dropout_detail::uniform(seed_, call, static_cast<std::uint64_t>(i)) >= p_ ? scale : Scalar(0);
        });
    }

    void collect_parameters(const std::string&, ParameterList<Scalar>&) override {}

    /// "Dropout(D=16, p=0.1)": the owner a training forward writes into its Context.
    std::string signature() const override {
        return "Dropout(D=" + std::to_string(features_) + ", p=" + number_text(p_) + ")";
    }

protected:
    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>*, Context<Scalar>* ctx) const override {
        Sequence<Scalar> y = x;
        apply(y.data, ctx);
        return y;
    }
    /// Streaming is inference: the identity.
    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>&, Matrix<Scalar>& y) const override { y = x; }
    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx, const State<Scalar>*,
                                   State<Scalar>*) override {
        Sequence<Scalar> dx = dy;
        apply_backward(dx.data, ctx);
        return dx;
    }

private:
    Index features_;
    double p_;
    std::uint64_t seed_;
    mutable std::atomic<std::uint64_t> calls_{0};
};

}  // namespace seqnn
