// Composite layers: Sequential, Residual, the row-wise adapters, FeedForward, the
// causal depthwise conv and the language-model block. Each is a seqnn::Layer, so
// each must give step == forward, chunked == whole, finite-difference gradients and
// PyTorch-style names, whatever it is built from.
#include "testing.hpp"

#include <seqnn/layers/causal_conv.hpp>
#include <seqnn/models/lm_block.hpp>
#include <seqnn/models/residual.hpp>
#include <seqnn/layers/rowwise.hpp>
#include <seqnn/models/sequential.hpp>
#include <seqnn/seqnn.hpp>
#include "layer_instances.hpp"

#include <functional>
#include <memory>

using namespace seqnn;
using seqnn::testing::GradientChecker;
using seqnn::testing::random_sequence;
using seqnn::testing::random_state;
using seqnn::testing::relative_error;

namespace {

std::vector<std::string> names(Layer<double>& layer) {
    std::vector<std::string> out;
    for (const auto& p : layer.parameters()) out.push_back(p.name);
    return out;
}

// Streaming step by step from `initial` gives forward's outputs and final state.
void expect_step_equals_forward(const Layer<double>& layer, const Sequence<double>& x, const State<double>& initial,
                                double tol = 1e-12) {
    State<double> s_fwd = initial;
    const Sequence<double> y = layer.forward(x, &s_fwd);
    State<double> s_step = initial.empty() ? layer.initial_state(x.batch) : initial;
    Matrix<double> x_t, y_t;
    for (Index t = 0; t < x.steps; ++t) {
        x_t = x.at_step(t);
        layer.step(x_t, s_step, y_t);
        EXPECT_LT(relative_error(y_t, Matrix<double>(y.at_step(t))), tol) << layer.kind() << " step " << t;
    }
    const auto step_state = state_tensors(s_step), fwd_state = state_tensors(s_fwd);
    ASSERT_EQ(step_state.size(), fwd_state.size());
    for (std::size_t k = 0; k < fwd_state.size(); ++k)
        EXPECT_LT(relative_error(*step_state[k], *fwd_state[k]), tol) << layer.kind() << " state " << k;
    EXPECT_EQ(s_step.position, s_fwd.position);
}

// Two chunks through the state give the same outputs and final state as one forward.
void expect_chunked_equals_whole(const Layer<double>& layer, const Sequence<double>& x, const State<double>& initial,
                                 Index split, double tol = 1e-12) {
    State<double> s_whole = initial;
    const Sequence<double> whole = layer.forward(x, &s_whole);
    State<double> s = initial;
    Matrix<double> joined(whole.data.rows(), whole.data.cols());
    const Index B = x.batch, T = x.steps;
    Index t0 = 0;
    for (Index len : {split, T - split}) {
        Sequence<double> chunk(B, len, x.features());
        for (Index b = 0; b < B; ++b) chunk.sequence(b) = x.sequence(b).middleRows(t0, len);
        const Sequence<double> y = layer.forward(chunk, &s);
        for (Index b = 0; b < B; ++b) joined.middleRows(b * T + t0, len) = y.sequence(b);
        t0 += len;
    }
    EXPECT_LT(relative_error(joined, whole.data), tol) << layer.kind();
    const auto chunked_state = state_tensors(s), whole_state = state_tensors(s_whole);
    ASSERT_EQ(chunked_state.size(), whole_state.size());
    for (std::size_t k = 0; k < whole_state.size(); ++k)
        EXPECT_LT(relative_error(*chunked_state[k], *whole_state[k]), tol) << layer.kind() << " state " << k;
}

void expect_gradients(Layer<double>& layer, Index B, Index T, bool with_state, std::uint64_t seed = 3,
                      double tol = 1e-6) {
    Rng rng(seed);
    const Sequence<double> x = random_sequence<double>(B, T, layer.input_size(), rng);
    const State<double> initial = with_state ? random_state(layer, B, rng) : State<double>{};
    GradientChecker checker(layer);
    seqnn::testing::expect_gradients_match(checker.check(x, initial), tol);
}

// A three-layer stack with state in two places: GRU -> Linear -> LSTM(2 layers).
std::unique_ptr<Sequential<double>> make_stack(Rng& rng) {
    auto stack = std::make_unique<Sequential<double>>();
    stack->emplace<GRU<double>>(RecurrentOptions{.input_size = 3, .hidden_size = 5}, rng);
    stack->add(make_linear_layer<double>(5, 4, true, rng));
    stack->emplace<LSTM<double>>(RecurrentOptions{.input_size = 4, .hidden_size = 6, .num_layers = 2}, rng);
    return stack;
}

// Linear(4, 4) -> MinGRU(4, expansion 2, projecting back to 4).
std::unique_ptr<Layer<double>> make_stack_like_inner(Rng& rng) {
    auto inner = std::make_unique<Sequential<double>>();
    inner->add(make_linear_layer<double>(4, 4, true, rng));
    inner->emplace<MinGRU<double>>(MinRNNOptions{.input_size = 4, .expansion = 2.0}, rng);
    return inner;
}

// y[t] = b0 + sum_k w0[:, k] x[t + k - (K-1)], then the pointwise map: plain loops.
Matrix<double> reference_conv(CausalDepthwiseConv1d<double>& conv, const Sequence<double>& x,
                              const Matrix<double>& window) {
    const Index B = x.batch, T = x.steps, D = x.features(), K = conv.kernel_size();
    Matrix<double> y(B * T, D);
    for (Index b = 0; b < B; ++b)
        for (Index t = 0; t < T; ++t) {
            std::vector<double> u(static_cast<std::size_t>(D));
            for (Index d = 0; d < D; ++d) {
                double acc = conv.bias.value(0, d);
                for (Index k = 0; k < K; ++k) {
                    const Index s = t + k - (K - 1);
                    const double in = s >= 0 ? x.data(b * T + s, d) : window(b * (K - 1) + (K - 1) + s, d);
                    acc += conv.weight.value(d, k) * in;
                }
                u[static_cast<std::size_t>(d)] = acc;
            }
            for (Index o = 0; o < D; ++o) {
                double acc = conv.pointwise_bias.value(0, o);
                for (Index d = 0; d < D; ++d) acc += conv.pointwise_weight.value(o, d) * u[static_cast<std::size_t>(d)];
                y(b * T + t, o) = acc;
            }
        }
    return y;
}

}  // namespace

// ---------------------------------------------------------------- Sequential

TEST(Sequential, NamesLikeNnSequential) {
    Rng rng(1);
    auto stack = make_stack(rng);
    const auto n = names(*stack);
    EXPECT_EQ(n.front(), "0.weight_ih_l0");
    EXPECT_NE(std::find(n.begin(), n.end(), "1.weight"), n.end());
    EXPECT_NE(std::find(n.begin(), n.end(), "1.bias"), n.end());
    EXPECT_EQ(n.back(), "2.bias_hh_l1");
    ParameterList<double> prefixed;
    stack->collect_parameters("layers.", prefixed);
    EXPECT_EQ(prefixed.front().name, "layers.0.weight_ih_l0");
}

TEST(Sequential, StateIsATreeOfTheChildrensStates) {
    Rng rng(2);
    auto stack = make_stack(rng);
    const State<double> s = stack->initial_state(3);
    EXPECT_TRUE(s.tensors.empty());  // a composite owns no tensors: its children do
    ASSERT_EQ(s.children.size(), 3u);
    ASSERT_EQ(s.children[0].tensors.size(), 1u);  // GRU h (L*B, H) = (3, 5)
    EXPECT_EQ(s.children[0].tensors[0].rows(), 3);
    EXPECT_EQ(s.children[0].tensors[0].cols(), 5);
    EXPECT_TRUE(s.children[1].tensors.empty());   // Linear: stateless
    ASSERT_EQ(s.children[2].tensors.size(), 2u);  // LSTM h, c (2*3, 6)
    EXPECT_EQ(s.children[2].tensors[0].rows(), 6);
    EXPECT_EQ(s.children[2].tensors[1].cols(), 6);
    EXPECT_EQ(state_tensors(s).size(), 3u);       // depth first: GRU h, LSTM h, LSTM c
    // The GRU's part of the final state is the GRU's own final state.
    const Sequence<double> x = random_sequence<double>(3, 9, 3, rng);
    State<double> sf;
    stack->forward(x, &sf);
    State<double> gru_state;
    (*stack)[0].forward(x, &gru_state);
    EXPECT_LT(relative_error(sf.children[0].tensors[0], gru_state.tensors[0]), 1e-15);
}

TEST(Sequential, StepEqualsForwardAndChunkedEqualsWhole) {
    Rng rng(3);
    auto stack = make_stack(rng);
    const Sequence<double> x = random_sequence<double>(3, 11, 3, rng);
    expect_step_equals_forward(*stack, x, State<double>{});
    expect_step_equals_forward(*stack, x, random_state(*stack, 3, rng));
    expect_chunked_equals_whole(*stack, x, random_state(*stack, 3, rng), 4);
}

TEST(Sequential, GradientsMatchFiniteDifferences) {
    Rng rng(4);
    auto stack = make_stack(rng);
    expect_gradients(*stack, 2, 5, /*with_state=*/true);
    expect_gradients(*stack, 2, 5, /*with_state=*/false);
}

TEST(Sequential, NestedStacksAndStatelessChildren) {
    Rng rng(5);
    Sequential<double> outer;
    outer.add(make_rms_norm_layer<double>(4));
    outer.add(make_stack_like_inner(rng));
    const Sequence<double> x = random_sequence<double>(2, 6, 4, rng);
    EXPECT_EQ(state_tensors(outer.initial_state(2)).size(), 1u);
    expect_step_equals_forward(outer, x, random_state(outer, 2, rng));
    expect_gradients(outer, 2, 4, true);
    EXPECT_EQ(names(outer).back(), "1.1.to_out.weight");
}

// backward with a GradientReadyHook reports each child's parameters once its backward has
// returned, from the last child to the first, offset by first_index, and skips a child
// without parameters; a nested stack is one child. dx, d_initial and the gradients are
// bitwise those of the plain backward.
TEST(Sequential, GradientHookReportsEachChildFromTheLast) {
    Rng rng(11);
    Sequential<double> stack;
    stack.emplace<GRU<double>>(RecurrentOptions{.input_size = 3, .hidden_size = 4}, rng);  // 4 parameters
    stack.emplace<Dropout<double>>(4, 0.25, 3);                                             // none
    stack.add(make_stack_like_inner(rng));                                                  // Linear and MinGRU
    stack.add(make_linear_layer<double>(4, 2, true, rng));                                  // 2
    const ParameterList<double> params = stack.parameters();
    const std::size_t n_gru = stack[0].parameters().size(), n_inner = stack[2].parameters().size();
    ASSERT_EQ(params.size(), n_gru + n_inner + 2);

    const Sequence<double> x = random_sequence<double>(2, 6, 3, rng);
    State<double> s = random_state(stack, 2, rng);
    const State<double> d_final = random_state(stack, 2, rng);
    Context<double> ctx;
    stack.forward(x, &s, &ctx);
    const Sequence<double> dy = random_sequence<double>(2, 6, 2, rng);

    stack.zero_grad();
    State<double> plain_initial;
    const Sequence<double> plain_dx = stack.backward(dy, ctx, &d_final, &plain_initial);
    std::vector<Matrix<double>> plain;
    for (const auto& p : params) plain.push_back(p.param->grad);

    stack.zero_grad();
    constexpr std::size_t offset = 7;  // as if 7 parameters came before the stack
    std::vector<std::pair<std::size_t, std::size_t>> runs;
    std::vector<Matrix<double>> at_report(params.size());
    State<double> hooked_initial;
    const Sequence<double> hooked_dx =
        stack.backward(dy, ctx, &d_final, &hooked_initial,
                       [&](std::size_t first, std::size_t end) {
                           runs.emplace_back(first, end);
                           for (std::size_t i = first; i < end; ++i)
                               at_report[i - offset] = params[i - offset].param->grad;
                       },
                       offset);
    using Run = std::pair<std::size_t, std::size_t>;
    const std::vector<Run> expected{{offset + n_gru + n_inner, offset + n_gru + n_inner + 2},
                                    {offset + n_gru, offset + n_gru + n_inner},
                                    {offset, offset + n_gru}};  // the dropout has nothing to report
    EXPECT_EQ(runs, expected);
    EXPECT_EQ(hooked_dx.data, plain_dx.data);
    for (std::size_t i = 0; i < params.size(); ++i) {
        EXPECT_EQ(params[i].param->grad, plain[i]) << params[i].name;
        EXPECT_EQ(at_report[i], plain[i]) << params[i].name << " changed after it was reported";
    }
    const auto a = state_tensors(plain_initial), b = state_tensors(hooked_initial);
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t k = 0; k < a.size(); ++k) EXPECT_EQ(*a[k], *b[k]) << "d_initial " << k;
    // An empty hook is the plain backward; the hook is gone once backward has returned.
    stack.zero_grad();
    EXPECT_EQ(stack.backward(dy, ctx, &d_final, nullptr, GradientReadyHook{}).data, plain_dx.data);
    runs.clear();
    stack.backward(dy, ctx, &d_final);
    EXPECT_TRUE(runs.empty());
}

TEST(Sequential, RejectsMismatchedLayersAndStates) {
    Rng rng(6);
    Sequential<double> stack;
    stack.emplace<GRU<double>>(RecurrentOptions{.input_size = 3, .hidden_size = 5}, rng);
    seqnn::testing::expect_shape_error([&] { stack.add(make_linear_layer<double>(4, 2, true, rng)); },
                                       {"Sequential.add", "Linear", "takes 4", "gives 5"});
    State<double> bad;
    bad.tensors = {Matrix<double>::Zero(2, 5), Matrix<double>::Zero(2, 5)};  // a flat state, not one per child
    const Sequence<double> x = random_sequence<double>(2, 3, 3, rng);
    seqnn::testing::expect_shape_error([&] { stack.forward(x, &bad); },
                                       {"Sequential.forward", "2 tensors", "expected 1 child states"});
    State<double> wrong_child = stack.initial_state(2);
    wrong_child.children[0].tensors[0] = Matrix<double>::Zero(2, 4);
    seqnn::testing::expect_shape_error([&] { stack.forward(x, &wrong_child); }, {"GRU.forward", "(2, 4)", "(2, 5)"});
    seqnn::testing::expect_shape_error([&] { stack.forward(random_sequence<double>(2, 3, 4, rng)); },
                                       {"Sequential.forward", "D=4", "D=3"});
}

// ---------------------------------------------------------------- Residual, FeedForward

TEST(Residual, AddsItsInputAndPreNorms) {
    Rng rng(7);
    Residual<double> res(std::make_unique<MinGRU<double>>(MinRNNOptions{.input_size = 4, .expansion = 1.5}, rng),
                         RMSNorm<double>(4));
    const Sequence<double> x = random_sequence<double>(2, 7, 4, rng);
    auto& inner = res.inner();
    const Sequence<double> expected(
        x.data + inner.forward(Sequence<double>(RMSNorm<double>(4).forward(x.data), 2, 7)).data, 2, 7);
    EXPECT_LT(relative_error(res.forward(x).data, expected.data), 1e-15);
    EXPECT_EQ(names(res), (std::vector<std::string>{"norm.weight", "fn.to_hidden_and_gate.weight", "fn.to_out.weight"}));
    expect_step_equals_forward(res, x, random_state(res, 2, rng));
    expect_chunked_equals_whole(res, x, State<double>{}, 3);
    res.parameters()[0].param->value = seqnn::testing::random_matrix<double>(1, 4, rng);  // a non-trivial norm weight
    expect_gradients(res, 2, 5, true);
    seqnn::testing::expect_shape_error(
        [&] { Residual<double>(std::make_unique<GRU<double>>(RecurrentOptions{.input_size = 3, .hidden_size = 4}, rng)); },
        {"Residual", "GRU", "maps 3 features to 4"});
}

TEST(FeedForward, IsAnMlpNamedLikeNnSequential) {
    Rng rng(8);
    FeedForward<double> ff(5, 4.0, rng);
    EXPECT_EQ(ff.hidden_size(), 20);
    EXPECT_EQ(names(ff), (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"}));
    const Sequence<double> x = random_sequence<double>(2, 3, 5, rng);
    Matrix<double> h = ff.up().forward(x.data);
    activation_forward<double>(Activation::GELU, h);
    EXPECT_LT(relative_error(ff.forward(x).data, ff.down().forward(h)), 1e-15);
    expect_step_equals_forward(ff, x, State<double>{});
    expect_gradients(ff, 2, 3, false);
}

// ---------------------------------------------------------------- causal conv

TEST(CausalConv, MatchesPlainLoopsOnOddSizes) {
    Rng rng(9);
    for (Index K : {1, 3, 4}) {
        CausalDepthwiseConv1d<double> conv({.channels = 7, .kernel_size = K}, rng);
        const Sequence<double> x = random_sequence<double>(3, 13, 7, rng);
        const State<double> s0 = random_state(conv, 3, rng);
        State<double> s = s0;
        const Sequence<double> y = conv.forward(x, &s);
        EXPECT_LT(relative_error(y.data, reference_conv(conv, x, s0.tensors[0])), 1e-14) << "K=" << K;
        // The final window holds the last K-1 inputs.
        for (Index b = 0; b < 3; ++b)
            for (Index j = 0; j < K - 1; ++j)
                EXPECT_EQ(Matrix<double>(s.tensors[0].row(b * (K - 1) + j)), Matrix<double>(x.data.row(b * 13 + 13 - (K - 1) + j)));
    }
}

TEST(CausalConv, IsCausalAndZeroPaddedLikeConv1d) {
    Rng rng(10);
    CausalDepthwiseConv1d<double> conv({.channels = 3, .kernel_size = 4}, rng);
    Sequence<double> x = random_sequence<double>(1, 8, 3, rng);
    const Matrix<double> y0 = conv.forward(x).data;
    x.data.row(5).setConstant(100.0);  // changing step 5 leaves steps 0..4 alone
    const Matrix<double> y1 = conv.forward(x).data;
    EXPECT_EQ(Matrix<double>(y0.topRows(5)), Matrix<double>(y1.topRows(5)));
    EXPECT_NE(Matrix<double>(y0.row(5)), Matrix<double>(y1.row(5)));
    EXPECT_EQ(conv.weight.shape, (std::vector<Index>{3, 1, 4}));
    EXPECT_EQ(conv.pointwise_weight.shape, (std::vector<Index>{3, 3, 1}));
    EXPECT_EQ(names(conv), (std::vector<std::string>{"net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias"}));
}

TEST(CausalConv, StepChunksAndGradients) {
    Rng rng(11);
    for (Index K : {1, 2, 4}) {
        CausalDepthwiseConv1d<double> conv({.channels = 5, .kernel_size = K}, rng);
        const Sequence<double> x = random_sequence<double>(3, 9, 5, rng);
        expect_step_equals_forward(conv, x, random_state(conv, 3, rng));
        expect_chunked_equals_whole(conv, x, random_state(conv, 3, rng), 2);  // a chunk shorter than K-1
        expect_gradients(conv, 2, 6, true);
        expect_gradients(conv, 2, 2, true);  // T < K - 1: the final window reaches into the initial one
    }
    CausalDepthwiseConv1d<double> plain({.channels = 4, .kernel_size = 3, .pointwise = false, .bias = false}, rng);
    EXPECT_EQ(names(plain), (std::vector<std::string>{"net.0.weight"}));
    expect_gradients(plain, 2, 5, true);
}

TEST(CausalConv, ThreadedBackwardGivesBitwiseTheSerialResult) {
    // Large enough that both of backward's loops (dx by sequence, the weight gradient by
    // channel) are split across threads. No pointwise conv: Eigen's GEMM may round
    // differently on another thread count.
    Rng rng(15);
    CausalDepthwiseConv1d<double> conv({.channels = 37, .kernel_size = 4, .pointwise = false}, rng);
    const Index B = 3, T = 301;
    const Sequence<double> x = random_sequence<double>(B, T, 37, rng), dy = random_sequence<double>(B, T, 37, rng);
    const State<double> s0 = random_state(conv, B, rng), d_final = random_state(conv, B, rng);
    const auto run = [&](int threads) {
        set_num_threads(threads);
        conv.zero_grad();
        State<double> s = s0, d_initial;
        Context<double> ctx;
        std::vector<Matrix<double>> r = {conv.forward(x, &s, &ctx).data};
        r.push_back(conv.backward(dy, ctx, &d_final, &d_initial).data);
        r.push_back(d_initial.tensors[0]);
        for (const auto& p : conv.parameters()) r.push_back(p.param->grad);
        return r;
    };
    const int threads = num_threads();
    const auto serial = run(1), threaded = run(std::max(threads, 4));
    set_num_threads(threads);
    for (std::size_t k = 0; k < serial.size(); ++k) EXPECT_EQ(relative_error(threaded[k], serial[k]), 0.0) << k;
}

// ---------------------------------------------------------------- LM block

class LMBlockKinds : public ::testing::TestWithParam<std::tuple<MixerKind, bool>> {};

TEST_P(LMBlockKinds, StepChunksAndGradients) {
    const auto [kind, conv] = GetParam();
    Rng rng(12);
    LMBlock<double> block({.dim = 4, .mixer = {.kind = kind}, .ff_mult = 2.0, .conv = conv, .conv_kernel = 3}, rng);
    const Sequence<double> x = random_sequence<double>(2, 7, 4, rng);
    State<double> s0 = random_state(block, 2, rng);
    if (kind == MixerKind::MinGRU || kind == MixerKind::MinLSTM)
        block.mixer_state(s0).tensors[0] = block.mixer_state(s0).tensors[0].cwiseAbs();  // any positive h0 works for every scan mode
    expect_step_equals_forward(block, x, s0);
    expect_chunked_equals_whole(block, x, s0, 3);
    expect_gradients(block, 2, 4, true);
}

INSTANTIATE_TEST_SUITE_P(AllMixers, LMBlockKinds,
                         ::testing::Combine(::testing::Values(MixerKind::RNN, MixerKind::LSTM, MixerKind::GRU,
                                                              MixerKind::MinGRU, MixerKind::MinLSTM),
                                            ::testing::Bool()),
                         [](const auto& info) {
                             return to_string(std::get<0>(info.param)) + (std::get<1>(info.param) ? "_conv" : "");
                         });

TEST(LMBlock, NamesFollowMinLM) {
    Rng rng(13);
    LMBlock<double> block({.dim = 4, .mixer = {.kind = MixerKind::MinGRU, .expansion = 1.5}, .conv = true}, rng);
    EXPECT_EQ(names(block), (std::vector<std::string>{"0.net.0.weight", "0.net.0.bias", "0.net.1.weight",
                                                      "0.net.1.bias", "1.weight", "2.to_hidden_and_gate.weight",
                                                      "2.to_out.weight", "3.weight", "4.0.weight", "4.0.bias",
                                                      "4.2.weight", "4.2.bias"}));
    EXPECT_EQ(state_tensors(block.initial_state(2)).size(), 2u);  // conv window, minGRU h
}

TEST(LMBlock, AReusedContextChangesNothing) {
    // Two training steps of two identical blocks (conv, minGRU, dropout): one with a fresh
    // Context each step, one reusing its Context (and so its buffers), on several threads.
    // Every output and gradient agrees bit for bit.
    const auto make = [] {
        Rng rng(16);
        return LMBlock<double>({.dim = 24, .mixer = {.kind = MixerKind::MinGRU}, .conv = true, .conv_kernel = 4,
                                .dropout = 0.25, .dropout_seed = 5},
                               rng);
    };
    LMBlock<double> fresh = make(), reused = make();
    Rng rng(17);
    Context<double> kept;
    const int threads = num_threads();
    set_num_threads(std::max(threads, 4));
    for (int step = 0; step < 2; ++step) {
        const Sequence<double> x = random_sequence<double>(3, 211, 24, rng), dy = random_sequence<double>(3, 211, 24, rng);
        std::vector<Matrix<double>> a, b;
        fresh.zero_grad();
        Context<double> ctx;
        a.push_back(fresh.forward(x, nullptr, &ctx).data);
        a.push_back(fresh.backward(dy, ctx).data);
        for (const auto& p : fresh.parameters()) a.push_back(p.param->grad);
        reused.zero_grad();
        b.push_back(reused.forward(x, nullptr, &kept).data);
        b.push_back(reused.backward(dy, kept).data);
        for (const auto& p : reused.parameters()) b.push_back(p.param->grad);
        for (std::size_t k = 0; k < a.size(); ++k) EXPECT_EQ(relative_error(b[k], a[k]), 0.0) << "step " << step << ", " << k;
    }
    set_num_threads(threads);
}

TEST(LMBlock, DropoutGradientsWithAFixedMask) {
    Rng rng(14);
    LMBlock<double> block({.dim = 4, .mixer = {.kind = MixerKind::GRU}, .ff_mult = 2.0, .dropout = 0.3, .dropout_seed = 9},
                          rng);
    const Sequence<double> x = random_sequence<double>(2, 5, 4, rng);
    const Matrix<double> w = seqnn::testing::random_matrix<double>(10, 4, rng);
    // Training forward with the masks of call 0 each time: L = sum(y .* w).
    const auto loss_of = [&](const Sequence<double>& in) {
        block.mixer_dropout().set_calls(0);
        block.ff_dropout().set_calls(0);
        Context<double> ctx;
        return (block.forward(in, nullptr, &ctx).data.array() * w.array()).sum();
    };
    block.mixer_dropout().set_calls(0);
    block.ff_dropout().set_calls(0);
    block.zero_grad();
    Context<double> ctx;
    const Sequence<double> y = block.forward(x, nullptr, &ctx);
    EXPECT_GT((y.data - block.forward(x).data).cwiseAbs().maxCoeff(), 1e-3);  // dropout acted
    const Sequence<double> dx = block.backward(Sequence<double>(w, 2, 5), ctx);
    Sequence<double> x_mut = x;
    EXPECT_LT(seqnn::testing::finite_difference_error(x_mut.data, dx.data, [&] { return loss_of(x_mut); }), 1e-6);
    for (auto& p : block.parameters()) {
        const Matrix<double> analytic = p.param->grad;
        EXPECT_LT(seqnn::testing::finite_difference_error(p.param->value, analytic, [&] { return loss_of(x); }, 40), 1e-6)
            << p.name;
    }
}

// ---------------------------------------------------------------- SelfAttention

// The attention mixer on its own, with rotary positions and its KV cache as state.
TEST(SelfAttention, StepChunksAndGradients) {
    Rng rng(22);
    SelfAttention<double> attn({.embed_dim = 6, .num_heads = 3, .rotary = true, .max_cache_length = 16}, rng);
    attn.in_proj().bias.value = seqnn::testing::random_matrix<double>(1, 18, rng);  // PyTorch starts them at 0
    attn.out_proj().bias.value = seqnn::testing::random_matrix<double>(1, 6, rng);
    const Sequence<double> x = random_sequence<double>(2, 7, 6, rng);
    expect_step_equals_forward(attn, x, State<double>{});
    expect_chunked_equals_whole(attn, x, attn.initial_state(2), 3);
    expect_gradients(attn, 2, 5, /*with_state=*/false);
    expect_gradients(attn, 2, 5, /*with_state=*/true);
}

// ---------------------------------------------------------------- typed saved tensors

// A training loop that reuses its Context reuses each layer's Saved struct and the memory of
// the matrices in it: the second forward writes where the first one did.
TEST(Context, AReusedContextKeepsEachLayersSavedBuffers) {
    Rng rng(21);
    const Sequence<double> x = random_sequence<double>(3, 9, 4, rng);

    MinGRU<double> mingru(MinRNNOptions{.input_size = 4, .expansion = 1.5}, rng);
    Context<double> ctx;
    mingru.forward(x, nullptr, &ctx);
    const auto& saved = saved_for_backward<MinGRU<double>::Saved>(ctx);
    const double *pre = saved.pre.data(), *h = saved.h.data(), *input = saved.input.data();
    mingru.forward(x, nullptr, &ctx);
    EXPECT_EQ(&saved_for_backward<MinGRU<double>::Saved>(ctx), &saved);
    EXPECT_EQ(saved.pre.data(), pre);
    EXPECT_EQ(saved.h.data(), h);
    EXPECT_EQ(saved.input.data(), input);

    GRU<double> gru(RecurrentOptions{.input_size = 4, .hidden_size = 5, .num_layers = 2}, rng);
    Context<double> gru_ctx;
    gru.forward(x, nullptr, &gru_ctx);
    const auto& gru_saved = saved_for_backward<GRU<double>::Saved>(gru_ctx);
    const double *gates = gru_saved.layers[1].gates.data(), *between = gru_saved.layers[1].input.data();
    gru.forward(x, nullptr, &gru_ctx);
    EXPECT_EQ(gru_saved.layers[1].gates.data(), gates);
    EXPECT_EQ(gru_saved.layers[1].input.data(), between);  // layer 0 wrote its output there, again

    // A context filled by another layer is refused, typed or not.
    EXPECT_THROW(saved_for_backward<GRU<double>::Saved>(ctx), shape_error);
}
