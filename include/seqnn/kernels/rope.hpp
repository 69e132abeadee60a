// Rotary position embeddings (RoPE; Su et al. 2021, "RoFormer: Enhanced Transformer with
// Rotary Position Embedding"), applied in place to the heads of a (B*T, H*Dh) matrix.
//
// Each head's Dh features form Dh/2 pairs (x_i, x_{i+Dh/2}) -- the "rotate half" layout of
// GPT-NeoX and Hugging Face's Llama, not GPT-J's interleaved pairs -- and the pair i of
// the row at position p is rotated by the angle p * theta_i, theta_i = base^(-2i/Dh):
//   y_i        = x_i cos(p theta_i) - x_{i+Dh/2} sin(p theta_i)
//   y_{i+Dh/2} = x_{i+Dh/2} cos(p theta_i) + x_i sin(p theta_i)
// so that <rope(q, p1), rope(k, p2)> depends on p1 - p2 only. The backward of a rotation
// is the rotation by the opposite angle: rope_backward = rope_forward with -sin.
//
// Angles are computed in double and the cos/sin tables rounded once to Scalar, so float
// keeps its accuracy at large positions. Positions are row t of each sequence plus an
// offset (a KV cache's fill level).
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/types.hpp"

#include <cmath>
#include <string>

namespace seqnn {

/// cos and sin of positions [offset, offset + steps) for a head of head_dim features:
/// table (2*steps, Dh/2), rows 2t (cos) and 2t+1 (sin). Resized only if its shape is wrong,
/// so a preallocated table (step's workspace) is filled without allocating.
template <typename Scalar>
void rope_table(Index head_dim, Index offset, Index steps, double base, Matrix<Scalar>& table) {
    if (head_dim <= 0 || head_dim % 2 != 0)
        fail("RoPE", "head_dim must be positive and even, got " + std::to_string(head_dim));
    const Index half = head_dim / 2;
    if (table.rows() != 2 * steps || table.cols() != half) table.resize(2 * steps, half);
    for (Index t = 0; t < steps; ++t)
        for (Index i = 0; i < half; ++i) {
            const double theta = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
            const double angle = static_cast<double>(offset + t) * theta;
            table(2 * t, i) = static_cast<Scalar>(std::cos(angle));
            table(2 * t + 1, i) = static_cast<Scalar>(std::sin(angle));
        }
}

/// Rotates every head of x (B*T, H*Dh) -- x may be a column block of a wider matrix, e.g. the
/// q or k part of a fused qkv -- by the angles of `table` (from rope_table with `steps` = T):
/// row b*T + t uses table rows 2t, 2t+1. inverse = true rotates backwards (the backward pass).
template <typename Scalar>
void rope_apply(MatrixRef<Scalar> x, Index steps, Index heads, const Matrix<Scalar>& table, bool inverse = false) {
    const Index half = table.cols(), dh = 2 * half;
    if (steps <= 0 || x.rows() % steps != 0 || x.cols() != heads * dh || table.rows() != 2 * steps)
        fail("RoPE", "x " + shape_string(x) + " does not hold (B*T, H*Dh) rows with T=" + std::to_string(steps) +
                         ", H=" + std::to_string(heads) + ", Dh=" + std::to_string(dh) + " for a table " +
                         shape_string(table));
    const Scalar sign = inverse ? Scalar(-1) : Scalar(1);
    parallel_for(x.rows(), streamed_work(x.cols()), [&](Index r0, Index r1) {
        for (Index r = r0; r < r1; ++r) {
            const Index t = r % steps;
            const auto c = table.row(2 * t).array();
            const auto s = table.row(2 * t + 1).array() * sign;
            for (Index h = 0; h < heads; ++h) {
                auto x1 = x.row(r).segment(h * dh, half).array();
                auto x2 = x.row(r).segment(h * dh + half, half).array();
                for (Index i = 0; i < half; ++i) {
                    const Scalar a = x1(i), b = x2(i);
                    x1(i) = a * c(i) - b * s(i);  // y_i
                    x2(i) = b * c(i) + a * s(i);  // y_{i+Dh/2}
                }
            }
        }
    });
}

/// The same, for one head dimension and position range given directly (allocates the table).
template <typename Scalar>
void rope_forward(MatrixRef<Scalar> x, Index steps, Index heads, Index head_dim, Index offset, double base = 10000.0) {
    Matrix<Scalar> table;
    rope_table(head_dim, offset, steps, base, table);
    rope_apply<Scalar>(x, steps, heads, table, false);
}

/// dL/dx from dL/dy, in place: the inverse rotation.
template <typename Scalar>
void rope_backward(MatrixRef<Scalar> grad, Index steps, Index heads, Index head_dim, Index offset,
                   double base = 10000.0) {
    Matrix<Scalar> table;
    rope_table(head_dim, offset, steps, base, table);
    rope_apply<Scalar>(grad, steps, heads, table, true);
}

}  // namespace seqnn
