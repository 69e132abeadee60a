// Optimizers over a ParameterList: every layer exposes its parameters the same
// way, so one optimizer serves them all. The updates are PyTorch's, operation for
// operation (torch/optim/sgd.py and adamw.py, the single-tensor path), so a model
// trained in double here follows the same trajectory as in PyTorch.
//
// Hyperparameters are doubles, like PyTorch's Python floats: derived factors such
// as 1 - beta1 and the bias corrections are computed in double and then applied in
// the parameters' precision.
//
// An optimizer's state is a set of named tensors, for checkpoints:
//   SGD:   <prefix>momentum_buffer.<parameter name>                 (when momentum != 0)
//   AdamW: <prefix>exp_avg.<parameter name>, <prefix>exp_avg_sq.<parameter name>
// with PyTorch's state keys, plus the step count (steps(), set_steps()).
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parallel.hpp"
#include "seqnn/core/parameter.hpp"

#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace seqnn {

/// Named tensors: an optimizer's state, a state_dict's weights.
template <typename Scalar>
using NamedTensors = std::map<std::string, Matrix<Scalar>>;

/// Scales all gradients so that their global L2 norm is at most max_norm, like
/// torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when
/// coef < 1. The norm is summed in double. Returns the norm before clipping.
template <typename Scalar>
Scalar clip_grad_norm(const ParameterList<Scalar>& params, Scalar max_norm) {
    double sum = 0;
    for (const auto& p : params) sum += p.param->grad.template cast<double>().squaredNorm();
    const double norm = std::sqrt(sum);
    const double coef = static_cast<double>(max_norm) / (norm + 1e-6);
    if (coef < 1.0)
        for (const auto& p : params) p.param->grad *= static_cast<Scalar>(coef);
    return static_cast<Scalar>(norm);
}

/// Throws shape_error unless lr is a finite number >= 0, as PyTorch requires.
inline void check_learning_rate(const std::string& where, double lr) {
    if (!(lr >= 0.0) || !std::isfinite(lr)) fail(where, "lr must be a finite number >= 0, got " + number_text(lr));
}

/// Throws shape_error unless `value` is a finite number >= 0.
inline void check_non_negative(const std::string& where, const std::string& what, double value) {
    if (!(value >= 0.0) || !std::isfinite(value))
        fail(where, what + " must be a finite number >= 0, got " + number_text(value));
}

// What every optimizer offers: one update from the gradients in .grad, the
/// learning rate (for schedules), and its state as named tensors plus a step count.
template <typename Scalar>
class Optimizer {
public:
    virtual ~Optimizer() = default;
    /// One update of every parameter from its gradient.
    virtual void step() = 0;
    /// The learning rate.
    virtual double lr() const = 0;
    /// Sets the learning rate (a schedule calls this).
    virtual void set_lr(double lr) = 0;
    /// Appends the state tensors, named `<prefix><key>.<parameter name>`.
    virtual void save_state(NamedTensors<Scalar>& out, const std::string& prefix = "optimizer.") const {
        for (const Slot& slot : slots_)
            for (std::size_t i = 0; i < params_.size(); ++i)
                out[prefix + slot.key + "." + params_[i].name] = slot.tensors[i];
    }
    /// Reads them back; every tensor must be present with its parameter's shape.
    virtual void load_state(const NamedTensors<Scalar>& in, const std::string& prefix = "optimizer.") {
        const std::string where = name_ + ".load_state";
        for (Slot& slot : slots_)
            for (std::size_t i = 0; i < params_.size(); ++i) {
                const std::string key = prefix + slot.key + "." + params_[i].name;
                const auto it = in.find(key);
                if (it == in.end()) throw format_error(where + ": optimizer state '" + key + "' is missing");
                const Matrix<Scalar>& v = params_[i].param->value;
                if (it->second.rows() != v.rows() || it->second.cols() != v.cols())
                    throw format_error(where + ": optimizer state '" + key + "' has shape " + shape_string(it->second) +
                                       ", expected " + shape_string(v) + " like the parameter");
                slot.tensors[i] = it->second;
            }
    }

    /// Throws format_error (naming `where`) unless the state tensors `in` (as load_state
    /// takes them) hold values this optimizer can resume from. By default: all finite.
    virtual void check_state(const NamedTensors<Scalar>& in, const std::string& prefix, const std::string& where) const {
        for (const auto& [name, m] : in)
            if (name.rfind(prefix, 0) == 0 && !m.allFinite())
                throw format_error(where + ": optimizer state '" + name + "' holds a NaN or infinite value");
    }

    /// Sets every parameter's gradient to zero.
    void zero_grad() { seqnn::zero_grad(params_); }
    /// The updates taken so far.
    long steps() const { return steps_; }
    /// Sets the update count (restoring a checkpoint).
    void set_steps(long steps) {
        if (steps < 0) fail("Optimizer.set_steps", "the step count must be >= 0, got " + std::to_string(steps));
        steps_ = steps;
    }
    /// The parameters it updates.
    const ParameterList<Scalar>& parameters() const { return params_; }

protected:
    /// An optimizer called `name` in messages ("SGD") of these parameters.
    Optimizer(std::string name, ParameterList<Scalar> params) : name_(std::move(name)), params_(std::move(params)) {}

    /// Per-parameter state: one tensor per parameter, saved under the prefix, then PyTorch's
    /// key ("exp_avg"), a dot and the parameter's name.
    struct Slot {
        std::string key;                       ///< PyTorch's name of the state ("exp_avg", "momentum_buffer")
        std::vector<Matrix<Scalar>> tensors;   ///< one per parameter, shaped like it
    };
    /// Adds a slot of zeros shaped like the parameters; slot(k) is the k-th added.
    void add_slot(std::string key) {
        Slot slot{std::move(key), {}};
        for (const auto& p : params_)
            slot.tensors.push_back(Matrix<Scalar>::Zero(p.param->value.rows(), p.param->value.cols()));
        slots_.push_back(std::move(slot));
    }
    /// The tensors of the k-th slot, one per parameter.
    std::vector<Matrix<Scalar>>& slot(std::size_t k) { return slots_[k].tensors; }

    /// The name in messages.
    std::string name_;
    /// The parameters it updates.
    ParameterList<Scalar> params_;
    /// The updates taken so far.
    long steps_ = 0;
    /// The per-parameter state, what save_state writes and load_state reads.
    std::vector<Slot> slots_;
};

/// What SGD and AdamW share beyond the interface: their settings, an Options struct whose
/// lr the schedules read and set.
template <typename Scalar, typename Settings>
class OptimizerWith : public Optimizer<Scalar> {
public:
    /// The learning rate.
    double lr() const override { return opt_.lr; }
    /// Sets the learning rate (a schedule's step); it must be finite and >= 0.
    void set_lr(double lr) override {
        check_learning_rate(this->name_ + ".set_lr", lr);
        opt_.lr = lr;
    }
    /// The settings.
    const Settings& options() const { return opt_; }

protected:
    /// An optimizer called `name` of `params` with `options`, whose lr is checked.
    OptimizerWith(const char* name, ParameterList<Scalar> params, Settings options)
        : Optimizer<Scalar>(name, std::move(params)), opt_(options) {
        check_learning_rate(name, opt_.lr);
    }

    Settings opt_;  ///< the settings; lr changes with set_lr
};

/// PyTorch's SGD settings.
struct SGDOptions {
    /// Learning rate.
    double lr = 1e-3;
    /// Momentum factor.
    double momentum = 0;
    /// Dampening of the momentum.
    double dampening = 0;
    /// L2 penalty added to the gradient.
    double weight_decay = 0;
    /// Nesterov momentum.
    bool nesterov = false;
};

/// SGD with momentum, dampening, weight decay and Nesterov, PyTorch's torch.optim.SGD:
///   g = grad + weight_decay * w
///   buf = g on the first step, else momentum * buf + (1 - dampening) * g
///   g = g + momentum * buf (nesterov) or buf
///   w -= lr * g
template <typename Scalar>
class SGD : public OptimizerWith<Scalar, SGDOptions> {
public:
    /// PyTorch's SGD settings.
    using Options = SGDOptions;

    /// SGD over these parameters.
    SGD(ParameterList<Scalar> params, Options options) : OptimizerWith<Scalar, SGDOptions>("SGD", std::move(params), options) {
        const Options& o = this->opt_;
        check_non_negative("SGD", "momentum", o.momentum);
        check_non_negative("SGD", "dampening", o.dampening);
        check_non_negative("SGD", "weight_decay", o.weight_decay);
        if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
            fail("SGD", "Nesterov momentum requires a momentum and zero dampening");
        if (o.momentum != 0) this->add_slot("momentum_buffer");
    }
    /// SGD with a learning rate and momentum.
    SGD(ParameterList<Scalar> params, double lr, double momentum = 0)
        : SGD(std::move(params), Options{.lr = lr, .momentum = momentum}) {}

    void step() override {
        const Options& o = this->opt_;
        const Scalar lr = static_cast<Scalar>(o.lr), mu = static_cast<Scalar>(o.momentum);
        const Scalar wd = static_cast<Scalar>(o.weight_decay);
        const Scalar keep = static_cast<Scalar>(1.0 - o.dampening);
        for (std::size_t i = 0; i < this->params_.size(); ++i) {
            Parameter<Scalar>& p = *this->params_[i].param;
            Matrix<Scalar> g = p.grad;
            if (o.weight_decay != 0) g += wd * p.value;
            if (o.momentum != 0) {
                Matrix<Scalar>& buf = this->slot(0)[i];
                if (this->steps_ == 0)
                    buf = g;
                else
                    buf = buf * mu + keep * g;
                if (o.nesterov)
                    g += mu * buf;
                else
                    g = buf;
            }
            p.value += -lr * g;
        }
        ++this->steps_;
    }

};

/// Elements per block boundary of AdamW's threaded update: a cache line of floats, whole
/// SIMD packets, so an element takes the same path on any thread count.
inline constexpr Index kAdamBlock = 16;

/// PyTorch's AdamW settings.
struct AdamWOptions {
    /// Learning rate.
    double lr = 1e-3;
    /// Decay of the first moment.
    double beta1 = 0.9;
    /// Decay of the second moment.
    double beta2 = 0.999;
    /// Added to the second moment's root.
    double eps = 1e-8;
    /// Decoupled weight decay.
    double weight_decay = 0.01;
};

/// AdamW (Loshchilov & Hutter), PyTorch's torch.optim.AdamW (amsgrad off):
///   t += 1
///   w *= 1 - lr * weight_decay
///   m = lerp(m, g, 1 - beta1)                      = m + (1 - beta1) (g - m)
///   v = v * beta2 + (1 - beta2) g^2
///   w += -(lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// With weight_decay = 0 this is Adam.
template <typename Scalar>
class AdamW : public OptimizerWith<Scalar, AdamWOptions> {
public:
    /// PyTorch's AdamW settings.
    using Options = AdamWOptions;

    /// AdamW over these parameters.
    AdamW(ParameterList<Scalar> params, Options options)
        : OptimizerWith<Scalar, AdamWOptions>("AdamW", std::move(params), options) {
        // PyTorch's checks: 0 <= lr, 0 <= eps, betas in [0, 1), 0 <= weight_decay (and all finite).
        const Options& o = this->opt_;
        check_non_negative("AdamW", "eps", o.eps);
        check_non_negative("AdamW", "weight_decay", o.weight_decay);
        for (const double beta : {o.beta1, o.beta2})
            if (!(beta >= 0.0 && beta < 1.0))
                fail("AdamW", "betas must be in [0, 1), got beta1=" + number_text(o.beta1) +
                                  ", beta2=" + number_text(o.beta2));
        this->add_slot("exp_avg");     // m
        this->add_slot("exp_avg_sq");  // v
    }

    void step() override {
        const Options& o = this->opt_;
        std::vector<Matrix<Scalar>>& exp_avg = this->slot(0);
        std::vector<Matrix<Scalar>>& exp_avg_sq = this->slot(1);
        ++this->steps_;
        const double t = static_cast<double>(this->steps_);
        const Scalar decay = static_cast<Scalar>(1.0 - o.lr * o.weight_decay);
        const double w1 = 1.0 - o.beta1;  // torch.lerp's weight
        const Scalar beta2 = static_cast<Scalar>(o.beta2), one_minus_beta2 = static_cast<Scalar>(1.0 - o.beta2);
        const Scalar step_size = static_cast<Scalar>(o.lr / (1.0 - std::pow(o.beta1, t)));
        const Scalar bc2_sqrt = static_cast<Scalar>(std::sqrt(1.0 - std::pow(o.beta2, t)));
        const Scalar eps = static_cast<Scalar>(o.eps);
        for (std::size_t i = 0; i < this->params_.size(); ++i) {
            Parameter<Scalar>& p = *this->params_[i].param;
            // Elementwise over the flat arrays in blocks of whole packets, so threads give
            // bitwise the serial result.
            using Flat = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
            Flat value(p.value.data(), p.value.size()), grad(p.grad.data(), p.grad.size());
            Flat m_all(exp_avg[i].data(), exp_avg[i].size()), v_all(exp_avg_sq[i].data(), exp_avg_sq[i].size());
            parallel_for(p.value.size(), streamed_work(1), [&](Index begin, Index end) {
                auto w = value.segment(begin, end - begin);
                auto m = m_all.segment(begin, end - begin);
                auto v = v_all.segment(begin, end - begin);
                const auto g = grad.segment(begin, end - begin);
                if (o.weight_decay != 0) w *= decay;
                // torch.lerp: start + w (end - start) for w < 0.5, else end - (end - start)(1 - w).
                if (w1 < 0.5)
                    m = m + static_cast<Scalar>(w1) * (g - m);
                else
                    m = g - (g - m) * static_cast<Scalar>(1.0 - w1);
                v = v * beta2 + one_minus_beta2 * g * g;
                w += -step_size * (m / (v.sqrt() / bc2_sqrt + eps));
            }, kAdamBlock);
        }
    }

    /// Finite values, and exp_avg_sq >= 0 (its square root divides the update).
    void check_state(const NamedTensors<Scalar>& in, const std::string& prefix, const std::string& where) const override {
        Optimizer<Scalar>::check_state(in, prefix, where);
        const std::string squares = prefix + "exp_avg_sq.";
        for (const auto& [name, m] : in)
            if (name.rfind(squares, 0) == 0 && (m.array() < Scalar(0)).any())
                throw format_error(where + ": optimizer state '" + name + "' holds a negative value (a mean of squares)");
    }

};

}  // namespace seqnn
