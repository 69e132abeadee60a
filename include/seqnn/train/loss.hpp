// Losses: each returns the mean loss and writes dL/d(prediction).
#pragma once

#include "seqnn/core/errors.hpp"

namespace seqnn {

// Mean squared error over all entries, like nn.MSELoss(reduction="mean").
// Writes dL/dprediction into `grad` (resized to prediction's shape).
template <typename Scalar>
Scalar mse_loss(ConstMatrixRef<Scalar> prediction, ConstMatrixRef<Scalar> target, Matrix<Scalar>& grad) {
    if (prediction.rows() != target.rows() || prediction.cols() != target.cols())
        fail("mse_loss", "prediction " + shape_string(prediction) + " and target " + shape_string(target) +
                             " differ in shape");
    if (prediction.size() == 0) fail("mse_loss", "prediction " + shape_string(prediction) + " is empty");
    const Scalar n = static_cast<Scalar>(prediction.size());
    grad = (Scalar(2) / n) * (prediction - target);
    return (prediction - target).squaredNorm() / n;
}

}  // namespace seqnn
