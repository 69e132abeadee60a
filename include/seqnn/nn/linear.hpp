// Linear: y = x W^T + b, PyTorch's nn.Linear (weight (out, in), bias (out)).
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/kernels/elementwise.hpp"
#include "seqnn/kernels/matmul.hpp"

#include <cmath>
#include <string>

namespace seqnn {

/// y = x W^T + b on every row, nn.Linear.
template <typename Scalar>
class Linear {
public:
    Parameter<Scalar> weight;  ///< (out, in)
    Parameter<Scalar> bias;    ///< (out), empty when has_bias() is false

    Linear() = default;
    /// PyTorch's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    Linear(Index in_features, Index out_features, bool with_bias, Rng& rng) {
        // Checked before anything is allocated: a negative size must not reach Eigen.
        if (in_features <= 0 || out_features <= 0)
            fail("Linear", "sizes must be positive, got in=" + std::to_string(in_features) +
                               ", out=" + std::to_string(out_features));
        weight = Parameter<Scalar>(out_features, in_features);
        const Scalar bound = Scalar(1) / std::sqrt(Scalar(in_features));
        weight.init_uniform(bound, rng);
        if (with_bias) {
            bias = Parameter<Scalar>(out_features);
            bias.init_uniform(bound, rng);
        }
    }

    /// Input width.
    Index in_features() const { return weight.value.cols(); }
    /// Output width.
    Index out_features() const { return weight.value.rows(); }
    /// Whether it has a bias.
    bool has_bias() const { return bias.size() > 0; }

    /// y = x W^T + b: (N, in) -> (N, out). y may be a view (one step of a sequence).
    void forward(ConstMatrixRef<Scalar> x, MatrixRef<Scalar> y) const {
        check_input(x.rows(), x.cols());
        check_matrix("Linear", "output y", y, x.rows(), out_features());
        matmul_rows<Scalar>(x, weight.value.transpose(), y, has_bias() ? bias.value.data() : nullptr);  // (N, in) x (in, out)
    }

    /// y = x W^T + b, (N, in) -> (N, out).
    Matrix<Scalar> forward(ConstMatrixRef<Scalar> x) const {
        Matrix<Scalar> y(x.rows(), out_features());
        forward(x, y);
        return y;
    }

    /// Given x (N, in) and dL/dy (N, out): dW += dy^T x, db += sum_rows dy, and
    /// returns dL/dx = dy W (N, in).
    Matrix<Scalar> backward(ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> dy) {
        Matrix<Scalar> dx(x.rows(), in_features());
        backward(x, dy, dx);
        return dx;
    }

    /// The same, writing dL/dx into dx (N, in), which may be a view.
    void backward(ConstMatrixRef<Scalar> x, ConstMatrixRef<Scalar> dy, MatrixRef<Scalar> dx) {
        check_input(x.rows(), x.cols());
        if (dy.rows() != x.rows() || dy.cols() != out_features())
            fail("Linear.backward", "dy has shape " + shape_string(dy) + ", expected " +
                                        shape_string(x.rows(), out_features()));
        check_matrix("Linear.backward", "dx", dx, x.rows(), in_features());
        add_transposed_product<Scalar>(dy, x, weight.grad);  // (out, N) x (N, in)
        if (has_bias()) add_column_sums(dy, bias.grad);  // (1, out)
        matmul_rows<Scalar>(dy, weight.value, dx);  // (N, out) x (out, in)
    }

    /// Appends `weight` and `bias` after `prefix`.
    void collect_parameters(const std::string& prefix, ParameterList<Scalar>& out) {
        out.push_back({prefix + "weight", &weight});
        if (has_bias()) out.push_back({prefix + "bias", &bias});
    }

private:
    void check_input(Index rows, Index cols) const {
        (void)rows;
        if (cols != in_features())
            fail("Linear", "input has shape " + shape_string(rows, cols) + ", expected (N, " +
                               std::to_string(in_features()) + ")");
    }
};

}  // namespace seqnn
