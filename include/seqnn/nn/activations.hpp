// Element-wise activations and their derivatives, applied in place to matrix views.
#pragma once

#include "seqnn/core/types.hpp"

#include <cmath>
#include <stdexcept>
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

// GELU with the exact erf form, PyTorch's default: x * Phi(x).
template <typename Scalar>
Scalar gelu(Scalar x) {
    return Scalar(0.5) * x * (Scalar(1) + std::erf(x * Scalar(M_SQRT1_2)));
}

// d gelu / dx = Phi(x) + x * phi(x).
template <typename Scalar>
Scalar gelu_derivative(Scalar x) {
    const Scalar cdf = Scalar(0.5) * (Scalar(1) + std::erf(x * Scalar(M_SQRT1_2)));
    const Scalar pdf = std::exp(Scalar(-0.5) * x * x) * Scalar(0.5 * M_2_SQRTPI * M_SQRT1_2);
    return cdf + x * pdf;
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
// `out`; GELU reads `pre`.
template <typename Scalar>
void activation_backward(Activation a, ConstMatrixRef<Scalar> pre, ConstMatrixRef<Scalar> out,
                         MatrixRef<Scalar> grad) {
    switch (a) {
        case Activation::Identity: return;
        case Activation::Tanh: grad.array() *= Scalar(1) - out.array().square(); return;
        case Activation::Sigmoid: grad.array() *= out.array() * (Scalar(1) - out.array()); return;
        case Activation::ReLU: grad.array() *= (out.array() > Scalar(0)).template cast<Scalar>(); return;
        case Activation::GELU:
            grad.array() *= pre.unaryExpr([](Scalar v) { return gelu_derivative(v); }).array();
            return;
    }
}

}  // namespace seqnn
