// Trainable parameters with their gradients and PyTorch state_dict names.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"

#include <cmath>
#include <cstddef>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace seqnn {

/// A tensor of weights and its gradient. Stored as a matrix; `shape` is the
/// tensor's PyTorch shape, e.g. {3H, I} for weight_ih or {3H} for a bias (stored as (1, 3H)).
template <typename Scalar>
struct Parameter {
    /// The weights.
    Matrix<Scalar> value;
    /// The gradient dL/d(value), same shape; backward adds into it.
    Matrix<Scalar> grad;
    /// The tensor's PyTorch shape, e.g. {3H, I}.
    std::vector<Index> shape;

    Parameter() = default;
    /// A matrix parameter (rows, cols); shape_error if the size is negative or too large.
    Parameter(Index rows, Index cols)
        : value(Matrix<Scalar>::Zero(checked_rows(rows, cols), cols)), grad(Matrix<Scalar>::Zero(rows, cols)),
          shape{rows, cols} {}
    /// A vector parameter (n), stored as one row.
    explicit Parameter(Index n)
        : value(Matrix<Scalar>::Zero(1, checked_rows(n, 1))), grad(Matrix<Scalar>::Zero(1, n)), shape{n} {}

    /// The number of scalars.
    Index size() const { return value.size(); }
    auto row() const { return value.row(0); }  ///< a vector parameter as a row vector
    /// Sets the gradient to zero.
    void zero_grad() { grad.setZero(); }

    /// rows, once rows * cols is known to be a size seqnn allocates (checked_elements).
    static Index checked_rows(Index rows, Index cols) {
        checked_elements("Parameter", rows, cols);
        return rows;
    }

    /// U(-bound, bound), PyTorch's default for RNN weights and (with bound = 1/sqrt(fan_in)) Linear.
    void init_uniform(Scalar bound, Rng& rng) {
        std::uniform_real_distribution<double> dist(-static_cast<double>(bound), static_cast<double>(bound));
        for (Index i = 0; i < value.size(); ++i) value.data()[i] = static_cast<Scalar>(dist(rng));
    }
    /// N(0, 1), PyTorch's default for nn.Embedding.
    void init_normal(Rng& rng) {
        std::normal_distribution<double> normal(0.0, 1.0);
        for (Index i = 0; i < value.size(); ++i) value.data()[i] = static_cast<Scalar>(normal(rng));
    }
};

/// A parameter with its full state_dict name, e.g. "layers.0.weight_ih_l1".
template <typename Scalar>
struct NamedParameter {
    /// The full state_dict name.
    std::string name;
    /// The parameter, owned by its layer.
    Parameter<Scalar>* param;
};

/// A layer's parameters in state_dict order.
template <typename Scalar>
using ParameterList = std::vector<NamedParameter<Scalar>>;

/// Called by a model's backward each time the gradients of a run of its parameters are
/// final: [first, end) are indices into the model's parameters(). Backward reports every
/// parameter exactly once, in runs from the last parameter back to the first (the order
/// in which it finishes them), never an empty run, and adds nothing to a run's gradients
/// once it has reported them, so the hook may read or send them at once (e.g.
/// distributed::DataParallel::parameters_ready, to start their reduction while backward
/// goes on). It runs on the calling thread, between the layers' backwards. An empty hook
/// (the default) costs nothing and changes nothing.
using GradientReadyHook = std::function<void(std::size_t first, std::size_t end)>;

/// Sets every gradient in the list to zero.
template <typename Scalar>
void zero_grad(const ParameterList<Scalar>& params) {
    for (const auto& p : params) p.param->zero_grad();
}

/// The number of scalars in all the parameters.
template <typename Scalar>
Index count_parameters(const ParameterList<Scalar>& params) {
    Index n = 0;
    for (const auto& p : params) n += p.param->size();
    return n;
}

}  // namespace seqnn
