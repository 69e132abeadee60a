// Element-wise activations and their derivatives, applied in place to matrix views,
// split by rows across threads (Eigen runs element-wise expressions on one thread).
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/types.hpp"

#include <unsupported/Eigen/SpecialFunctions>

#include <cmath>
#include <numbers>
#include <string>
#include <type_traits>

namespace seqnn {

/// Element-wise activations.
enum class Activation { Identity, Tanh, Sigmoid, ReLU, GELU };

/// The activation's name, e.g. "GELU".
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

/// The logistic function 1 / (1 + e^-x).
template <typename Scalar>
Scalar sigmoid(Scalar x) {
    // Never evaluates exp of a large positive number.
    if (x >= Scalar(0)) return Scalar(1) / (Scalar(1) + std::exp(-x));
    const Scalar e = std::exp(x);
    return e / (Scalar(1) + e);
}

/// Phi(x), the standard normal CDF. PyTorch writes 0.5 * (1 + erf(x / sqrt 2)), which
/// cancels in the lower tail (x = -6 keeps only 7 correct digits, x < -8.3 gives 0);
/// erfc keeps full relative precision there, and the two never differ by more than a
/// rounding error of 1. Constants come from `<numbers>`: the M_ macros are POSIX, not C++.
template <typename Scalar>
Scalar normal_cdf(Scalar x) {
    return Scalar(0.5) * std::erfc(-x * (std::numbers::sqrt2_v<Scalar> / 2));
}

/// GELU with the exact erf form, PyTorch's default (approximate='none'): x * Phi(x).
template <typename Scalar>
Scalar gelu(Scalar x) {
    return x * normal_cdf(x);
}

/// d gelu / dx = Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
template <typename Scalar>
Scalar gelu_derivative(Scalar x) {
    constexpr Scalar inv_sqrt_2pi = std::numbers::inv_sqrtpi_v<Scalar> * (std::numbers::sqrt2_v<Scalar> / 2);
    return normal_cdf(x) + x * inv_sqrt_2pi * std::exp(Scalar(-0.5) * x * x);
}

namespace activation_detail {

// GELU on a block, x Phi(x). For float, Eigen's vectorised erf (a rational approximation
// within a few ulp, about 10x std::erfc): x (1 + erf(x / sqrt 2)) / 2, as PyTorch computes
// it. double keeps the scalar erfc form above, which is exact in the lower tail too.
template <typename Scalar, typename Block>
void gelu_block(Block z) {
    if constexpr (std::is_same_v<Scalar, float>) {
        auto a = z.array();
        a = 0.5f * a * (1.0f + (a * (std::numbers::sqrt2_v<float> / 2)).erf());
    } else {
        z = z.unaryExpr([](Scalar v) { return gelu(v); });
    }
}

// grad *= gelu'(x) on a block, the same two forms.
template <typename Scalar, typename ConstBlock, typename Block>
void gelu_derivative_block(ConstBlock x, Block grad) {
    if constexpr (std::is_same_v<Scalar, float>) {
        constexpr float inv_sqrt_2pi = std::numbers::inv_sqrtpi_v<float> * (std::numbers::sqrt2_v<float> / 2);
        const auto a = x.array();
        grad.array() *= 0.5f * (1.0f + (a * (std::numbers::sqrt2_v<float> / 2)).erf()) +
                        a * inv_sqrt_2pi * (-0.5f * a.square()).exp();
    } else {
        grad.array() *= x.unaryExpr([](Scalar v) { return gelu_derivative(v); }).array();
    }
}

}  // namespace activation_detail

/// z <- f(z).
template <typename Scalar>
void activation_forward(Activation a, MatrixRef<Scalar> z) {
    if (a == Activation::Identity) return;
    parallel_for(z.rows(), streamed_work(z.cols()), [&](Index r0, Index r1) {
        auto block = z.middleRows(r0, r1 - r0);
        switch (a) {
            case Activation::Identity: return;
            case Activation::Tanh: block = block.array().tanh().matrix(); return;
            case Activation::Sigmoid: block = block.array().logistic().matrix(); return;
            case Activation::ReLU: block = block.cwiseMax(Scalar(0)); return;
            case Activation::GELU: activation_detail::gelu_block<Scalar>(block); return;
        }
    });
}

/// grad <- grad * f'(pre), where out = f(pre). Tanh, sigmoid and ReLU read only
/// `out`; GELU reads `pre`. All three are (N, D).
template <typename Scalar>
void activation_backward(Activation a, ConstMatrixRef<Scalar> pre, ConstMatrixRef<Scalar> out,
                         MatrixRef<Scalar> grad) {
    if (out.rows() != grad.rows() || out.cols() != grad.cols() || pre.rows() != grad.rows() ||
        pre.cols() != grad.cols())
        fail("activation_backward(" + to_string(a) + ")", "pre " + shape_string(pre) + ", out " +
                                                             shape_string(out) + " and grad " + shape_string(grad) +
                                                             " must have one shape");
    if (a == Activation::Identity) return;
    parallel_for(grad.rows(), streamed_work(grad.cols()), [&](Index r0, Index r1) {
        const Index n = r1 - r0;
        auto g = grad.middleRows(r0, n).array();
        const auto y = out.middleRows(r0, n).array();
        switch (a) {
            case Activation::Identity: return;
            case Activation::Tanh: g *= Scalar(1) - y.square(); return;
            case Activation::Sigmoid: g *= y * (Scalar(1) - y); return;
            // A select, not a multiply by the mask: like PyTorch, an inf or NaN in grad where
            // the unit is off gives 0, not NaN.
            case Activation::ReLU: g = (y > Scalar(0)).select(g, Scalar(0)); return;
            case Activation::GELU:
                activation_detail::gelu_derivative_block<Scalar>(pre.middleRows(r0, n), grad.middleRows(r0, n));
                return;
        }
    });
}

}  // namespace seqnn
