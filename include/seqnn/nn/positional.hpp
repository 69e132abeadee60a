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
#include "seqnn/core/threading.hpp"

#include <cmath>
#include <limits>
#include <random>
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

    State<Scalar> initial_state(Index batch) const override {
        if (batch <= 0) fail(kind() + ".initial_state", "batch must be positive, got " + std::to_string(batch));
        return State<Scalar>();
    }

    /// out[j] += P[position, j] for one row of D features; in double, rounded once.
    void add_encoding(Index position, Scalar* out) const {
        for (Index j = 0; j < dim_; ++j) {
            const double angle = double(position) * std::pow(base_, -double(j - j % 2) / double(dim_));
            out[j] += static_cast<Scalar>(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
        }
    }

    Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const override {
        check_sequence(kind() + ".forward", "input", x, dim_);
        const Index T = x.steps, offset = state ? state->position : 0;
        Matrix<Scalar> table = Matrix<Scalar>::Zero(T, dim_);  // (T, D): P[offset + t]
        parallel_row_blocks(T, dim_, [&](Index t0, Index t1) {
            for (Index t = t0; t < t1; ++t) add_encoding(offset + t, table.row(t).data());
        });
        Sequence<Scalar> y = x;
        for (Index b = 0; b < x.batch; ++b) y.sequence(b) += table;
        if (ctx) {
            ctx->batch = x.batch;
            ctx->steps = T;
            ctx->saved.clear();  // nothing to keep: the owner marks a training forward
            ctx->owner = signature();
        }
        if (state) state->position = offset + T;
        return y;
    }

    /// The encoding is a constant: dL/dx = dL/dy.
    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx, const State<Scalar>* = nullptr,
                              State<Scalar>* d_initial = nullptr) override {
        check_context_owner(kind() + ".backward", ctx, signature());
        check_sequence(kind() + ".backward", "dy", dy, dim_);
        if (dy.batch != ctx.batch || dy.steps != ctx.steps)
            fail(kind() + ".backward", "dy " + shape_string(dy) + " does not match the forward's (B=" +
                                           std::to_string(ctx.batch) + ", T=" + std::to_string(ctx.steps) + ")");
        if (d_initial) *d_initial = State<Scalar>();
        return dy;
    }

    void step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        if (x.cols() != dim_ || x.rows() <= 0)
            fail("SinusoidalPositionalEncoding.step",
                 "input has shape " + shape_string(x) + ", expected (B, " + std::to_string(dim_) + ") with B > 0");
        if (y.rows() != x.rows() || y.cols() != dim_) y.resize(x.rows(), dim_);
        y = x;
        for (Index b = 0; b < x.rows(); ++b) add_encoding(state.position, y.row(b).data());
        state.position += 1;
    }

    void collect_parameters(const std::string&, ParameterList<Scalar>&) override {}

    /// "SinusoidalPositionalEncoding(D=16)": the owner a training forward writes into its Context.
    std::string signature() const { return kind() + "(D=" + std::to_string(dim_) + ")"; }

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
    LearnedPositionalEmbedding(Index max_length, Index dim, Rng& rng) {
        if (max_length <= 0 || dim <= 0)
            fail("LearnedPositionalEmbedding", "sizes must be positive, got max_length=" + std::to_string(max_length) +
                                                   ", dim=" + std::to_string(dim));
        weight = Parameter<Scalar>(max_length, dim);
        std::normal_distribution<double> normal(0.0, 1.0);
        for (Index i = 0; i < weight.value.size(); ++i) weight.value.data()[i] = static_cast<Scalar>(normal(rng));
    }

    std::string kind() const override { return "LearnedPositionalEmbedding"; }
    Index input_size() const override { return weight.value.cols(); }
    Index output_size() const override { return weight.value.cols(); }
    /// The most positions it embeds.
    Index max_length() const { return weight.value.rows(); }

    State<Scalar> initial_state(Index batch) const override {
        if (batch <= 0) fail(kind() + ".initial_state", "batch must be positive, got " + std::to_string(batch));
        return State<Scalar>();
    }

    Sequence<Scalar> forward(const Sequence<Scalar>& x, State<Scalar>* state = nullptr,
                             Context<Scalar>* ctx = nullptr) const override {
        const std::string where = kind() + ".forward";
        check_sequence(where, "input", x, input_size());
        const Index T = x.steps, offset = state ? state->position : 0;
        check_range(where.c_str(), offset, T);
        Sequence<Scalar> y = x;
        for (Index b = 0; b < x.batch; ++b) y.sequence(b) += weight.value.middleRows(offset, T);  // (T, D)
        if (ctx) {
            ctx->batch = x.batch;
            ctx->steps = T;
            ctx->save("offset", Matrix<Scalar>::Constant(1, 1, Scalar(offset)));
            ctx->owner = signature();
        }
        if (state) state->position = offset + T;
        return y;
    }

    /// weight.grad[offset + t] += sum_b dy[b*T + t]; dL/dx = dL/dy.
    Sequence<Scalar> backward(const Sequence<Scalar>& dy, const Context<Scalar>& ctx, const State<Scalar>* = nullptr,
                              State<Scalar>* d_initial = nullptr) override {
        check_context_owner(kind() + ".backward", ctx, signature());
        const auto offset = static_cast<Index>(ctx.get("offset")(0, 0));
        check_sequence(kind() + ".backward", "dy", dy, input_size());
        if (dy.batch != ctx.batch || dy.steps != ctx.steps)
            fail(kind() + ".backward", "dy " + shape_string(dy) + " does not match the forward's (B=" +
                                           std::to_string(ctx.batch) + ", T=" + std::to_string(ctx.steps) + ")");
        for (Index b = 0; b < dy.batch; ++b) weight.grad.middleRows(offset, dy.steps) += dy.sequence(b);
        if (d_initial) *d_initial = State<Scalar>();
        return dy;
    }

    void check_step_state(State<Scalar>& state, Index) const override {
        check_range("LearnedPositionalEmbedding.step", state.position, 1);
    }

    void step(const Matrix<Scalar>& x, State<Scalar>& state, Matrix<Scalar>& y) const override {
        const char* where = "LearnedPositionalEmbedding.step";  // no std::string: step must not allocate
        if (x.cols() != input_size() || x.rows() <= 0)
            fail(where, "input has shape " + shape_string(x) + ", expected (B, " + std::to_string(input_size()) +
                            ") with B > 0");
        check_range(where, state.position, 1);
        if (y.rows() != x.rows() || y.cols() != input_size()) y.resize(x.rows(), input_size());
        y = x.rowwise() + weight.value.row(state.position);
        state.position += 1;
    }

    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) override {
        out.push_back({prefix + "weight", &weight});
    }

    /// "LearnedPositionalEmbedding(L=512, D=16)": the owner a training forward writes into its Context.
    std::string signature() const {
        return kind() + "(L=" + std::to_string(max_length()) + ", D=" + std::to_string(input_size()) + ")";
    }

private:
    void check_range(const char* where, Index offset, Index T) const {
        if (offset < 0 || T > max_length() || offset > max_length() - T)  // no offset + T: it may overflow
            fail(where, "positions [" + std::to_string(offset) + ", " +
                            (offset > std::numeric_limits<Index>::max() - T ? std::string("beyond 2^63")
                                                                            : std::to_string(offset + T)) +
                            ") exceed the table's max_length " + std::to_string(max_length()) + " (weight " +
                            shape_string(weight.value) + ")");
    }
};

}  // namespace seqnn
