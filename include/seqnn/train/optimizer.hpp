// Optimizers over a ParameterList: every layer exposes its parameters the same
// way, so one optimizer serves them all.
#pragma once

#include "seqnn/core/parameter.hpp"

#include <cmath>
#include <vector>

namespace seqnn {

// Scales all gradients so that their global L2 norm is at most max_norm, like
// torch.nn.utils.clip_grad_norm_. Returns the norm before clipping.
template <typename Scalar>
Scalar clip_grad_norm(const ParameterList<Scalar>& params, Scalar max_norm) {
    double sum = 0;
    for (const auto& p : params) sum += p.param->grad.template cast<double>().squaredNorm();
    const Scalar norm = static_cast<Scalar>(std::sqrt(sum));
    if (norm > max_norm) {
        const Scalar scale = max_norm / (norm + Scalar(1e-6));
        for (const auto& p : params) p.param->grad *= scale;
    }
    return norm;
}

// Plain SGD with optional momentum: v = mu v + g; w -= lr v.
template <typename Scalar>
class SGD {
public:
    SGD(ParameterList<Scalar> params, Scalar lr, Scalar momentum = 0) : params_(std::move(params)), lr_(lr), momentum_(momentum) {
        for (const auto& p : params_) velocity_.push_back(Matrix<Scalar>::Zero(p.param->value.rows(), p.param->value.cols()));
    }
    void step() {
        for (std::size_t i = 0; i < params_.size(); ++i) {
            Parameter<Scalar>& p = *params_[i].param;
            velocity_[i] = momentum_ * velocity_[i] + p.grad;
            p.value -= lr_ * velocity_[i];
        }
    }
    void zero_grad() { seqnn::zero_grad(params_); }
    void set_lr(Scalar lr) { lr_ = lr; }

private:
    ParameterList<Scalar> params_;
    Scalar lr_, momentum_;
    std::vector<Matrix<Scalar>> velocity_;
};

// AdamW (Loshchilov & Hutter), PyTorch's torch.optim.AdamW update:
//   w -= lr * wd * w;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   w -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
// With weight_decay = 0 this is Adam.
template <typename Scalar>
class AdamW {
public:
    struct Options {
        Scalar lr = Scalar(1e-3);
        Scalar beta1 = Scalar(0.9);
        Scalar beta2 = Scalar(0.999);
        Scalar eps = Scalar(1e-8);
        Scalar weight_decay = Scalar(0.01);
    };

    AdamW(ParameterList<Scalar> params, Options options) : params_(std::move(params)), opt_(options) {
        for (const auto& p : params_) {
            m_.push_back(Matrix<Scalar>::Zero(p.param->value.rows(), p.param->value.cols()));
            v_.push_back(Matrix<Scalar>::Zero(p.param->value.rows(), p.param->value.cols()));
        }
    }

    void step() {
        ++t_;
        const Scalar c1 = Scalar(1) - static_cast<Scalar>(std::pow(opt_.beta1, t_));
        const Scalar c2 = Scalar(1) - static_cast<Scalar>(std::pow(opt_.beta2, t_));
        for (std::size_t i = 0; i < params_.size(); ++i) {
            Parameter<Scalar>& p = *params_[i].param;
            p.value *= Scalar(1) - opt_.lr * opt_.weight_decay;
            m_[i] = opt_.beta1 * m_[i] + (Scalar(1) - opt_.beta1) * p.grad;
            v_[i] = opt_.beta2 * v_[i] + (Scalar(1) - opt_.beta2) * p.grad.cwiseAbs2();
            p.value.array() -= opt_.lr * (m_[i].array() / c1) / ((v_[i].array() / c2).sqrt() + opt_.eps);
        }
    }
    void zero_grad() { seqnn::zero_grad(params_); }
    void set_lr(Scalar lr) { opt_.lr = lr; }
    Scalar lr() const { return opt_.lr; }
    long steps() const { return t_; }

private:
    ParameterList<Scalar> params_;
    Options opt_;
    std::vector<Matrix<Scalar>> m_, v_;
    long t_ = 0;
};

}  // namespace seqnn
