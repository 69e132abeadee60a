// Element-wise activations and their derivatives, applied in place to matrix views.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"

#include <cmath>
#include <numbers>
#include <string>

namespace seqnn {

enum class Activation { Identity, Tanh, Sigmoid, ReLU, GELU };

inline std::string to_string(Activation a) {
    switch (a) {
        case Activation::Identity: return "identity";
        case Activation::Tanh: return "tanh";
        case Activation::Sigmoid: return "sigmoid";
        case Activation::ReLU: return "relu";
        case Activation::GELU: return "gelu";
    }
    return "unknown";
}

template <typename Scalar>
Scalar sigmoid(Scalar x) {
    // Never evaluates exp of a large positive number.
    if (x >= Scalar(0)) return Scalar(1) / (Scalar(1) + std::exp(-x));
    const Scalar e = std::exp(x);
    return e / (Scalar(1) + e);
}

// Phi(x), the standard normal CDF. PyTorch writes 0.5 * (1 + erf(x / sqrt 2)), which
// cancels in the lower tail (x = -6 keeps only 7 correct digits, x < -8.3 gives 0);
// erfc keeps full relative precision there, and the two never differ by more than a
// rounding error of 1. Constants come from <numbers>: the M_ macros are POSIX, not C++.
template <typename Scalar>
Scalar normal_cdf(Scalar x) {
    return Scalar(0.5) * std::erfc(-x * (std::numbers::sqrt2_v<Scalar> / 2));
}

// GELU with the exact erf form, PyTorch's default (approximate='none'): x * Phi(x).
template <typename Scalar>
Scalar gelu(Scalar x) {
    return x * normal_cdf(x);
}

// d gelu / dx = Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
template <typename Scalar>
Scalar gelu_derivative(Scalar x) {
    constexpr Scalar inv_sqrt_2pi = std::numbers::inv_sqrtpi_v<Scalar> * (std::numbers::sqrt2_v<Scalar> / 2);
    return normal_cdf(x) + x * inv_sqrt_2pi * std::exp(Scalar(-0.5) * x * x);
}

// z <- f(z).
template <typename Scalar>
void activation_forward(Activation a, MatrixRef<Scalar> z) {
    switch (a) {
        case Activation::Identity: return;
        case Activation::Tanh: z = z.array().tanh().matrix(); return;
        case Activation::Sigmoid: z = z.array().logistic().matrix(); return;
        case Activation::ReLU: z = z.cwiseMax(Scalar(0)); return;
        case Activation::GELU: z = z.unaryExpr([](Scalar v) { return gelu(v); }); return;
    }
}

// grad <- grad * f'(pre), where out = f(pre). Tanh, sigmoid and ReLU read only
// `out`; GELU reads `pre`. All three are (N, D).
template <typename Scalar>
void activation_backward(Activation a, ConstMatrixRef<Scalar> pre, ConstMatrixRef<Scalar> out,
                         MatrixRef<Scalar> grad) {
    if (out.rows() != grad.rows() || out.cols() != grad.cols() || pre.rows() != grad.rows() ||
        pre.cols() != grad.cols())
        fail("activation_backward(" + to_string(a) + ")", "pre " + shape_string(pre) + ", out " +
                                                             shape_string(out) + " and grad " + shape_string(grad) +
                                                             " must have one shape");
    switch (a) {
        case Activation::Identity: return;
        case Activation::Tanh: grad.array() *= Scalar(1) - out.array().square(); return;
        case Activation::Sigmoid: grad.array() *= out.array() * (Scalar(1) - out.array()); return;
        // A select, not a multiply by the mask: like PyTorch, an inf or NaN in grad where
        // the unit is off gives 0, not NaN.
        case Activation::ReLU: grad.array() = (out.array() > Scalar(0)).select(grad.array(), Scalar(0)); return;
        case Activation::GELU:
            grad.array() *= pre.unaryExpr([](Scalar v) { return gelu_derivative(v); }).array();
            return;
    }
}

}  // namespace seqnn
