// Absolute position embeddings as sequence layers: y = x + P[position], for the (B*T, D)
// batches of docs/design.md, row b*T + t at position offset + t.
//
//   SinusoidalPositionalEncoding   Vaswani et al. 2017 ("Attention Is All You Need", 3.5):
//       P[p, 2i] = sin(p / base^(2i/D)),  P[p, 2i+1] = cos(p / base^(2i/D)); no parameters.
//   LearnedPositionalEmbedding     a trained table, like GPT-2's wpe: weight (max_length, D),
//       PyTorch's nn.Embedding (initialised N(0, 1)); the parameter is named "weight".
//
// Both are seqnn::Layers so that they stream: the state has no tensors and State::position is
// the offset, so forward(x, &state) continues where the last chunk or step left off (all B
// streams of a batch share one position). d_initial is always an empty state.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/nn/embedding.hpp"

#include <cmath>
#include <limits>
#include <string>

namespace seqnn {

/// Adds the fixed sinusoidal position encoding of "Attention Is All You Need".
template <typename Scalar>
class SinusoidalPositionalEncoding : public Layer<Scalar> {
public:
    /// An encoding of width `dim` with the given base.
    explicit SinusoidalPositionalEncoding(Index dim, double base = 10000.0) : dim_(dim), base_(base) {
        if (dim <= 0) fail("SinusoidalPositionalEncoding", "dim must be positive, got " + std::to_string(dim));
        if (!(base > 0) || !std::isfinite(base))
            fail("SinusoidalPositionalEncoding", "base must be a finite number > 0, got " + number_text(base));
    }

    std::string kind() const override { return "SinusoidalPositionalEncoding"; }
    Index input_size() const override { return dim_; }
    Index output_size() const override { return dim_; }

    /// out[j] += P[position, j] for one row of D features; in double, rounded once.
    void add_encoding(Index position, Scalar* out) const {
        for (Index j = 0; j < dim_; ++j) {
            const double angle = double(position) * std::pow(base_, -double(j - j % 2) / double(dim_));
            out[j] += static_cast<Scalar>(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
        }
    }

    void collect_parameters(const std::string&, ParameterList<Scalar>&) override {}

    /// "SinusoidalPositionalEncoding(D=16)": the owner a training forward writes into its Context.
    std::string signature() const override { return kind() + "(D=" + std::to_string(dim_) + ")"; }

protected:
    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>*) const override {
        this->refuse_padded_state(x, state);
        const Index T = x.steps, offset = state ? state->position : 0;
        Matrix<Scalar> table = Matrix<Scalar>::Zero(T, dim_);  // (T, D): P[offset + t]
        parallel_for(T, streamed_work(dim_), [&](Index t0, Index t1) {
            for (Index t = t0; t < t1; ++t) add_encoding(offset + t, table.row(t).data());
        });
        Sequence<Scalar> y = x;
        for (Index b = 0; b < x.batch; ++b) y.sequence(b) += table;
        return y;
    }

    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        y = x;
        for (Index b = 0; b < x.rows(); ++b) add_encoding(state.position, y.row(b).data());
    }

    /// The encoding is a constant: dL/dx = dL/dy.
    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>&, const State<Scalar>*,
                                   State<Scalar>*) override {
        return dy;
    }

private:
    Index dim_;
    double base_;
};

/// Adds a learned embedding of each position, up to max_length.
template <typename Scalar>
class LearnedPositionalEmbedding : public Layer<Scalar> {
public:
    Parameter<Scalar> weight;  ///< (max_length, D)

    /// A table of max_length positions of width `dim`, drawn as nn.Embedding draws it.
    LearnedPositionalEmbedding(Index max_length, Index dim, Rng& rng)
        : weight(embedding_table<Scalar>("LearnedPositionalEmbedding", "max_length", max_length, "dim", dim, rng)) {}

    std::string kind() const override { return "LearnedPositionalEmbedding"; }
    Index input_size() const override { return weight.value.cols(); }
    Index output_size() const override { return weight.value.cols(); }
    /// The most positions it embeds.
    Index max_length() const { return weight.value.rows(); }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        out.push_back({prefix + "weight", &weight});
    }

    /// "LearnedPositionalEmbedding(L=512, D=16)": the owner a training forward writes into its Context.
    std::string signature() const override {
        return kind() + "(L=" + std::to_string(max_length()) + ", D=" + std::to_string(input_size()) + ")";
    }

    /// What a training forward keeps: the position of its first step.
    struct Saved {
        Index offset = 0;  ///< the position of the forward's first step
    };

protected:
    /// No tensors; a step needs its position within the table.
    void validate_state(const State<Scalar>& state, Index batch, Call call) const override {
        Layer<Scalar>::validate_state(state, batch, call);
        if (call == Call::Step) check_range(call, state.position, 1);
    }

    Sequence<Scalar> forward_impl(const Sequence<Scalar>& x, State<Scalar>* state, Context<Scalar>* ctx) const override {
        this->refuse_padded_state(x, state);
        const Index T = x.steps, offset = state ? state->position : 0;
        check_range(Call::Forward, offset, T);
        Sequence<Scalar> y = x;
        for (Index b = 0; b < x.batch; ++b) y.sequence(b) += weight.value.middleRows(offset, T);  // (T, D)
        if (ctx) keep_for_backward<Saved>(*ctx).offset = offset;
        return y;
    }

    void step_impl(ConstMatrixRef<Scalar> x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        y = x.rowwise() + weight.value.row(state.position);
    }

    /// weight.grad[offset + t] += sum_b dy[b*T + t]; dL/dx = dL/dy.
    Sequence<Scalar> backward_impl(const Sequence<Scalar>& dy, const Context<Scalar>& ctx, const State<Scalar>*,
                                   State<Scalar>*) override {
        const Index offset = saved_for_backward<Saved>(ctx).offset;
        for (Index b = 0; b < dy.batch; ++b) weight.grad.middleRows(offset, dy.steps) += dy.sequence(b);
        return dy;
    }

private:
    void check_range(Call call, Index offset, Index T) const {
        if (offset < 0 || T > max_length() || offset > max_length() - T)  // no offset + T: it may overflow
            fail(this->where(call), "positions [" + std::to_string(offset) + ", " +
                            (offset > std::numeric_limits<Index>::max() - T ? std::string("beyond 2^63")
                                                                            : std::to_string(offset + T)) +
                            ") exceed the table's max_length " + std::to_string(max_length()) + " (weight " +
                            shape_string(weight.value) + ")");
    }
};

}  // namespace seqnn
