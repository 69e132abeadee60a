// Training pieces: cross-entropy, the optimizers against PyTorch's update rules
// computed by hand, gradient clipping, the learning-rate schedule, gradient
// accumulation and dropout.
#include "testing.hpp"

#include <seqnn/layers/dropout.hpp>
#include <seqnn/seqnn.hpp>
#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>
#include <seqnn/train/schedule.hpp>
#include "layer_instances.hpp"

#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

using namespace seqnn;
using seqnn::testing::random_matrix;
using seqnn::testing::relative_error;

namespace {

// -log softmax(logits[i])[target[i]], averaged over the rows not ignored; long double loops.
double reference_cross_entropy(const Matrix<double>& logits, const std::vector<int>& targets, int ignore) {
    long double total = 0;
    int count = 0;
    for (Index i = 0; i < logits.rows(); ++i) {
        if (targets[static_cast<std::size_t>(i)] == ignore) continue;
        long double sum = 0;
        for (Index j = 0; j < logits.cols(); ++j) sum += std::exp(static_cast<long double>(logits(i, j)));
        total += std::log(sum) - logits(i, targets[static_cast<std::size_t>(i)]);
        ++count;
    }
    return static_cast<double>(total / count);
}

std::vector<int> random_targets(Index n, int classes, Rng& rng) {
    std::uniform_int_distribution<int> dist(0, classes - 1);
    std::vector<int> t(static_cast<std::size_t>(n));
    for (auto& v : t) v = dist(rng);
    return t;
}

// One parameter of shape (1, 1), for hand-computed updates.
struct Scalar1 {
    Parameter<double> p{1, 1};
    ParameterList<double> list() { return {{"w", &p}}; }
};

}  // namespace

// ---------------------------------------------------------------- cross-entropy

TEST(CrossEntropy, MatchesAPlainReferenceOnOddSizes) {
    Rng rng(1);
    const Matrix<double> logits = random_matrix<double>(37, 11, rng, 3.0);
    std::vector<int> targets = random_targets(37, 11, rng);
    targets[4] = targets[20] = kIgnoreIndex;
    Matrix<double> grad;
    const double loss = cross_entropy_loss<double>(logits, targets, grad);
    EXPECT_NEAR(loss, reference_cross_entropy(logits, targets, kIgnoreIndex), 1e-14);
    // Each row's gradient is (softmax - onehot) / count: it sums to zero; ignored rows are zero.
    for (Index i = 0; i < 37; ++i) EXPECT_NEAR(grad.row(i).sum(), 0.0, 1e-15);
    EXPECT_EQ(grad.row(4).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_EQ(grad.row(20).cwiseAbs().maxCoeff(), 0.0);
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
    Rng rng(2);
    Matrix<double> logits = random_matrix<double>(9, 7, rng, 2.0);
    std::vector<int> targets = random_targets(9, 7, rng);
    targets[3] = -1;
    Matrix<double> grad;
    cross_entropy_loss<double>(logits, targets, grad, /*ignore_index=*/-1);
    Matrix<double> scratch;
    const double err = seqnn::testing::finite_difference_error(
        logits, grad, [&] { return cross_entropy_loss<double>(logits, targets, scratch, -1); });
    EXPECT_LT(err, 1e-7);
}

TEST(CrossEntropy, IsStableForHugeLogits) {
    // Logits of +-1e4 overflow exp() in any precision; the fused form stays exact.
    for (double scale : {1e4, -1e4}) {
        Matrix<float> logits(2, 3);
        logits << static_cast<float>(scale), 0.0f, static_cast<float>(-scale), 0.0f, static_cast<float>(scale), 1.0f;
        Matrix<float> grad;
        const std::vector<int> targets{0, 1};
        const float loss = cross_entropy_loss<float>(logits, targets, grad);
        ASSERT_TRUE(std::isfinite(loss));
        ASSERT_TRUE(grad.allFinite());
        // Rows [s, 0, -s] and [0, s, 1], targets 0 and 1: the target's logit is s in both.
        // s = 1e4: both rows are certain, loss 0. s = -1e4: row 0 loses 2e4 (its max is 1e4),
        // row 1 loses 1e4 + log(1 + e).
        const double row0 = scale > 0 ? 0.0 : 2e4;
        const double row1 = scale > 0 ? 0.0 : 1e4 + std::log1p(std::exp(1.0));
        EXPECT_NEAR(loss, (row0 + row1) / 2, 1e-3);
    }
}

TEST(CrossEntropy, ScaleMultipliesOnlyTheGradient) {
    Rng rng(3);
    const Matrix<double> logits = random_matrix<double>(5, 4, rng);
    const std::vector<int> targets = random_targets(5, 4, rng);
    Matrix<double> g1, g2;
    const double l1 = cross_entropy_loss<double>(logits, targets, g1);
    const double l2 = cross_entropy_loss<double>(logits, targets, g2, kIgnoreIndex, 0.25);
    EXPECT_EQ(l1, l2);
    EXPECT_LT(relative_error(g2, (0.25 * g1).eval()), 1e-16);
}

TEST(CrossEntropy, AllIgnoredGivesZero) {
    const Matrix<double> logits = Matrix<double>::Ones(3, 4);
    Matrix<double> grad;
    EXPECT_EQ(cross_entropy_loss<double>(logits, std::vector<int>{-100, -100, -100}, grad), 0.0);
    EXPECT_EQ(grad.cwiseAbs().maxCoeff(), 0.0);
}

TEST(CrossEntropy, BadInputNamesTheShapes) {
    const Matrix<double> logits = Matrix<double>::Zero(3, 4);
    Matrix<double> grad;
    seqnn::testing::expect_shape_error([&] { cross_entropy_loss<double>(logits, std::vector<int>{0, 1}, grad); },
                                       {"cross_entropy_loss", "(3, 4)", "2 targets"});
    seqnn::testing::expect_shape_error([&] { cross_entropy_loss<double>(logits, std::vector<int>{0, 4, 1}, grad); },
                                       {"cross_entropy_loss", "target 4", "row 1"});
}

// ---------------------------------------------------------------- optimizers

// torch.optim.SGD(lr=0.1, momentum=0.9) on w = 1 with a constant gradient 0.5:
// buf = 0.5, 0.95, 1.355; w = 0.95, 0.855, 0.7195.
TEST(SGD, MomentumMatchesPyTorchByHand) {
    Scalar1 s;
    s.p.value(0, 0) = 1.0;
    SGD<double> opt(s.list(), {.lr = 0.1, .momentum = 0.9});
    const double expected[] = {0.95, 0.855, 0.7195};
    for (double e : expected) {
        s.p.grad(0, 0) = 0.5;
        opt.step();
        EXPECT_NEAR(s.p.value(0, 0), e, 1e-15);
    }
    EXPECT_EQ(opt.steps(), 3);
}

// With dampening 0.5 PyTorch's first buffer is the gradient itself (not halved):
// buf = 0.5, then 0.9 * 0.5 + 0.5 * 0.5 = 0.7.
TEST(SGD, DampeningSkipsTheFirstStepLikePyTorch) {
    Scalar1 s;
    s.p.value(0, 0) = 1.0;
    SGD<double> opt(s.list(), {.lr = 0.1, .momentum = 0.9, .dampening = 0.5});
    s.p.grad(0, 0) = 0.5;
    opt.step();
    EXPECT_NEAR(s.p.value(0, 0), 1.0 - 0.05, 1e-15);
    opt.step();
    EXPECT_NEAR(s.p.value(0, 0), 0.95 - 0.07, 1e-15);
}

// Nesterov and weight decay: g = 0.5 + 0.1 * 1 = 0.6; buf = 0.6; g' = 0.6 + 0.9 * 0.6 = 1.14;
// w = 1 - 0.1 * 1.14 = 0.886.
TEST(SGD, NesterovWithWeightDecayMatchesPyTorchByHand) {
    Scalar1 s;
    s.p.value(0, 0) = 1.0;
    SGD<double> opt(s.list(), {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1, .nesterov = true});
    s.p.grad(0, 0) = 0.5;
    opt.step();
    EXPECT_NEAR(s.p.value(0, 0), 0.886, 1e-15);
}

// torch.optim.AdamW(lr=0.1, weight_decay=0.01) on w = 1, gradients 0.5 then -0.25.
// Step 1: w = 1 * (1 - 0.001) - 0.1 * 0.5 / (0.5 + 1e-8) = 0.899000002 (bias corrections cancel).
// Step 2: m = 0.05 + 0.1 * (-0.25 - 0.05) = 0.02, v = 0.999 * 2.5e-4 + 0.001 * 0.0625 = 3.1225e-4,
//         w = 0.899000002 * 0.999 - (0.1 / 0.19) * 0.02 / (sqrt(3.1225e-4) / sqrt(0.001999) + 1e-8).
TEST(AdamW, MatchesPyTorchByHand) {
    Scalar1 s;
    s.p.value(0, 0) = 1.0;
    AdamW<double> opt(s.list(), {.lr = 0.1, .weight_decay = 0.01});
    s.p.grad(0, 0) = 0.5;
    opt.step();
    const double w1 = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8);
    EXPECT_NEAR(s.p.value(0, 0), w1, 1e-15);
    EXPECT_NEAR(w1, 0.899000002, 1e-15);
    s.p.grad(0, 0) = -0.25;
    opt.step();
    const double w2 = w1 * 0.999 - (0.1 / 0.19) * 0.02 / (std::sqrt(3.1225e-4) / std::sqrt(0.001999) + 1e-8);
    EXPECT_NEAR(s.p.value(0, 0), w2, 1e-14);
}

// The same rule, PyTorch's _single_tensor_adamw transcribed for one scalar, over many
// steps of random gradients on a matrix: every entry follows it.
TEST(AdamW, FollowsPyTorchsRuleOverManySteps) {
    Rng rng(4);
    Parameter<double> p(3, 5);
    p.value = random_matrix<double>(3, 5, rng);
    const Matrix<double> w0 = p.value;
    const AdamW<double>::Options o{.lr = 0.03, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.1};
    AdamW<double> opt({{"p", &p}}, o);
    Matrix<double> w = w0, m = Matrix<double>::Zero(3, 5), v = Matrix<double>::Zero(3, 5);
    for (int t = 1; t <= 25; ++t) {
        p.grad = random_matrix<double>(3, 5, rng);
        opt.step();
        for (Index i = 0; i < w.size(); ++i) {
            const double g = p.grad.data()[i];
            double& wi = w.data()[i];
            double& mi = m.data()[i];
            double& vi = v.data()[i];
            wi *= 1 - o.lr * o.weight_decay;
            mi += (1 - o.beta1) * (g - mi);
            vi = vi * o.beta2 + (1 - o.beta2) * g * g;
            const double denom = std::sqrt(vi) / std::sqrt(1 - std::pow(o.beta2, t)) + o.eps;
            wi += -(o.lr / (1 - std::pow(o.beta1, t))) * (mi / denom);
        }
        EXPECT_LT(relative_error(p.value, w), 1e-14) << "step " << t;
    }
}

// The update is elementwise, so splitting a large parameter by rows across threads
// must give the serial result exactly.
TEST(AdamW, ThreadedStepGivesBitwiseTheSerialResult) {
    Rng rng(6);
    const Matrix<float> w0 = random_matrix<float>(301, 233, rng);  // enough to split
    std::vector<Matrix<float>> grads;
    for (int t = 0; t < 3; ++t) grads.push_back(random_matrix<float>(301, 233, rng));
    const auto train = [&](int threads) {
        const int before = num_threads();
        set_num_threads(threads);
        Parameter<float> p(301, 233);
        p.value = w0;
        AdamW<float> opt({{"p", &p}}, {.lr = 0.01, .weight_decay = 0.1});
        for (const Matrix<float>& g : grads) {
            p.grad = g;
            opt.step();
        }
        set_num_threads(before);
        return Matrix<float>(p.value);
    };
    const Matrix<float> serial = train(1);
    EXPECT_GT(relative_error(serial, w0), 1e-4);  // it moved
    EXPECT_EQ(relative_error(train(std::max(num_threads(), 3)), serial), 0.0);
}

TEST(Optimizer, StateRoundTripsByName) {
    Rng rng(5);
    Parameter<double> a(2, 3), b(4);
    ParameterList<double> params{{"a", &a}, {"b.bias", &b}};
    AdamW<double> opt(params, {.lr = 0.1});
    a.grad = random_matrix<double>(2, 3, rng);
    b.grad = random_matrix<double>(1, 4, rng);
    opt.step();
    NamedTensors<double> state;
    opt.save_state(state);
    EXPECT_EQ(state.size(), 4u);
    EXPECT_TRUE(state.count("optimizer.exp_avg.a") && state.count("optimizer.exp_avg_sq.b.bias"));

    AdamW<double> fresh(params, {.lr = 0.1});
    fresh.load_state(state);
    NamedTensors<double> again;
    fresh.save_state(again);
    for (const auto& [name, t] : state) EXPECT_EQ(again.at(name), t) << name;

    state.erase("optimizer.exp_avg.a");
    EXPECT_THROW(fresh.load_state(state), format_error);

    SGD<double> sgd(params, {.lr = 0.1, .momentum = 0.9});
    NamedTensors<double> sgd_state;
    sgd.save_state(sgd_state);
    EXPECT_TRUE(sgd_state.count("optimizer.momentum_buffer.a"));
}

TEST(ClipGradNorm, ScalesLikePyTorch) {
    Parameter<double> a(1, 2), b(1);
    a.grad << 3.0, 0.0;
    b.grad << 4.0;
    const ParameterList<double> params{{"a", &a}, {"b", &b}};
    EXPECT_DOUBLE_EQ(clip_grad_norm(params, 10.0), 5.0);  // under the limit: unchanged
    EXPECT_EQ(a.grad(0, 0), 3.0);
    EXPECT_DOUBLE_EQ(clip_grad_norm(params, 1.0), 5.0);
    const double coef = 1.0 / (5.0 + 1e-6);
    EXPECT_DOUBLE_EQ(a.grad(0, 0), 3.0 * coef);
    EXPECT_DOUBLE_EQ(b.grad(0, 0), 4.0 * coef);
    // At the limit PyTorch still scales, by max_norm / (norm + 1e-6).
    a.grad << 3.0, 0.0;
    b.grad << 4.0;
    clip_grad_norm(params, 5.0);
    EXPECT_DOUBLE_EQ(b.grad(0, 0), 4.0 * 5.0 / (5.0 + 1e-6));
}

// ---------------------------------------------------------------- schedule

TEST(WarmupCosineSchedule, WarmsUpLinearlyThenDecaysByCosine) {
    const WarmupCosineSchedule s{.peak_lr = 1.0, .min_lr = 0.1, .warmup_steps = 4, .total_steps = 14};
    EXPECT_DOUBLE_EQ(s(0), 0.25);
    EXPECT_DOUBLE_EQ(s(1), 0.5);
    EXPECT_DOUBLE_EQ(s(3), 1.0);
    EXPECT_DOUBLE_EQ(s(4), 1.0);                  // decay starts at the peak
    EXPECT_DOUBLE_EQ(s(9), 0.1 + 0.9 * 0.5);      // half way: the mean of peak and min
    EXPECT_NEAR(s(13), 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * 0.9)), 1e-15);
    EXPECT_DOUBLE_EQ(s(14), 0.1);
    EXPECT_DOUBLE_EQ(s(1000), 0.1);
    for (long t = 4; t < 14; ++t) EXPECT_GT(s(t), s(t + 1));  // strictly decreasing
    const WarmupCosineSchedule no_warmup{.peak_lr = 2.0, .warmup_steps = 0, .total_steps = 10};
    EXPECT_DOUBLE_EQ(no_warmup(0), 2.0);
    EXPECT_THROW((WarmupCosineSchedule{.warmup_steps = 5, .total_steps = 3}(0)), shape_error);
}

// ---------------------------------------------------------------- accumulation

// Backward adds into .grad, so k micro-batches, each with its loss gradient scaled
// by 1/k, give the gradient of the mean loss over the whole batch.
TEST(GradientAccumulation, MicroBatchesEqualOneBigBatch) {
    Rng rng(6);
    GRU<double> gru({.input_size = 3, .hidden_size = 5}, rng);
    const Sequence<double> x = seqnn::testing::random_sequence<double>(6, 7, 3, rng);
    const Matrix<double> target = random_matrix<double>(6 * 7, 5, rng);

    auto gradients = [&](Index micro) {
        gru.zero_grad();
        const Index per = 6 / micro;
        for (Index m = 0; m < micro; ++m) {
            const Sequence<double> xm(x.data.middleRows(m * per * 7, per * 7), per, 7);
            Context<double> ctx;
            const Sequence<double> y = gru.forward(xm, nullptr, &ctx);
            Matrix<double> dy;
            mse_loss<double>(y.data, target.middleRows(m * per * 7, per * 7), dy, 1.0 / static_cast<double>(micro));
            gru.backward(Sequence<double>(dy, per, 7), ctx);
        }
        std::vector<Matrix<double>> g;
        for (auto& p : gru.parameters()) g.push_back(p.param->grad);
        return g;
    };
    const auto whole = gradients(1);
    const auto accumulated = gradients(3);
    for (std::size_t i = 0; i < whole.size(); ++i) EXPECT_LT(relative_error(accumulated[i], whole[i]), 1e-14);
}

// ---------------------------------------------------------------- dropout

TEST(Dropout, IsTheIdentityWithoutAContextAndInStep) {
    Rng rng(7);
    const Dropout<double> drop(6, 0.5, 11);
    const Sequence<double> x = seqnn::testing::random_sequence<double>(3, 4, 6, rng);
    EXPECT_EQ(drop.forward(x).data, x.data);
    State<double> s = drop.initial_state(3);
    Matrix<double> y;
    drop.step(x.data.topRows(3), s, y);
    EXPECT_EQ(y, Matrix<double>(x.data.topRows(3)));
    EXPECT_EQ(drop.calls(), 0u);  // inference draws nothing
}

TEST(Dropout, DropsAtRateP_ScalesTheRest_AndIsSeeded) {
    const Sequence<double> x(Matrix<double>::Ones(200, 50), 4, 50);
    const Dropout<double> a(50, 0.3, 42), b(50, 0.3, 42), c(50, 0.3, 43);
    Context<double> ca, cb, cc;
    const Matrix<double> ya = a.forward(x, nullptr, &ca).data;
    const Matrix<double> yb = b.forward(x, nullptr, &cb).data;
    const Matrix<double> yc = c.forward(x, nullptr, &cc).data;
    EXPECT_EQ(ya, yb);  // same seed, same call: same mask
    EXPECT_NE(ya, yc);
    const double dropped = static_cast<double>((ya.array() == 0.0).count()) / static_cast<double>(ya.size());
    EXPECT_NEAR(dropped, 0.3, 0.02);
    EXPECT_TRUE(((ya.array() == 0.0) || (ya.array() - 1.0 / 0.7).abs() < 1e-15).all());
    // The next call draws a new mask; restoring the counter replays it.
    Context<double> ca2;
    const Matrix<double> ya2 = a.forward(x, nullptr, &ca2).data;
    EXPECT_NE(ya2, ya);
    b.forward(x, nullptr, &cb);
    EXPECT_EQ(b.calls(), 2u);
    Dropout<double> replay(50, 0.3, 42);
    replay.set_calls(1);
    Context<double> cr;
    EXPECT_EQ(replay.forward(x, nullptr, &cr).data, ya2);
}

TEST(Dropout, BackwardAppliesTheSameMask) {
    Rng rng(8);
    Dropout<double> drop(5, 0.4, 3);
    const Sequence<double> x = seqnn::testing::random_sequence<double>(2, 7, 5, rng);
    const Matrix<double> w = random_matrix<double>(14, 5, rng);
    // L = sum(y .* w) with the mask of call 0 held fixed: finite differences agree.
    const auto forward = [&](const Matrix<double>& in) {
        drop.set_calls(0);
        Context<double> ctx;
        return drop.forward(Sequence<double>(in, 2, 7), nullptr, &ctx).data;
    };
    drop.set_calls(0);
    Context<double> ctx;
    drop.forward(x, nullptr, &ctx);
    const Matrix<double> dx = drop.backward(Sequence<double>(w, 2, 7), ctx).data;
    Matrix<double> x_mut = x.data;
    const double err = seqnn::testing::finite_difference_error(
        x_mut, dx, [&] { return (forward(x_mut).array() * w.array()).sum(); });
    EXPECT_LT(err, 1e-8);
    EXPECT_EQ(dx, (w.array() * saved_for_backward<Dropout<double>::Saved>(ctx).mask.array()).matrix());
}

TEST(Dropout, ExtremeRates) {
    const Sequence<double> x(Matrix<double>::Ones(6, 3), 2, 3);
    Context<double> c0, c1;
    EXPECT_EQ(Dropout<double>(3, 0.0).forward(x, nullptr, &c0).data, x.data);
    EXPECT_EQ(Dropout<double>(3, 1.0).forward(x, nullptr, &c1).data, Matrix<double>::Zero(6, 3));
    EXPECT_THROW(Dropout<double>(3, 1.5), shape_error);
}
