// Losses: each returns the mean loss and writes dL/d(prediction).
//
// Gradient accumulation: every backward in seqnn adds into the parameters' .grad.
// To train on k micro-batches as if on one batch, zero the gradients once, and for
// each micro-batch call the loss with `scale = 1/k` (or multiply its gradient by 1/k)
// before its backward; then take one optimizer step. With equal micro-batches this
// gives the big batch's mean loss gradient (tests/test_training.cpp checks it).
#pragma once

#include "seqnn/core/errors.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>

namespace seqnn {

/// Mean squared error over all entries, like nn.MSELoss(reduction="mean").
/// Writes dL/dprediction, times `scale`, into `grad` (resized to prediction's shape).
template <typename Scalar>
Scalar mse_loss(ConstMatrixRef<Scalar> prediction, ConstMatrixRef<Scalar> target, Matrix<Scalar>& grad,
                Scalar scale = Scalar(1)) {
    if (prediction.rows() != target.rows() || prediction.cols() != target.cols())
        fail("mse_loss", "prediction " + shape_string(prediction) + " and target " + shape_string(target) +
                             " differ in shape");
    if (prediction.size() == 0) fail("mse_loss", "prediction " + shape_string(prediction) + " is empty");
    const Scalar n = static_cast<Scalar>(prediction.size());
    // The loss first: grad may be the prediction's or the target's own matrix (in place).
    const Scalar loss = (prediction - target).squaredNorm() / n;
    grad = (scale * Scalar(2) / n) * (prediction - target);  // element by element: in place is safe
    return loss;
}

/// PyTorch's default ignore_index for F.cross_entropy.
inline constexpr int kIgnoreIndex = -100;

/// Cross-entropy of logits (N, V) against class ids (N), like
/// F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="mean"):
///   loss = mean over the rows whose target != ignore_index of  logsumexp(logits[i]) - logits[i, target[i]].
/// The log-softmax is fused and shifted by each row's maximum, so logits of 1e4 (or
/// -1e4) give finite, exact results. Writes dL/dlogits, times `scale`, into `grad`
/// (resized to (N, V)):  (softmax(logits[i]) - onehot(target[i])) / count, and zero on
/// ignored rows. If every row is ignored the loss is 0 and the gradient zero
/// (PyTorch returns NaN there). The sum runs in double, so float losses average well.
template <typename Scalar>
Scalar cross_entropy_loss(ConstMatrixRef<Scalar> logits, std::span<const int> targets, Matrix<Scalar>& grad,
                          int ignore_index = kIgnoreIndex, Scalar scale = Scalar(1)) {
    const Index N = logits.rows(), V = logits.cols();
    if (N == 0 || V == 0) fail("cross_entropy_loss", "logits " + shape_string(logits) + " are empty");
    if (static_cast<Index>(targets.size()) != N)
        fail("cross_entropy_loss", "logits " + shape_string(logits) + " have " + std::to_string(N) + " rows but " +
                                       std::to_string(targets.size()) + " targets were given");
    Index count = 0;
    for (Index i = 0; i < N; ++i) {
        const int c = targets[static_cast<std::size_t>(i)];
        if (c == ignore_index) continue;
        if (c < 0 || c >= V)
            fail("cross_entropy_loss", "target " + std::to_string(c) + " at row " + std::to_string(i) +
                                           " is out of range for logits " + shape_string(logits) +
                                           " (classes 0.." + std::to_string(V - 1) + ")");
        ++count;
    }
    grad.resize(N, V);
    if (count == 0) {
        grad.setZero();
        return Scalar(0);
    }
    const Scalar inv_count = scale / static_cast<Scalar>(count);
    double total = 0;
    for (Index i = 0; i < N; ++i) {
        const int c = targets[static_cast<std::size_t>(i)];
        if (c == ignore_index) {
            grad.row(i).setZero();
            continue;
        }
        // Read what the loss needs before grad's row is written: grad may be the logits'
        // own matrix (in place), and each row reads only its own logits.
        const Scalar m = logits.row(i).maxCoeff();
        const Scalar target_logit = logits(i, c);
        grad.row(i) = (logits.row(i).array() - m).exp().matrix();  // exp(l - max), (1, V)
        const Scalar sum = grad.row(i).sum();                       // >= 1: the max contributes 1
        const Scalar log_sum = std::log(sum);
        total += static_cast<double>(log_sum - (target_logit - m));  // logsumexp - l[c]
        grad.row(i) *= inv_count / sum;                             // softmax / count
        grad(i, c) -= inv_count;
    }
    return static_cast<Scalar>(total / static_cast<double>(count));
}

}  // namespace seqnn
