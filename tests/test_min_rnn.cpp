// minGRU and minLSTM: the paper's equations against a plain loop reference in
// double, every scan mode agreeing, streaming, chunking, gradients, names.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>

#include "layer_instances.hpp"

#include <memory>

using namespace seqnn;
using seqnn::testing::random_sequence;
using seqnn::testing::relative_error;

namespace {

enum class Cell { MinGru, MinLstm };

struct Config {
    Cell cell;
    MinRNNMode mode;
    HiddenActivation activation;
    Index hidden;  // E; 5 = no projection (D = 5)
    bool bias;
};

std::string config_name(const ::testing::TestParamInfo<Config>& info) {
    const Config& c = info.param;
    const char* modes[] = {"Sequential", "Parallel", "LogSpace"};
    return std::string(c.cell == Cell::MinGru ? "MinGRU" : "MinLSTM") + "_" + modes[static_cast<int>(c.mode)] +
           (c.activation == HiddenActivation::PositiveG ? "_g" : "_linear") + "_E" + std::to_string(c.hidden) +
           (c.bias ? "_bias" : "");
}

template <typename Scalar>
std::unique_ptr<MinRNN<Scalar>> make_layer(const Config& c, Rng& rng) {
    const MinRNNOptions o{.input_size = 5, .hidden_size = c.hidden, .bias = c.bias, .activation = c.activation,
                          .mode = c.mode};
    if (c.cell == Cell::MinGru) return std::make_unique<MinGRU<Scalar>>(o, rng);
    return std::make_unique<MinLSTM<Scalar>>(o, rng);
}

double sigm(double v) { return 1.0 / (1.0 + std::exp(-v)); }
double g(double v) { return v >= 0 ? v + 0.5 : sigm(v); }

// The paper's sequential equations, one scalar at a time.
Matrix<double> reference_forward(const Config& c, MinRNN<double>& layer, const Sequence<double>& x,
                                 const Matrix<double>& h0, Matrix<double>& h_final) {
    const Index B = x.batch, T = x.steps, D = x.features(), E = layer.hidden_size();
    const Linear<double>& in = layer.in_projection();
    const Linear<double>& out = layer.out_projection();
    const Index G = c.cell == Cell::MinGru ? 2 : 3;
    Matrix<double> y(B * T, layer.output_size());
    h_final = h0;
    for (Index b = 0; b < B; ++b) {
        std::vector<double> h(E);
        for (Index j = 0; j < E; ++j) h[j] = h0(b, j);
        for (Index t = 0; t < T; ++t) {
            std::vector<double> pre(G * E);
            for (Index r = 0; r < G * E; ++r) {
                pre[r] = c.bias ? in.bias.value(0, r) : 0.0;
                for (Index q = 0; q < D; ++q) pre[r] += in.weight.value(r, q) * x.data(b * T + t, q);
            }
            for (Index j = 0; j < E; ++j) {
                const double cand = c.activation == HiddenActivation::PositiveG ? g(pre[j]) : pre[j];
                if (c.cell == Cell::MinGru) {
                    const double z = sigm(pre[E + j]);
                    h[j] = (1 - z) * h[j] + z * cand;
                } else {
                    const double f = sigm(pre[E + j]), i = sigm(pre[2 * E + j]);
                    h[j] = f / (f + i) * h[j] + i / (f + i) * cand;
                }
            }
            for (Index q = 0; q < layer.output_size(); ++q) {
                if (!layer.projects()) {
                    y(b * T + t, q) = h[q];
                    continue;
                }
                double s = c.bias ? out.bias.value(0, q) : 0.0;
                for (Index j = 0; j < E; ++j) s += out.weight.value(q, j) * h[j];
                y(b * T + t, q) = s;
            }
        }
        for (Index j = 0; j < E; ++j) h_final(b, j) = h[j];
    }
    return y;
}

// A random initial state; positive, as the log-space mode requires.
Matrix<double> random_h0(Index B, Index E, Rng& rng) {
    return (seqnn::testing::random_matrix<double>(B, E, rng).array().abs() + 0.1).matrix();
}

class MinRNNLayer : public ::testing::TestWithParam<Config> {};

}  // namespace

TEST_P(MinRNNLayer, MatchesThePapersEquationsInDouble) {
    const Config c = GetParam();
    Rng rng(31);
    auto layer = make_layer<double>(c, rng);
    for (Index T : {1, 300}) {
        const Sequence<double> x = random_sequence<double>(3, T, 5, rng, 2.0);
        for (bool with_state : {false, true}) {
            const Matrix<double> h0 = with_state ? random_h0(3, c.hidden, rng) : Matrix<double>::Zero(3, c.hidden);
            Matrix<double> expected_final;
            const Matrix<double> expected = reference_forward(c, *layer, x, h0, expected_final);
            State<double> state;
            if (with_state) state.tensors = {h0};
            const Sequence<double> y = layer->forward(x, &state);
            const double tol = c.mode == MinRNNMode::LogSpace ? 1e-11 : 1e-13;
            EXPECT_LT(relative_error(y.data, expected), tol) << "T=" << T << " with_state=" << with_state;
            EXPECT_LT(relative_error(state.tensors[0], expected_final), tol);
        }
    }
}

TEST_P(MinRNNLayer, FloatAgreesWithDouble) {
    const Config c = GetParam();
    Rng rng_d(5), rng_f(5), data_rng(6);
    auto layer_d = make_layer<double>(c, rng_d);
    auto layer_f = make_layer<float>(c, rng_f);
    const Sequence<double> x = random_sequence<double>(3, 1000, 5, data_rng);
    const Sequence<float> xf(x.data.cast<float>(), x.batch, x.steps);
    // The log-space scan's fp32 error grows with T (exp of a running log-sum);
    // the linear-space modes stay at rounding level.
    const double tol = c.mode == MinRNNMode::LogSpace ? 2e-4 : 1e-5;
    EXPECT_LT(relative_error(layer_f->forward(xf).data, layer_d->forward(x).data), tol);
}

TEST_P(MinRNNLayer, EveryModeGivesTheSameOutputs) {
    const Config c = GetParam();
    Rng rng(32);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = random_sequence<double>(3, 1000, 5, rng);
    const Matrix<double> h0 = random_h0(3, c.hidden, rng);
    State<double> s_ref;
    s_ref.tensors = {h0};
    layer->set_mode(MinRNNMode::Sequential);
    const Sequence<double> reference = layer->forward(x, &s_ref);
    for (MinRNNMode m : {MinRNNMode::Parallel, MinRNNMode::LogSpace}) {
        if (m == MinRNNMode::LogSpace && c.activation != HiddenActivation::PositiveG) continue;
        layer->set_mode(m);
        State<double> s;
        s.tensors = {h0};
        EXPECT_LT(relative_error(layer->forward(x, &s).data, reference.data), 1e-11);
        EXPECT_LT(relative_error(s.tensors[0], s_ref.tensors[0]), 1e-11);
    }
}

TEST_P(MinRNNLayer, StepEqualsForward) {
    const Config c = GetParam();
    Rng rng(33);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = random_sequence<double>(3, 11, 5, rng);
    State<double> whole_state;
    whole_state.tensors = {random_h0(3, c.hidden, rng)};
    State<double> state = whole_state;
    const Sequence<double> whole = layer->forward(x, &whole_state);
    Matrix<double> y;
    for (Index t = 0; t < x.steps; ++t) {
        layer->step(Matrix<double>(x.at_step(t)), state, y);
        EXPECT_LT(relative_error(y, Matrix<double>(whole.at_step(t))), 1e-12) << "t=" << t;
    }
    EXPECT_LT(relative_error(state.tensors[0], whole_state.tensors[0]), 1e-12);
}

// Continuing a parallel pass from a nonzero state equals the sequential result
// (the trap of minGRU-pytorch issue #9).
TEST_P(MinRNNLayer, ChunkedEqualsWholeWithStateCarried) {
    const Config c = GetParam();
    Rng rng(34);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = random_sequence<double>(3, 1000, 5, rng);
    State<double> whole_state;
    const Sequence<double> whole = layer->forward(x, &whole_state);
    State<double> state;
    Index start = 0;
    for (Index len : {1, 333, 7, 659}) {
        Sequence<double> chunk(3, len, 5);
        for (Index b = 0; b < 3; ++b) chunk.sequence(b) = x.sequence(b).middleRows(start, len);
        const Sequence<double> y = layer->forward(chunk, &state);
        for (Index b = 0; b < 3; ++b)
            EXPECT_LT(relative_error(y.sequence(b), whole.sequence(b).middleRows(start, len)), 1e-11)
                << "chunk at " << start;
        start += len;
    }
    EXPECT_LT(relative_error(state.tensors[0], whole_state.tensors[0]), 1e-11);
}

// Large enough that the gates, the scan and the GEMMs split across threads.
TEST_P(MinRNNLayer, ThreadedEqualsSingleThreaded) {
    const Config c = GetParam();
    Rng rng(37);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = random_sequence<double>(5, 1000, 5, rng);
    const Sequence<double> dy = random_sequence<double>(5, 1000, layer->output_size(), rng);
    auto run = [&](int threads, Matrix<double>& dx, Matrix<double>& dw) {
        set_num_threads(threads);
        Context<double> ctx;
        const Sequence<double> y = layer->forward(x, nullptr, &ctx);
        layer->zero_grad();
        dx = layer->backward(dy, ctx).data;
        dw = layer->parameters()[0].param->grad;
        return y.data;
    };
    Matrix<double> dx1, dw1, dx3, dw3;
    const Matrix<double> y1 = run(1, dx1, dw1);
    const Matrix<double> y3 = run(2, dx3, dw3);
    set_num_threads(2);
    EXPECT_LT(relative_error(y3, y1), 1e-12);
    EXPECT_LT(relative_error(dx3, dx1), 1e-12);
    EXPECT_LT(relative_error(dw3, dw1), 1e-10);
}

// Layers share per-thread scratch memory and a training loop reuses its Context:
// neither may change a result. Two stacked layers run forward 1, forward 2,
// backward 2, backward 1 (each call overwriting the other's scratch), twice with
// the same contexts and inputs of other sizes in between, against fresh objects.
TEST_P(MinRNNLayer, SharedScratchAndReusedContextsChangeNothing) {
    const Config c = GetParam();
    Rng rng(38);
    auto first = make_layer<double>(c, rng);
    auto second = make_layer<double>(c, rng);
    const Sequence<double> x = random_sequence<double>(3, 11, 5, rng);
    const Sequence<double> dy = random_sequence<double>(3, 11, second->output_size(), rng);
    const Sequence<double> other = random_sequence<double>(2, 40, 5, rng);
    State<double> initial;
    initial.tensors = {random_h0(3, c.hidden, rng)};

    Context<double> ctx1, ctx2;
    auto train_step = [&](Context<double>& c1, Context<double>& c2) {
        first->zero_grad();
        second->zero_grad();
        State<double> s = initial;
        const Sequence<double> y = second->forward(first->forward(x, &s, &c1), nullptr, &c2);
        const Sequence<double> dx = first->backward(second->backward(dy, c2), c1);
        return std::vector<Matrix<double>>{y.data, dx.data, first->parameters()[0].param->grad,
                                           second->parameters()[0].param->grad};
    };
    Context<double> fresh1, fresh2;
    const auto expected = train_step(fresh1, fresh2);
    for (int round = 0; round < 2; ++round) {
        Context<double> scratch_user;
        first->forward(other, nullptr, &scratch_user);  // other shapes through the same scratch and...
        first->forward(other, nullptr, &ctx1);         // ...through the context about to be reused
        const auto got = train_step(ctx1, ctx2);
        for (std::size_t k = 0; k < expected.size(); ++k) EXPECT_EQ(got[k], expected[k]) << "round " << round << ", tensor " << k;
    }
}

TEST_P(MinRNNLayer, GradientsMatchFiniteDifferences) {
    const Config c = GetParam();
    Rng rng(35);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = random_sequence<double>(3, 7, 5, rng, 2.0);
    State<double> initial;
    initial.tensors = {random_h0(3, c.hidden, rng)};
    seqnn::testing::GradientChecker checker(*layer);
    seqnn::testing::expect_gradients_match(checker.check(x, initial), 1e-6);
}

TEST_P(MinRNNLayer, ParametersHaveMinGruPytorchNames) {
    const Config c = GetParam();
    Rng rng(36);
    auto layer = make_layer<float>(c, rng);
    const auto params = layer->parameters();
    const Index G = c.cell == Cell::MinGru ? 2 : 3;
    const std::string in = c.cell == Cell::MinGru ? "to_hidden_and_gate" : "to_hidden_and_f_i_gate";
    std::vector<std::string> names;
    for (const auto& p : params) names.push_back(p.name);
    std::vector<std::string> expected{in + ".weight"};
    if (c.bias) expected.push_back(in + ".bias");
    if (c.hidden != 5) {
        expected.push_back("to_out.weight");
        if (c.bias) expected.push_back("to_out.bias");
    }
    EXPECT_EQ(names, expected);
    EXPECT_EQ(params[0].param->shape, (std::vector<Index>{G * c.hidden, 5}));
    if (c.hidden != 5) {
        EXPECT_EQ(params[c.bias ? 2 : 1].param->shape, (std::vector<Index>{5, c.hidden}));
    }
}

INSTANTIATE_TEST_SUITE_P(
    Cells, MinRNNLayer,
    ::testing::Values(
        Config{Cell::MinGru, MinRNNMode::Sequential, HiddenActivation::Identity, 7, false},
        Config{Cell::MinGru, MinRNNMode::Parallel, HiddenActivation::Identity, 7, true},
        Config{Cell::MinGru, MinRNNMode::Parallel, HiddenActivation::PositiveG, 5, false},
        Config{Cell::MinGru, MinRNNMode::LogSpace, HiddenActivation::PositiveG, 7, false},
        Config{Cell::MinGru, MinRNNMode::LogSpace, HiddenActivation::PositiveG, 5, true},
        Config{Cell::MinLstm, MinRNNMode::Sequential, HiddenActivation::PositiveG, 7, false},
        Config{Cell::MinLstm, MinRNNMode::Parallel, HiddenActivation::Identity, 5, true},
        Config{Cell::MinLstm, MinRNNMode::Parallel, HiddenActivation::PositiveG, 7, false},
        Config{Cell::MinLstm, MinRNNMode::LogSpace, HiddenActivation::PositiveG, 7, true}),
    config_name);

TEST(MinRNNOptionsTest, ExpansionSetsTheHiddenSizeAndProjectsBack) {
    Rng rng(1);
    MinGRU<float> layer({.input_size = 6, .expansion = 1.5}, rng);
    EXPECT_EQ(layer.hidden_size(), 9);
    EXPECT_TRUE(layer.projects());
    EXPECT_EQ(layer.output_size(), 6);
    MinLSTM<float> same({.input_size = 6}, rng);
    EXPECT_FALSE(same.projects());
    MinLSTM<float> forced({.input_size = 6, .project_out = true}, rng);
    EXPECT_TRUE(forced.projects());
}

TEST(MinRNNOptionsTest, LogSpaceNeedsThePositiveActivation) {
    Rng rng(1);
    seqnn::testing::expect_shape_error(
        [&] { MinGRU<float>({.input_size = 4, .activation = HiddenActivation::Identity, .mode = MinRNNMode::LogSpace}, rng); },
        {"MinGRU", "log-space", "PositiveG"});
}

TEST(MinRNNOptionsTest, LogSpaceRejectsANegativeInitialState) {
    Rng rng(1);
    MinLSTM<double> layer({.input_size = 4, .mode = MinRNNMode::LogSpace}, rng);
    State<double> state = layer.initial_state(2);
    state.tensors[0](1, 2) = -0.5;
    seqnn::testing::expect_shape_error([&] { layer.forward(random_sequence<double>(2, 3, 4, rng), &state); },
                                       {"MinLSTM", "(2, 4)", "positive"});
}

namespace {

using seqnn::testing::ThreadGuard;

// One training forward and backward from a nonzero state: y, the final state, dx,
// dL/d(initial state) and every parameter's gradient.
std::vector<Matrix<double>> forward_and_backward(MinRNN<double>& layer, const Sequence<double>& x,
                                                 const Sequence<double>& dy, const Matrix<double>& h0) {
    layer.zero_grad();
    State<double> state;
    state.tensors = {h0};
    state.batch = x.batch;
    Context<double> ctx;
    const Sequence<double> y = layer.forward(x, &state, &ctx);
    State<double> d_initial;
    const Sequence<double> dx = layer.backward(dy, ctx, &state, &d_initial);
    std::vector<Matrix<double>> out{y.data, state.tensors[0], dx.data, d_initial.tensors[0]};
    for (const auto& p : layer.parameters()) out.push_back(p.param->grad);
    return out;
}

}  // namespace

// The split is an option: each forced split, Auto and the sequential mode give the same
// outputs and gradients, and scan_plan reports the split that ran.
TEST(MinRNNSplit, EveryForcedSplitGivesTheSameOutputsAndGradients) {
    ThreadGuard guard;
    set_num_threads(3);
    for (const Cell cell : {Cell::MinGru, Cell::MinLstm})
        for (const MinRNNMode mode : {MinRNNMode::Parallel, MinRNNMode::LogSpace}) {
            const Config c{cell, MinRNNMode::Sequential, HiddenActivation::PositiveG, 7, true};
            Rng rng(41);
            auto layer = make_layer<double>(c, rng);  // D = 5 -> E = 7 -> D = 5
            const Index B = 3, T = 101;                // odd sizes: uneven pieces and channel blocks
            const Sequence<double> x = random_sequence<double>(B, T, 5, rng);
            const Sequence<double> dy = random_sequence<double>(B, T, layer->output_size(), rng);
            const Matrix<double> h0 = random_h0(B, c.hidden, rng);
            EXPECT_TRUE(layer->scan_plan(B, T).sequential());
            const auto reference = forward_and_backward(*layer, x, dy, h0);

            layer->set_mode(mode);
            for (const ScanSplit split : {ScanSplit::Auto, ScanSplit::Channels, ScanSplit::Time}) {
                if (split == ScanSplit::Time && mode == MinRNNMode::LogSpace) continue;  // refused, tested below
                layer->set_split(split);
                EXPECT_EQ(layer->split(), split);
                const ScanPlan plan = layer->scan_plan(B, T);
                if (split != ScanSplit::Auto && openmp_enabled()) {
                    EXPECT_EQ(plan.split, split);
                    EXPECT_EQ(plan.threads, 3);
                    if (split == ScanSplit::Time) {
                        EXPECT_EQ(plan.pieces, 3);
                        EXPECT_EQ(plan.piece_steps, 34);
                    } else {
                        EXPECT_EQ(plan.channel_blocks, 1);  // 7 doubles: one cache line
                    }
                } else if (split != ScanSplit::Auto) {
                    EXPECT_TRUE(plan.sequential());  // one thread without OpenMP
                }
                const auto got = forward_and_backward(*layer, x, dy, h0);
                ASSERT_EQ(got.size(), reference.size());
                const double tol = mode == MinRNNMode::LogSpace ? 1e-11 : 1e-12;
                for (std::size_t k = 0; k < got.size(); ++k)
                    EXPECT_LT(relative_error(got[k], reference[k]), tol)
                        << (cell == Cell::MinGru ? "MinGRU" : "MinLSTM") << " mode " << static_cast<int>(mode)
                        << " split " << static_cast<int>(split) << ", tensor " << k;
            }
        }
}

// One long sequence, where Auto could take either split: the plan follows the option,
// Auto reports what kernels/scan.hpp's scan_plan chooses, and every split agrees.
TEST(MinRNNSplit, ThePlanFollowsTheOptionAndAutoMatchesAForcedSplit) {
    ThreadGuard guard;
    set_num_threads(2);
    Rng rng(42);
    MinGRU<double> layer({.input_size = 5, .hidden_size = 33, .split = ScanSplit::Time}, rng);
    EXPECT_EQ(layer.options().split, ScanSplit::Time);
    const ScanPlan time = layer.scan_plan(1, 2001);
    if (openmp_enabled()) {
        EXPECT_EQ(time.split, ScanSplit::Time);
        EXPECT_EQ(time.pieces, 2);
    }
    const Sequence<double> x = random_sequence<double>(1, 2001, 5, rng);
    const Sequence<double> y_time = layer.forward(x);
    layer.set_split(ScanSplit::Channels);
    const ScanPlan channels = layer.scan_plan(1, 2001);
    if (openmp_enabled()) {
        EXPECT_EQ(channels.split, ScanSplit::Channels);
    }
    EXPECT_LT(relative_error(layer.forward(x).data, y_time.data), 1e-12);
    layer.set_split(ScanSplit::Auto);
    const ScanPlan automatic = layer.scan_plan(1, 2001);
    EXPECT_EQ(automatic.split, scan_plan<double>(1, 2001, 33).split);
    EXPECT_EQ(automatic.threads, scan_plan<double>(1, 2001, 33).threads);
    EXPECT_LT(relative_error(layer.forward(x).data, y_time.data), 1e-12);
}

TEST(MinRNNSplit, AContradictorySplitIsRefused) {
    Rng rng(43);
    using seqnn::testing::expect_shape_error;
    expect_shape_error([&] { MinGRU<float>({.input_size = 4, .mode = MinRNNMode::LogSpace, .split = ScanSplit::Time}, rng); },
                       {"MinGRU", "log-space", "channels only", "ScanSplit::Time"});
    expect_shape_error(
        [&] { MinLSTM<float>({.input_size = 4, .mode = MinRNNMode::Sequential, .split = ScanSplit::Channels}, rng); },
        {"MinLSTM", "ScanSplit::Channels", "Sequential"});
    expect_shape_error([&] { MinGRU<float>({.input_size = 4, .split = static_cast<ScanSplit>(7)}, rng); },
                       {"MinGRU", "split", "Auto, Channels or Time", "7"});
    MinLSTM<double> layer({.input_size = 4, .mode = MinRNNMode::LogSpace}, rng);
    expect_shape_error([&] { layer.set_split(ScanSplit::Time); }, {"MinLSTM", "ScanSplit::Time"});
    EXPECT_EQ(layer.split(), ScanSplit::Auto);  // a refused option changes nothing
    layer.set_split(ScanSplit::Channels);
    expect_shape_error([&] { layer.set_mode(MinRNNMode::Sequential); }, {"MinLSTM", "Sequential"});
    EXPECT_EQ(layer.mode(), MinRNNMode::LogSpace);
    expect_shape_error([&] { (void)layer.scan_plan(0, 5); }, {"MinLSTM.scan_plan", "B=0"});
}
