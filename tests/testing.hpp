// Shared test helpers: random data, tolerances and a finite-difference gradient
// check that works for any seqnn::Layer.
#pragma once

#include <seqnn/core/layer.hpp>
#include <seqnn/core/parallel.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace seqnn::testing {

template <typename Scalar>
Matrix<Scalar> random_matrix(Index rows, Index cols, Rng& rng, double scale = 1.0) {
    std::uniform_real_distribution<double> dist(-scale, scale);
    Matrix<Scalar> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(dist(rng));
    return m;
}

template <typename Scalar>
Sequence<Scalar> random_sequence(Index batch, Index steps, Index features, Rng& rng, double scale = 1.0) {
    return Sequence<Scalar>(random_matrix<Scalar>(batch * steps, features, rng, scale), batch, steps);
}

// Restores the thread count a test changed, when the test ends.
class ThreadGuard {
public:
    ThreadGuard() : saved_(num_threads()) {}
    ~ThreadGuard() { set_num_threads(saved_); }
    ThreadGuard(const ThreadGuard&) = delete;
    ThreadGuard& operator=(const ThreadGuard&) = delete;

private:
    int saved_;
};

// A random state shaped like layer.initial_state(batch).
template <typename Scalar>
State<Scalar> random_state(const Layer<Scalar>& layer, Index batch, Rng& rng, double scale = 0.5) {
    State<Scalar> s = layer.initial_state(batch);
    for (Matrix<Scalar>* t : state_tensors(s)) *t = random_matrix<Scalar>(t->rows(), t->cols(), rng, scale);
    return s;
}

// Plain triple loops in double: a (M, K) times b (K, N), the reference of the products.
template <typename A, typename B>
Matrix<double> reference_product(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
    Matrix<double> c = Matrix<double>::Zero(a.rows(), b.cols());
    for (Index i = 0; i < a.rows(); ++i)
        for (Index j = 0; j < b.cols(); ++j)
            for (Index k = 0; k < a.cols(); ++k) c(i, j) += double(a(i, k)) * double(b(k, j));
    return c;
}

// max |a - b| / max(1, max |b|): relative to the reference's magnitude, absolute near zero.
template <typename A, typename B>
double relative_error(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
    EXPECT_EQ(a.rows(), b.rows());
    EXPECT_EQ(a.cols(), b.cols());
    if (a.rows() != b.rows() || a.cols() != b.cols() || a.size() == 0) return a.size() == b.size() ? 0.0 : 1e30;
    const double diff = (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff();
    const double ref = std::max(1.0, b.template cast<double>().cwiseAbs().maxCoeff());
    return diff / ref;
}

// Tolerance for a float result that accumulates `length` rounding errors.
inline double float_tolerance(Index length) {
    return 16 * 1.19e-7 * std::sqrt(static_cast<double>(std::max<Index>(length, 1)));
}

// Finite-difference gradient check of a layer in double. The loss is
// L = sum(y .* Wy) + sum_k sum(final_k .* Wk) with fixed random weights, so
// every output and every final-state tensor carries gradient.
struct GradientReport {
    std::string name;
    double relative_error;
};

class GradientChecker {
public:
    explicit GradientChecker(Layer<double>& layer, std::uint64_t seed = 7) : layer_(layer), rng_(seed) {}

    // At most `max_entries` entries of each tensor are perturbed (spread evenly).
    std::vector<GradientReport> check(const Sequence<double>& x, const State<double>& initial,
                                      Index max_entries = 60) {
        // Loss weights.
        State<double> probe = initial;
        Sequence<double> y = layer_.forward(x, &probe);
        out_weight_ = random_matrix<double>(y.data.rows(), y.data.cols(), rng_);
        // dL/d(final state) = W, a state tree shaped like the final state.
        State<double> d_final = probe;
        state_weights_.clear();
        for (Matrix<double>* t : state_tensors(d_final)) {
            *t = random_matrix<double>(t->rows(), t->cols(), rng_);
            state_weights_.push_back(*t);
        }

        // Analytic gradients.
        layer_.zero_grad();
        Context<double> ctx;
        State<double> final_state = initial;
        layer_.forward(x, &final_state, &ctx);
        State<double> d_initial;
        Sequence<double> dy(out_weight_, x.batch, x.steps);
        Sequence<double> dx = layer_.backward(dy, ctx, &d_final, &d_initial);

        std::vector<GradientReport> reports;
        for (auto& named : layer_.parameters()) {
            Matrix<double> analytic = named.param->grad;
            reports.push_back({named.name, compare(named.param->value, analytic, x, initial, max_entries)});
        }
        Sequence<double> x_mut = x;
        reports.push_back({"input", compare_input(x_mut, dx.data, initial, max_entries)});
        if (!initial.empty()) {
            State<double> init_mut = initial;
            const auto d_initial_tensors = state_tensors(d_initial);
            EXPECT_EQ(d_initial_tensors.size(), state_tensors(init_mut).size());
            for (std::size_t k = 0; k < state_tensors(init_mut).size() && k < d_initial_tensors.size(); ++k) {
                const Matrix<double> analytic = *d_initial_tensors[k];
                reports.push_back({"initial_state[" + std::to_string(k) + "]",
                                   compare_state(init_mut, k, analytic, x, max_entries)});
            }
        }
        for (const auto& r : reports) std::printf("  grad %-28s rel.err %.3e\n", r.name.c_str(), r.relative_error);
        return reports;
    }

private:
    double loss(const Sequence<double>& x, const State<double>& initial) {
        State<double> s = initial;
        Sequence<double> y = layer_.forward(x, &s);
        double l = (y.data.array() * out_weight_.array()).sum();
        const auto final_state = state_tensors(s);
        for (std::size_t k = 0; k < final_state.size(); ++k) l += (final_state[k]->array() * state_weights_[k].array()).sum();
        return l;
    }

    // Perturbs entries of `tensor` in place and compares dL/d(entry) with `analytic`.
    double perturb(Matrix<double>& tensor, const Matrix<double>& analytic, Index max_entries,
                   const std::function<double()>& eval) {
        EXPECT_EQ(tensor.rows(), analytic.rows());
        EXPECT_EQ(tensor.cols(), analytic.cols());
        if (tensor.size() != analytic.size()) return 1e30;
        const Index n = tensor.size();
        const Index stride = std::max<Index>(1, n / max_entries);
        double num = 0, den = 0;
        for (Index i = 0; i < n; i += stride) {
            double& v = tensor.data()[i];
            const double saved = v;
            const double h = 1e-6 * std::max(1.0, std::abs(saved));
            v = saved + h;
            const double up = eval();
            v = saved - h;
            const double down = eval();
            v = saved;
            const double numeric = (up - down) / (2 * h);
            const double a = analytic.data()[i];
            num = std::max(num, std::abs(a - numeric));
            den = std::max(den, std::max(std::abs(a), std::abs(numeric)));
        }
        return num / std::max(den, 1e-8);
    }

    double compare(Matrix<double>& value, const Matrix<double>& analytic, const Sequence<double>& x,
                   const State<double>& initial, Index max_entries) {
        return perturb(value, analytic, max_entries, [&] { return loss(x, initial); });
    }
    double compare_input(Sequence<double>& x, const Matrix<double>& analytic, const State<double>& initial,
                         Index max_entries) {
        return perturb(x.data, analytic, max_entries, [&] { return loss(x, initial); });
    }
    double compare_state(State<double>& initial, std::size_t k, const Matrix<double>& analytic,
                         const Sequence<double>& x, Index max_entries) {
        return perturb(*state_tensors(initial)[k], analytic, max_entries, [&] { return loss(x, initial); });
    }

    Layer<double>& layer_;
    Rng rng_;
    Matrix<double> out_weight_;
    std::vector<Matrix<double>> state_weights_;
};

// Asserts every reported gradient matches its finite difference within `tol`.
inline void expect_gradients_match(const std::vector<GradientReport>& reports, double tol = 1e-6) {
    for (const auto& r : reports) EXPECT_LT(r.relative_error, tol) << "gradient of " << r.name;
}

// Runs `body` expecting a shape_error whose message contains every string in `needles`.
template <typename Body>
void expect_shape_error(Body body, const std::vector<std::string>& needles) {
    try {
        body();
        ADD_FAILURE() << "expected seqnn::shape_error";
    } catch (const shape_error& e) {
        const std::string msg = e.what();
        for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nmissing: " << n;
    }
}

// Finite-difference error of one tensor: perturbs entries of `tensor` in place (central
// differences, step 1e-6 relative), compares dL/d(entry) with `analytic` and returns
// max |analytic - numeric| / max(|analytic|, |numeric|), maxima over the entries tried.
// At most `max_entries` entries are perturbed, spread evenly.
inline double finite_difference_error(Matrix<double>& tensor, const Matrix<double>& analytic,
                                      const std::function<double()>& loss, Index max_entries = 1000) {
    EXPECT_EQ(tensor.rows(), analytic.rows());
    EXPECT_EQ(tensor.cols(), analytic.cols());
    if (tensor.rows() != analytic.rows() || tensor.cols() != analytic.cols()) return 1e30;
    const Index n = tensor.size();
    const Index stride = std::max<Index>(1, n / std::max<Index>(max_entries, 1));
    double num = 0, den = 0;
    for (Index i = 0; i < n; i += stride) {
        double& v = tensor.data()[i];
        const double saved = v;
        const double h = 1e-6 * std::max(1.0, std::abs(saved));
        v = saved + h;
        const double up = loss();
        v = saved - h;
        const double down = loss();
        v = saved;
        const double numeric = (up - down) / (2 * h);
        num = std::max(num, std::abs(analytic.data()[i] - numeric));
        den = std::max(den, std::max(std::abs(analytic.data()[i]), std::abs(numeric)));
    }
    return num / std::max(den, 1e-8);
}

// Finite-difference gradient check of a matrix-in, matrix-out block in double (Linear,
// LayerNorm, an activation, ...), the counterpart of GradientChecker for what is not a
// Layer. forward(x) returns y; backward(x, dy) adds the gradients of `params` into
// their .grad and returns dL/dx, or an empty matrix when x takes no gradient (token
// ids). The loss is L = sum(y .* W) with a fixed random W; the parameters' gradients
// are zeroed first. Each report is printed.
template <typename Forward, typename Backward>
std::vector<GradientReport> check_block_gradients(Forward forward, Backward backward,
                                                  const ParameterList<double>& params, const Matrix<double>& x,
                                                  std::uint64_t seed = 7, Index max_entries = 1000) {
    Rng rng(seed);
    const Matrix<double> y = forward(x);
    const Matrix<double> w = random_matrix<double>(y.rows(), y.cols(), rng);
    Matrix<double> x_mut = x;
    const auto loss = [&] { return (Matrix<double>(forward(x_mut)).array() * w.array()).sum(); };

    zero_grad(params);
    const Matrix<double> dx = backward(x, w);

    std::vector<GradientReport> reports;
    for (const auto& named : params) {
        const Matrix<double> analytic = named.param->grad;
        reports.push_back({named.name, finite_difference_error(named.param->value, analytic, loss, max_entries)});
    }
    if (dx.size() > 0) reports.push_back({"input", finite_difference_error(x_mut, dx, loss, max_entries)});
    for (const auto& r : reports) std::printf("  grad %-28s rel.err %.3e\n", r.name.c_str(), r.relative_error);
    return reports;
}

// A padded batch (x with lengths) against each sequence run alone, from the same initial
// state: the outputs on real steps, zeros past each end, the final state, dL/dx and every
// parameter's gradient (the batch's equals the sum of the sequences' own) agree within `tol`.
// dL/dy is random everywhere, padding included: the padding's share must reach nothing.
// A state tensor of m*B rows holds m rows per sequence: row l*B + b of layer l (LayerMajor,
// PyTorch's (L, B, H)), or row b*m + j (StreamMajor: the causal conv's window). `initial`
// may be empty (zeros). Stateless runs the layer with no state at all (attention's KV cache
// refuses a padded batch) and compares no state.
enum class StateRows { LayerMajor, StreamMajor, Stateless };

template <typename Scalar>
void expect_padded_batch_matches_each_alone(Layer<Scalar>& layer, const Sequence<Scalar>& x,
                                            const State<Scalar>& initial, double tol, std::uint64_t seed = 3,
                                            StateRows layout = StateRows::LayerMajor) {
    ASSERT_TRUE(x.padded());
    const Index B = x.batch, T = x.steps;
    Rng rng(seed);
    const Matrix<Scalar> dy_all = random_matrix<Scalar>(B * T, layer.output_size(), rng);

    const bool stateless = layout == StateRows::Stateless;
    layer.zero_grad();
    State<Scalar> batched_state = initial;
    Context<Scalar> ctx;
    const Sequence<Scalar> y = layer.forward(x, stateless ? nullptr : &batched_state, &ctx);
    const Sequence<Scalar> dx = layer.backward(Sequence<Scalar>(dy_all, B, T), ctx);
    ASSERT_EQ(y.lengths, x.lengths);
    std::vector<Matrix<Scalar>> batched_grads;
    for (const auto& named : layer.parameters()) batched_grads.push_back(named.param->grad);

    layer.zero_grad();
    const State<Scalar> zeros = layer.initial_state(B);
    const State<Scalar>& start = initial.empty() ? zeros : initial;
    const auto start_tensors = state_tensors(start);
    const auto final_tensors = state_tensors(batched_state);
    for (Index b = 0; b < B; ++b) {
        const Index n = x.length(b);
        // Sequence b alone, from its rows of the initial state.
        State<Scalar> alone_state = layer.initial_state(1);
        const auto alone_tensors = state_tensors(alone_state);
        ASSERT_EQ(alone_tensors.size(), start_tensors.size());
        const auto row_of = [&](Index m, Index j) { return layout == StateRows::LayerMajor ? j * B + b : b * m + j; };
        for (std::size_t k = 0; k < alone_tensors.size(); ++k) {
            const Index m = start_tensors[k]->rows() / B;
            for (Index j = 0; j < m; ++j) alone_tensors[k]->row(j) = start_tensors[k]->row(row_of(m, j));
        }
        Context<Scalar> alone_ctx;
        const Sequence<Scalar> xb(Matrix<Scalar>(x.sequence(b).topRows(n)), 1, n);
        const Sequence<Scalar> yb = layer.forward(xb, stateless ? nullptr : &alone_state, &alone_ctx);
        const Sequence<Scalar> dyb(Matrix<Scalar>(dy_all.middleRows(b * T, n)), 1, n);
        const Sequence<Scalar> dxb = layer.backward(dyb, alone_ctx);  // the parameters' gradients add up

        EXPECT_LT(relative_error(y.sequence(b).topRows(n), yb.data), tol) << "output of sequence " << b;
        EXPECT_TRUE(y.sequence(b).bottomRows(T - n).isZero(0)) << "padding of sequence " << b;
        EXPECT_LT(relative_error(dx.sequence(b).topRows(n), dxb.data), tol) << "dL/dx of sequence " << b;
        EXPECT_TRUE(dx.sequence(b).bottomRows(T - n).isZero(0)) << "dL/dx padding of sequence " << b;
        for (std::size_t k = 0; k < alone_tensors.size() && !stateless; ++k) {
            const Index m = final_tensors[k]->rows() / B;
            for (Index j = 0; j < m; ++j)
                EXPECT_LT(relative_error(final_tensors[k]->row(row_of(m, j)), alone_tensors[k]->row(j)), tol)
                    << "final state tensor " << k << ", row " << j << ", sequence " << b;
        }
    }
    const auto params = layer.parameters();
    for (std::size_t i = 0; i < params.size(); ++i)
        EXPECT_LT(relative_error(batched_grads[i], params[i].param->grad), tol) << "gradient of " << params[i].name;
}

}  // namespace seqnn::testing
