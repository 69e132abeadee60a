// RNN, LSTM and GRU with PyTorch's remaining options, as specifications: variable-length
// (padded) batches as pack_padded_sequence runs them, bidirectional layers, dropout between
// layers and the LSTM's proj_size. A padded batch equals each sequence run alone; gradients
// match finite differences; padding values reach nothing; the reverse direction runs each
// sequence back from its own last step; the two directions side by side give the bits they
// give one after the other. (tests/test_conformance.cpp checks the same against PyTorch.)
#include "testing.hpp"

#include <seqnn/seqnn.hpp>
#include "layer_instances.hpp"

#include <initializer_list>
#include <limits>
#include <memory>

using namespace seqnn;
using seqnn::testing::random_matrix;
using seqnn::testing::random_sequence;
using seqnn::testing::random_state;
using seqnn::testing::relative_error;

namespace {

enum class Cell { RnnTanh, RnnRelu, Lstm, Gru };

struct Config {
    Cell cell;
    Index layers;
    bool bias;
    bool bidirectional;
    Index proj_size = 0;  // LSTM only
};

std::string config_name(const ::testing::TestParamInfo<Config>& info) {
    const Config& c = info.param;
    static const char* names[] = {"RnnTanh", "RnnRelu", "Lstm", "Gru"};
    return std::string(names[static_cast<int>(c.cell)]) + "_L" + std::to_string(c.layers) + (c.bias ? "" : "_nobias") +
           (c.bidirectional ? "_bidirectional" : "") + (c.proj_size ? "_proj" + std::to_string(c.proj_size) : "");
}

constexpr Index kInput = 4, kHidden = 6;

template <typename Scalar>
std::unique_ptr<RecurrentStack<Scalar>> make_layer(const Config& c, Rng& rng, double dropout = 0.0,
                                                   std::uint64_t dropout_seed = 0) {
    RecurrentOptions o{.input_size = kInput, .hidden_size = kHidden, .num_layers = c.layers, .bias = c.bias,
                       .bidirectional = c.bidirectional, .dropout = dropout, .dropout_seed = dropout_seed,
                       .proj_size = c.proj_size};
    switch (c.cell) {
        case Cell::RnnTanh: return std::make_unique<RNN<Scalar>>(o, rng);
        case Cell::RnnRelu: o.nonlinearity = Activation::ReLU; return std::make_unique<RNN<Scalar>>(o, rng);
        case Cell::Lstm: return std::make_unique<LSTM<Scalar>>(o, rng);
        case Cell::Gru: return std::make_unique<GRU<Scalar>>(o, rng);
    }
    return nullptr;
}

// B lengths in [1, T], out of order, with one sequence of a single step and one of all T.
std::vector<Index> uneven_lengths(Index B, Index T, Rng& rng) {
    std::uniform_int_distribution<Index> draw(1, T);
    std::vector<Index> lengths(static_cast<std::size_t>(B));
    for (Index& n : lengths) n = draw(rng);
    lengths[1] = 1;
    lengths[static_cast<std::size_t>(B - 2)] = T;
    return lengths;
}

// A padded batch of B=5 sequences of T=7 steps; the padding rows hold random values.
template <typename Scalar>
Sequence<Scalar> padded_batch(Rng& rng, Index B = 5, Index T = 7) {
    Sequence<Scalar> x = random_sequence<Scalar>(B, T, kInput, rng);
    x.lengths = uneven_lengths(B, T, rng);
    return x;
}

class RecurrentPadded : public ::testing::TestWithParam<Config> {};

}  // namespace

// The padded batch gives what each sequence gives alone: outputs, zeros past each end,
// final states, dL/dx and the parameters' gradients, from a random initial state.
TEST_P(RecurrentPadded, PaddedBatchEqualsEachSequenceAloneInDouble) {
    const Config c = GetParam();
    Rng rng(31);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = padded_batch<double>(rng);
    const State<double> initial = random_state<double>(*layer, x.batch, rng);
    seqnn::testing::expect_padded_batch_matches_each_alone<double>(*layer, x, initial, 1e-12);
    seqnn::testing::expect_padded_batch_matches_each_alone<double>(*layer, x, State<double>{}, 1e-12);
}

TEST_P(RecurrentPadded, PaddedBatchEqualsEachSequenceAloneInFloat) {
    const Config c = GetParam();
    Rng rng(32);
    auto layer = make_layer<float>(c, rng);
    const Sequence<float> x = padded_batch<float>(rng);
    const State<float> initial = random_state<float>(*layer, x.batch, rng);
    seqnn::testing::expect_padded_batch_matches_each_alone<float>(*layer, x, initial,
                                                                  seqnn::testing::float_tolerance(x.batch * x.steps));
}

TEST_P(RecurrentPadded, GradientsWithLengthsMatchFiniteDifferences) {
    const Config c = GetParam();
    Rng rng(33);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = padded_batch<double>(rng, 4, 5);
    const State<double> initial = random_state<double>(*layer, x.batch, rng);
    seqnn::testing::GradientChecker checker(*layer);
    seqnn::testing::expect_gradients_match(checker.check(x, initial), 1e-6);
}

TEST_P(RecurrentPadded, GradientsWithoutLengthsMatchFiniteDifferences) {
    const Config c = GetParam();
    Rng rng(34);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = random_sequence<double>(3, 5, kInput, rng);
    const State<double> initial = random_state<double>(*layer, x.batch, rng);
    seqnn::testing::GradientChecker checker(*layer);
    seqnn::testing::expect_gradients_match(checker.check(x, initial), 1e-6);
}

// What the padding rows of x hold, NaN and infinity included, reaches nothing: not the
// outputs, the final state, dL/dx, the initial state's gradient or any weight's gradient
// (the same bits).
TEST_P(RecurrentPadded, PaddingValuesReachNothing) {
    const Config c = GetParam();
    Rng rng(35);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = padded_batch<double>(rng);
    Sequence<double> zeros = x, wild = x;
    zero_padding<double>(zeros.data, x.steps, x.lengths);
    const double values[] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(), 1e300};
    for (Index b = 0; b < x.batch; ++b)
        for (Index t = x.length(b); t < x.steps; ++t) wild.data.row(b * x.steps + t).setConstant(values[(b + t) % 3]);
    const State<double> initial = random_state<double>(*layer, x.batch, rng);
    const Matrix<double> dy = random_matrix<double>(x.batch * x.steps, layer->output_size(), rng);

    struct Run {
        Matrix<double> y, dx;
        std::vector<Matrix<double>> final_state, d_initial, grads;
    };
    const auto run = [&](const Sequence<double>& input) {
        Run r;
        layer->zero_grad();
        State<double> state = initial, d_initial;
        Context<double> ctx;
        r.y = layer->forward(input, &state, &ctx).data;
        r.dx = layer->backward(Sequence<double>(dy, x.batch, x.steps), ctx, nullptr, &d_initial).data;
        for (const Matrix<double>* t : state_tensors(state)) r.final_state.push_back(*t);
        for (const Matrix<double>* t : state_tensors(d_initial)) r.d_initial.push_back(*t);
        for (const auto& p : layer->parameters()) r.grads.push_back(p.param->grad);
        return r;
    };
    const Run a = run(zeros), b = run(wild);
    EXPECT_TRUE(a.y == b.y);
    EXPECT_TRUE(a.dx == b.dx);
    EXPECT_TRUE(a.final_state == b.final_state);
    EXPECT_TRUE(a.d_initial == b.d_initial);
    EXPECT_TRUE(a.grads == b.grads);
}

// A stream fed in two chunks, the second one ragged (each sequence's remaining steps as
// its length), equals the padded batch fed whole: outputs and final state. Only a
// unidirectional stack has a meaning for it: the reverse direction needs the whole sequence.
TEST_P(RecurrentPadded, ChunkedEqualsWholeWithARaggedLastChunk) {
    const Config c = GetParam();
    if (c.bidirectional) GTEST_SKIP() << "a bidirectional layer's reverse direction needs the whole sequence";
    Rng rng(36);
    auto layer = make_layer<double>(c, rng);
    const Index B = 4, T = 9, split = 4;
    Sequence<double> x = random_sequence<double>(B, T, kInput, rng);
    x.lengths = {9, 5, 7, 6};  // every sequence runs past the split
    State<double> whole_state = random_state<double>(*layer, B, rng);
    State<double> state = whole_state;
    const Sequence<double> whole = layer->forward(x, &whole_state);

    Sequence<double> first(B, split, kInput), second(B, T - split, kInput);
    for (Index b = 0; b < B; ++b) {
        first.sequence(b) = x.sequence(b).topRows(split);
        second.sequence(b) = x.sequence(b).bottomRows(T - split);
        second.lengths.push_back(x.lengths[static_cast<std::size_t>(b)] - split);
    }
    const Sequence<double> y1 = layer->forward(first, &state);
    const Sequence<double> y2 = layer->forward(second, &state);
    for (Index b = 0; b < B; ++b) {
        EXPECT_LT(relative_error(y1.sequence(b), whole.sequence(b).topRows(split)), 1e-13);
        EXPECT_LT(relative_error(y2.sequence(b), whole.sequence(b).bottomRows(T - split)), 1e-13);
    }
    for (std::size_t j = 0; j < state.tensors.size(); ++j)
        EXPECT_LT(relative_error(state.tensors[j], whole_state.tensors[j]), 1e-13);
}

// PyTorch's names, order and shapes: per layer the forward direction's weight_ih, weight_hh,
// bias_ih, bias_hh (weight_hr), then the `_reverse` ones; layer k > 0 reads D*H_r features.
TEST_P(RecurrentPadded, ParametersAndStateHavePyTorchNamesAndShapes) {
    const Config c = GetParam();
    Rng rng(37);
    auto layer = make_layer<float>(c, rng);
    const Index G = c.cell == Cell::Lstm ? 4 : c.cell == Cell::Gru ? 3 : 1, D = c.bidirectional ? 2 : 1;
    const Index Hr = c.proj_size ? c.proj_size : kHidden;
    EXPECT_EQ(layer->output_size(), D * Hr);
    const auto params = layer->parameters();
    std::size_t i = 0;
    const auto expect_next = [&](const std::string& name, std::vector<Index> shape) {
        ASSERT_LT(i, params.size());
        EXPECT_EQ(params[i].name, name);
        EXPECT_EQ(params[i].param->shape, shape) << name;
        ++i;
    };
    for (Index k = 0; k < c.layers; ++k)
        for (Index d = 0; d < D; ++d) {
            const std::string l = "_l" + std::to_string(k) + (d == 1 ? "_reverse" : "");
            expect_next("weight_ih" + l, {G * kHidden, k == 0 ? kInput : D * Hr});
            expect_next("weight_hh" + l, {G * kHidden, Hr});
            if (c.bias) {
                expect_next("bias_ih" + l, {G * kHidden});
                expect_next("bias_hh" + l, {G * kHidden});
            }
            if (c.proj_size) expect_next("weight_hr" + l, {Hr, kHidden});
        }
    EXPECT_EQ(i, params.size());
    const State<float> s = layer->initial_state(3);
    ASSERT_EQ(s.tensors.size(), c.cell == Cell::Lstm ? 2u : 1u);
    EXPECT_EQ(s.tensors[0].rows(), c.layers * D * 3);
    EXPECT_EQ(s.tensors[0].cols(), Hr);
    if (c.cell == Cell::Lstm) {
        EXPECT_EQ(s.tensors[1].cols(), kHidden);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Cells, RecurrentPadded,
    ::testing::Values(Config{Cell::RnnTanh, 1, true, false}, Config{Cell::RnnTanh, 2, true, true},
                      Config{Cell::RnnRelu, 2, false, true}, Config{Cell::Lstm, 2, true, false},
                      Config{Cell::Lstm, 2, false, true}, Config{Cell::Lstm, 1, true, true, 3},
                      Config{Cell::Lstm, 2, true, false, 2}, Config{Cell::Gru, 1, true, false},
                      Config{Cell::Gru, 2, true, true}, Config{Cell::Gru, 3, false, true}),
    config_name);

// The reverse direction runs each sequence from its own last real step back to its first,
// from its own rows of the initial state: a one-layer bidirectional GRU equals two
// unidirectional GRUs with its two directions' weights, the second on each sequence reversed.
TEST(Bidirectional, TheReverseDirectionRunsEachSequenceBackFromItsOwnEnd) {
    Rng rng(40);
    const Index B = 4, T = 6, H = 5;
    GRU<double> both({.input_size = 3, .hidden_size = H, .bidirectional = true}, rng);
    GRU<double> forward({.input_size = 3, .hidden_size = H}, rng), reverse({.input_size = 3, .hidden_size = H}, rng);
    auto forward_params = forward.parameters(), reverse_params = reverse.parameters(), params = both.parameters();
    for (std::size_t i = 0; i < 4; ++i) {
        forward_params[i].param->value = params[i].param->value;
        reverse_params[i].param->value = params[4 + i].param->value;
    }
    Sequence<double> x = random_sequence<double>(B, T, 3, rng);
    x.lengths = {2, 6, 1, 4};
    const State<double> initial = random_state<double>(both, B, rng);  // rows [0, B) forward, [B, 2B) reverse
    State<double> state = initial;
    const Sequence<double> y = both.forward(x, &state);
    for (Index b = 0; b < B; ++b) {
        const Index n = x.length(b);
        State<double> forward_state = forward.initial_state(1), reverse_state = reverse.initial_state(1);
        forward_state.tensors[0] = initial.tensors[0].row(b);
        reverse_state.tensors[0] = initial.tensors[0].row(B + b);
        const Matrix<double> steps = x.sequence(b).topRows(n);
        const Sequence<double> yf = forward.forward(Sequence<double>(steps, 1, n), &forward_state);
        const Sequence<double> yr =
            reverse.forward(Sequence<double>(Matrix<double>(steps.colwise().reverse()), 1, n), &reverse_state);
        EXPECT_LT(relative_error(y.sequence(b).topRows(n).leftCols(H), yf.data), 1e-14) << b;
        EXPECT_LT(relative_error(y.sequence(b).topRows(n).rightCols(H), Matrix<double>(yr.data.colwise().reverse())),
                  1e-14)
            << b;
        EXPECT_TRUE(y.sequence(b).bottomRows(T - n).isZero(0)) << b;
        EXPECT_LT(relative_error(state.tensors[0].row(b), forward_state.tensors[0]), 1e-14) << b;
        EXPECT_LT(relative_error(state.tensors[0].row(B + b), reverse_state.tensors[0]), 1e-14) << b;
    }
}

// A GRU or LSTM stack with options o, on a padded batch of B sequences of T steps: the
// forward (output and final state) and backward on 1 thread and on each of `threads`
// give the same bits forward, and the same to rounding backward (Eigen's threaded
// weight-gradient GEMMs sum in another order). `before(threads, lstm)` runs with the
// thread count set, before each multi-threaded run.
template <typename Before>
void expect_thread_counts_agree(const RecurrentOptions& o, Index B, Index T, std::initializer_list<int> threads,
                                std::uint64_t seed, const Before& before) {
    Rng rng(seed);
    for (const bool lstm : {false, true}) {
        std::unique_ptr<RecurrentStack<double>> layer;
        if (lstm)
            layer = std::make_unique<LSTM<double>>(o, rng);
        else
            layer = std::make_unique<GRU<double>>(o, rng);
        Sequence<double> x = random_sequence<double>(B, T, o.input_size, rng);
        x.lengths = uneven_lengths(B, T, rng);
        const Matrix<double> dy = random_matrix<double>(B * T, layer->output_size(), rng);
        const auto run = [&](Matrix<double>& y, Matrix<double>& dx, State<double>& state) {
            layer->zero_grad();
            Context<double> ctx;
            state = State<double>{};
            y = layer->forward(x, &state, &ctx).data;
            dx = layer->backward(Sequence<double>(dy, B, T), ctx).data;
        };
        Matrix<double> y1, dx1, y, dx;
        State<double> s1, s;
        set_num_threads(1);
        run(y1, dx1, s1);
        for (int n : threads) {
            set_num_threads(n);
            before(n, lstm);
            run(y, dx, s);
            EXPECT_TRUE(y == y1) << n << " threads, lstm " << lstm;
            EXPECT_TRUE(s.tensors == s1.tensors) << n << " threads, lstm " << lstm;
            EXPECT_LT(relative_error(dx, dx1), 1e-13) << n << " threads, lstm " << lstm;
        }
    }
}

// The two directions side by side (each on its share of the threads) give the bits they
// give one after the other on one thread.
TEST(Bidirectional, DirectionsSideBySideGiveTheBitsOfOneAfterTheOther) {
    seqnn::testing::ThreadGuard guard;
    expect_thread_counts_agree({.input_size = 64, .hidden_size = 64, .num_layers = 2, .bidirectional = true}, 8, 40,
                               {2, 4}, 41, [](int, bool) {});
}

// On many threads the time loops cut the batch into groups of sequences, each run by a
// team of its own (kernels/recurrent.hpp's LoopTeams), with the bits of one thread.
TEST(Teams, BatchCutIntoTeamsGivesTheBitsOfOneThread) {
    if (!openmp_enabled()) GTEST_SKIP() << "built without OpenMP: one thread, one team";
    seqnn::testing::ThreadGuard guard;
    expect_thread_counts_agree({.input_size = 24, .hidden_size = 64, .num_layers = 2}, 16, 12, {8, 16}, 43,
                               [](int threads, bool lstm) {
                                   const CellKind cell = lstm ? CellKind::LSTM : CellKind::GRU;
                                   EXPECT_GT(recurrent_loop_teams<double>(cell, 16, 24, 64).groups, 1)
                                       << threads << " threads: the loop should run as several teams";
                               });
}

// A bidirectional layer cannot stream; the message names the layer and the reason.
TEST(Bidirectional, StepIsRefused) {
    Rng rng(42);
    const GRU<float> gru({.input_size = 3, .hidden_size = 4, .bidirectional = true}, rng);
    State<float> state = gru.initial_state(2);
    Matrix<float> y;
    seqnn::testing::expect_shape_error([&] { gru.step(Matrix<float>::Zero(2, 3), state, y); },
                                       {"GRU.step", "a bidirectional GRU cannot stream",
                                        "reverse direction needs the whole sequence"});
    EXPECT_EQ(state.position, 0);
    const LSTM<float> lstm({.input_size = 3, .hidden_size = 4, .bidirectional = true, .proj_size = 2}, rng);
    State<float> lstm_state;
    seqnn::testing::expect_shape_error([&] { lstm.step(Matrix<float>::Zero(2, 3), lstm_state, y); },
                                       {"LSTM.step", "a bidirectional LSTM cannot stream"});
}

// The LSTM with a projection streams: step equals forward.
TEST(Projection, StepEqualsForward) {
    Rng rng(43);
    LSTM<double> lstm({.input_size = 3, .hidden_size = 5, .num_layers = 2, .proj_size = 2}, rng);
    const Sequence<double> x = random_sequence<double>(3, 6, 3, rng);
    const State<double> initial = random_state<double>(lstm, 3, rng);
    State<double> whole_state = initial, state = initial;
    const Sequence<double> whole = lstm.forward(x, &whole_state);
    Matrix<double> y;
    for (Index t = 0; t < x.steps; ++t) {
        lstm.step(Matrix<double>(x.at_step(t)), state, y);
        EXPECT_LT(relative_error(y, Matrix<double>(whole.at_step(t))), 1e-13) << "t=" << t;
    }
    for (std::size_t j = 0; j < state.tensors.size(); ++j)
        EXPECT_LT(relative_error(state.tensors[j], whole_state.tensors[j]), 1e-13);
}

// Bad lengths are the core's to refuse (one check for every layer), naming the layer.
TEST(Lengths, BadLengthsAreRefusedNamingTheLayer) {
    Rng rng(44);
    const GRU<double> gru({.input_size = 3, .hidden_size = 4, .bidirectional = true}, rng);
    for (const std::vector<Index>& lengths :
         {std::vector<Index>{0, 3}, std::vector<Index>{4, 3}, std::vector<Index>{3}, std::vector<Index>{-1, 2}}) {
        Sequence<double> x = random_sequence<double>(2, 3, 3, rng);
        x.lengths = lengths;
        seqnn::testing::expect_shape_error([&] { gru.forward(x); }, {"GRU.forward", "length"});
    }
}

// Options PyTorch refuses are refused here too, naming the layer.
TEST(Options, ProjectionAndDropoutAreChecked) {
    Rng rng(45);
    seqnn::testing::expect_shape_error([&] { GRU<float>({.input_size = 3, .hidden_size = 4, .proj_size = 2}, rng); },
                                       {"GRU", "proj_size is the LSTM's option"});
    seqnn::testing::expect_shape_error([&] { LSTM<float>({.input_size = 3, .hidden_size = 4, .proj_size = 4}, rng); },
                                       {"LSTM", "proj_size", "hidden_size"});
    seqnn::testing::expect_shape_error([&] { LSTM<float>({.input_size = 3, .hidden_size = 4, .proj_size = -1}, rng); },
                                       {"LSTM", "proj_size"});
    seqnn::testing::expect_shape_error(
        [&] { RNN<float>({.input_size = 3, .hidden_size = 4, .num_layers = 2, .dropout = 1.5}, rng); },
        {"RNN", "dropout", "1.5"});
}

// ---------------------------------------------------------------- dropout between layers

namespace {

// The training forward's output and gradients of a layer for x and dy.
struct TrainingRun {
    Matrix<double> y, dx;
    std::vector<Matrix<double>> grads;
};

TrainingRun train_once(RecurrentStack<double>& layer, const Sequence<double>& x, const Matrix<double>& dy) {
    TrainingRun r;
    layer.zero_grad();
    Context<double> ctx;
    r.y = layer.forward(x, nullptr, &ctx).data;
    r.dx = layer.backward(Sequence<double>(dy, x.batch, x.steps), ctx).data;
    for (const auto& p : layer.parameters()) r.grads.push_back(p.param->grad);
    return r;
}

}  // namespace

// p = 0 is no dropout at all, in training too; the stack has one dropout per gap between
// layers, each over the layer's whole output.
TEST(Dropout, ZeroIsNoDropout) {
    for (const bool bidirectional : {false, true}) {
        Rng rng_a(50), rng_b(50), data(51);
        GRU<double> plain({.input_size = kInput, .hidden_size = 4, .num_layers = 3, .bidirectional = bidirectional}, rng_a);
        GRU<double> zero({.input_size = kInput, .hidden_size = 4, .num_layers = 3, .bidirectional = bidirectional,
                          .dropout = 0.0, .dropout_seed = 9},
                         rng_b);
        const Sequence<double> x = padded_batch<double>(data);
        const Matrix<double> dy = random_matrix<double>(x.batch * x.steps, plain.output_size(), data);
        const TrainingRun a = train_once(plain, x, dy), b = train_once(zero, x, dy);
        EXPECT_TRUE(a.y == b.y);
        EXPECT_TRUE(a.dx == b.dx);
        EXPECT_TRUE(a.grads == b.grads);
        ASSERT_EQ(zero.dropouts().size(), 2u);
        for (const Dropout<double>* d : zero.dropouts()) {
            EXPECT_EQ(d->input_size(), zero.output_size());
            EXPECT_EQ(d->calls(), 0u);
        }
    }
}

// Inference and step ignore dropout; training applies it, deterministically for a seed
// (each training forward draws the next masks), and the counters are the whole state.
TEST(Dropout, ActsInTrainingOnlyAndIsDeterministicForASeed) {
    Rng rng_a(52), rng_b(52), rng_c(52), data(53);
    const RecurrentOptions o{.input_size = kInput, .hidden_size = 4, .num_layers = 3, .dropout = 0.5, .dropout_seed = 7};
    LSTM<double> a(o, rng_a), b(o, rng_b);
    LSTM<double> none({.input_size = kInput, .hidden_size = 4, .num_layers = 3}, rng_c);
    const Sequence<double> x = padded_batch<double>(data);
    const Matrix<double> dy = random_matrix<double>(x.batch * x.steps, 4, data);

    EXPECT_TRUE(a.forward(x).data == none.forward(x).data);  // inference
    State<double> sa = a.initial_state(x.batch), sn = none.initial_state(x.batch);
    Matrix<double> ya, yn;
    a.step(Matrix<double>(x.at_step(0)), sa, ya);
    none.step(Matrix<double>(x.at_step(0)), sn, yn);
    EXPECT_TRUE(ya == yn);  // streaming
    for (const Dropout<double>* d : a.dropouts()) EXPECT_EQ(d->calls(), 0u);

    const TrainingRun first = train_once(a, x, dy), same = train_once(b, x, dy);
    EXPECT_TRUE(first.y == same.y);  // the same seed and counters: the same masks
    EXPECT_TRUE(first.grads == same.grads);
    EXPECT_GT((first.y - none.forward(x).data).cwiseAbs().maxCoeff(), 1e-3);  // it acted
    for (const Dropout<double>* d : a.dropouts()) EXPECT_EQ(d->calls(), 1u);
    const TrainingRun second = train_once(a, x, dy);  // the next masks
    EXPECT_FALSE(second.y == first.y);
    for (Dropout<double>* d : a.dropouts()) d->set_calls(0);  // a checkpoint's restore
    EXPECT_TRUE(train_once(a, x, dy).y == first.y);
}

// With its masks fixed (every forward replays call 0), the training forward's gradients
// match finite differences: dL/dx and every parameter, padded and bidirectional.
TEST(Dropout, GradientsWithFixedMasksMatchFiniteDifferences) {
    for (const bool bidirectional : {false, true}) {
        Rng rng(54);
        GRU<double> gru({.input_size = kInput, .hidden_size = 4, .num_layers = 3, .bidirectional = bidirectional,
                         .dropout = 0.4, .dropout_seed = 3},
                        rng);
        const Sequence<double> x = padded_batch<double>(rng, 4, 5);
        const Matrix<double> w = random_matrix<double>(x.batch * x.steps, gru.output_size(), rng);
        const auto loss_of = [&](const Sequence<double>& in) {
            for (Dropout<double>* d : gru.dropouts()) d->set_calls(0);
            Context<double> ctx;
            return (gru.forward(in, nullptr, &ctx).data.array() * w.array()).sum();
        };
        for (Dropout<double>* d : gru.dropouts()) d->set_calls(0);
        gru.zero_grad();
        Context<double> ctx;
        gru.forward(x, nullptr, &ctx);
        const Sequence<double> dx = gru.backward(Sequence<double>(w, x.batch, x.steps), ctx);
        Sequence<double> x_mut = x;
        EXPECT_LT(seqnn::testing::finite_difference_error(x_mut.data, dx.data, [&] { return loss_of(x_mut); }), 1e-6);
        for (auto& p : gru.parameters()) {
            const Matrix<double> analytic = p.param->grad;
            EXPECT_LT(seqnn::testing::finite_difference_error(p.param->value, analytic, [&] { return loss_of(x); }, 40),
                      1e-6)
                << p.name << (bidirectional ? " (bidirectional)" : "");
        }
    }
}
