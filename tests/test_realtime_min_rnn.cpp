// The real-time twins of MinGRU, MinLSTM and CausalDepthwiseConv1d (realtime/min_rnn.hpp,
// realtime/causal_conv.hpp): per sample they give what the layer's forward gives for one
// stream, per block what per sample gives for any split of the stream, they hand a stream
// to the layer's step and take one back, and once made they allocate nothing.
//
// This file counts heap allocations: operator new (allocation_counter.hpp) and Eigen's own
// malloc, whose runtime check is switched on and its failed assertions counted.
#include "eigen_malloc_counter.hpp"

#include "testing.hpp"

#include <seqnn/seqnn.hpp>
#include <seqnn/realtime/causal_conv.hpp>
#include <seqnn/realtime/min_rnn.hpp>
#include "layer_instances.hpp"

#include <string>
#include <vector>

#include "allocation_counter.hpp"

using namespace seqnn;
using seqnn::testing::expect_shape_error;
using seqnn::testing::random_matrix;
using seqnn::testing::relative_error;

namespace {

// One combination of a minGRU's or minLSTM's options.
struct MinCase {
    Index input = 3;
    Index hidden = 7;
    bool project_out = false;  // forced on when hidden != input
    bool bias = false;
    HiddenActivation activation = HiddenActivation::PositiveG;
    bool learned = false;  // learned initial state (needs PositiveG)

    MinRNNOptions options() const {
        MinRNNOptions o;
        o.input_size = input;
        o.hidden_size = hidden;
        o.project_out = project_out;
        o.bias = bias;
        o.activation = activation;
        o.learned_initial_state = learned;
        return o;
    }
    std::string describe() const {
        return "D=" + std::to_string(input) + " E=" + std::to_string(hidden) + (project_out ? " project_out" : "") +
               (bias ? " bias" : "") + (activation == HiddenActivation::Identity ? " identity" : " g") +
               (learned ? " learned h0" : "");
    }
};

// Every activation x projection x bias x learned-start combination, at odd sizes: E == D
// without to_out, E == D with project_out, E != D (to_out forced), and one input feature.
std::vector<MinCase> all_cases() {
    std::vector<MinCase> cases;
    const std::vector<std::pair<Index, Index>> sizes = {{7, 7}, {3, 7}, {1, 13}, {5, 3}, {16, 37}};
    for (auto [d, e] : sizes)
        for (bool project : {false, true})
            for (bool bias : {false, true})
                for (auto act : {HiddenActivation::Identity, HiddenActivation::PositiveG})
                    for (bool learned : {false, true}) {
                        if (learned && act != HiddenActivation::PositiveG) continue;
                        if (project && d != e) continue;  // the same as without: to_out is forced
                        cases.push_back({d, e, project, bias, act, learned});
                    }
    return cases;
}

template <typename Layer>
Layer make_layer(const MinCase& c, std::uint64_t seed) {
    Rng rng(seed);
    return Layer(c.options(), rng);
}

// The layer's forward over one stream x (T, D), from `state` (empty: the layer's start).
template <typename Scalar>
Matrix<Scalar> layer_forward(const Layer<Scalar>& layer, const Matrix<Scalar>& x, State<Scalar>& state) {
    return layer.forward(Sequence<Scalar>(x, 1, x.rows()), &state).data;
}

// The twin, one sample at a time over x (T, input_size).
template <typename Twin, typename Scalar>
Matrix<Scalar> twin_samples(Twin& twin, const Matrix<Scalar>& x) {
    Matrix<Scalar> y(x.rows(), twin.output_size());
    for (Index t = 0; t < x.rows(); ++t) twin.process_sample(x.row(t).data(), y.row(t).data());
    return y;
}

// The twin block by block, with the given block lengths (which sum to x.rows()).
template <typename Twin, typename Scalar>
Matrix<Scalar> twin_blocks(Twin& twin, const Matrix<Scalar>& x, const std::vector<Index>& blocks) {
    Matrix<Scalar> y(x.rows(), twin.output_size());
    Index t = 0;
    for (Index n : blocks) {
        twin.process_block(x.data() + t * x.cols(), n, y.data() + t * y.cols());
        t += n;
    }
    EXPECT_EQ(t, x.rows());
    return y;
}

// A block computes every output with the same arithmetic, in the same order, as a sample:
// the same bits, not merely close ones.
template <typename Scalar>
void expect_same_bits(const Matrix<Scalar>& got, const Matrix<Scalar>& expected) {
    ASSERT_EQ(got.rows(), expected.rows());
    ASSERT_EQ(got.cols(), expected.cols());
    EXPECT_TRUE(got == expected) << "max difference " << (got - expected).cwiseAbs().maxCoeff();
}

// Random block lengths summing to `total`: 0, 1 and lengths past max_block among them.
std::vector<Index> random_split(Index total, Index max_block, Rng& rng) {
    std::vector<Index> blocks = {0, 1, 0};
    Index used = 1;
    std::uniform_int_distribution<Index> length(0, 3 * max_block + 2);
    while (used < total) {
        const Index n = std::min(total - used, length(rng));
        blocks.push_back(n);
        used += n;
    }
    blocks.push_back(0);
    return blocks;
}

// ---- minGRU and minLSTM ------------------------------------------------------------

template <typename Layer, typename Twin>
void expect_samples_match_forward(const MinCase& c) {
    SCOPED_TRACE(c.describe());
    const Layer layer = make_layer<Layer>(c, 11);
    Rng rng(5);
    const Matrix<double> x = random_matrix<double>(41, c.input, rng, 2.0);

    // From the layer's start (zeros, or g(init_hidden_state)).
    State<double> state;
    const Matrix<double> expected = layer_forward(layer, x, state);
    Twin twin(layer);
    EXPECT_LT(relative_error(twin_samples(twin, x), expected), 1e-12);
    EXPECT_LT(relative_error(twin.state().tensors[0], state.tensors[0]), 1e-12);
    EXPECT_EQ(twin.state().position, state.position);

    // From a random state given to both.
    State<double> start = seqnn::testing::random_state<double>(layer, 1, rng);
    State<double> layer_state = start;
    const Matrix<double> expected2 = layer_forward(layer, x, layer_state);
    twin.set_state(start);
    EXPECT_LT(relative_error(twin_samples(twin, x), expected2), 1e-12);
    EXPECT_LT(relative_error(twin.state().tensors[0], layer_state.tensors[0]), 1e-12);

    // reset() goes back to the layer's start.
    twin.reset();
    EXPECT_LT(relative_error(twin_samples(twin, x), expected), 1e-12);
}

TEST(RealtimeMinRNN, MinGRUSampleEqualsForwardInEveryCombination) {
    for (const MinCase& c : all_cases()) expect_samples_match_forward<seqnn::MinGRU<double>, realtime::MinGRU<double>>(c);
}

TEST(RealtimeMinRNN, MinLSTMSampleEqualsForwardInEveryCombination) {
    for (const MinCase& c : all_cases())
        expect_samples_match_forward<seqnn::MinLSTM<double>, realtime::MinLSTM<double>>(c);
}

TEST(RealtimeMinRNN, ExtremeGatesMatchTheLayerAndStayFinite) {
    // Pre-activations in the thousands: gates that underflow to 0 or round to 1, both of a
    // minLSTM's gates tiny at once (where f / (f + i) taken naively is 0 / 0).
    for (auto act : {HiddenActivation::Identity, HiddenActivation::PositiveG}) {
        const MinCase c{3, 9, false, true, act};
        seqnn::MinLSTM<double> lstm = make_layer<seqnn::MinLSTM<double>>(c, 12);
        seqnn::MinGRU<double> gru = make_layer<seqnn::MinGRU<double>>(c, 13);
        lstm.in_projection().weight.value *= 400.0;
        gru.in_projection().weight.value *= 400.0;
        Rng rng(14);
        Matrix<double> x = random_matrix<double>(60, 3, rng, 3.0);
        x.row(7).setConstant(-3.0);  // every pre-activation of a row far from 0 together
        x.row(8).setConstant(3.0);
        State<double> s1, s2;
        const Matrix<double> lstm_y = layer_forward<double>(lstm, x, s1), gru_y = layer_forward<double>(gru, x, s2);
        realtime::MinLSTM<double> lstm_twin(lstm);
        realtime::MinGRU<double> gru_twin(gru);
        const Matrix<double> lstm_got = twin_samples(lstm_twin, x), gru_got = twin_samples(gru_twin, x);
        EXPECT_TRUE(lstm_got.allFinite());
        EXPECT_TRUE(gru_got.allFinite());
        EXPECT_LT(relative_error(lstm_got, lstm_y), 1e-12);
        EXPECT_LT(relative_error(gru_got, gru_y), 1e-12);

        // float, where the exponentials overflow much sooner.
        const seqnn::MinLSTM<float> lstm_f = make_layer<seqnn::MinLSTM<float>>(c, 12);
        seqnn::MinLSTM<float> scaled = lstm_f;
        scaled.in_projection().weight.value *= 400.0f;
        realtime::MinLSTM<float> twin_f(scaled);
        State<float> sf;
        const Matrix<float> xf = x.cast<float>();
        const Matrix<float> got_f = twin_samples(twin_f, xf);
        EXPECT_TRUE(got_f.allFinite());
        EXPECT_LT(relative_error(got_f, layer_forward<float>(scaled, xf, sf)), 1e-5);
    }
}

TEST(RealtimeMinRNN, SampleEqualsForwardInEveryScanMode) {
    // The layer's three scan modes compute the same function; the twin matches each.
    const MinCase c{3, 9, false, true, HiddenActivation::PositiveG, true};
    for (MinRNNMode mode : {MinRNNMode::Sequential, MinRNNMode::Parallel, MinRNNMode::LogSpace}) {
        seqnn::MinLSTM<double> layer = make_layer<seqnn::MinLSTM<double>>(c, 2);
        layer.set_mode(mode);
        Rng rng(8);
        const Matrix<double> x = random_matrix<double>(30, 3, rng);
        State<double> state;
        const Matrix<double> expected = layer_forward<double>(layer, x, state);
        realtime::MinLSTM<double> twin(layer);
        EXPECT_LT(relative_error(twin_samples(twin, x), expected), 1e-12) << static_cast<int>(mode);
    }
}

template <typename Layer, typename Twin>
void expect_blocks_match_samples(const MinCase& c, Index max_block, std::uint64_t seed) {
    SCOPED_TRACE(c.describe() + " max_block=" + std::to_string(max_block));
    const Layer layer = make_layer<Layer>(c, seed);
    Rng rng(seed + 1);
    const Matrix<double> x = random_matrix<double>(97, c.input, rng, 2.0);
    Twin by_sample(layer, max_block);
    const Matrix<double> expected = twin_samples(by_sample, x);
    for (int trial = 0; trial < 4; ++trial) {
        Twin by_block(layer, max_block);
        const std::vector<Index> split = random_split(x.rows(), max_block, rng);
        expect_same_bits<double>(twin_blocks(by_block, x, split), expected);
        expect_same_bits<double>(by_block.state().tensors[0], by_sample.state().tensors[0]);
        EXPECT_EQ(by_block.state().position, x.rows());
    }
    // One block of the whole stream, many times max_block.
    Twin whole(layer, max_block);
    expect_same_bits<double>(twin_blocks(whole, x, {x.rows()}), expected);
}

TEST(RealtimeMinRNN, BlocksEqualSamplesForAnySplit) {
    std::uint64_t seed = 20;
    for (const MinCase& c : all_cases())
        for (Index max_block : {1, 5, 16}) {
            expect_blocks_match_samples<seqnn::MinGRU<double>, realtime::MinGRU<double>>(c, max_block, ++seed);
            expect_blocks_match_samples<seqnn::MinLSTM<double>, realtime::MinLSTM<double>>(c, max_block, ++seed);
        }
}

TEST(RealtimeMinRNN, BlocksRunInPlace) {
    // x and y may be one buffer when the layer maps D features to D.
    for (const MinCase& c : {MinCase{5, 5, true, true}, MinCase{7, 7, false, false}, MinCase{4, 9}}) {
        SCOPED_TRACE(c.describe());
        const seqnn::MinGRU<double> layer = make_layer<seqnn::MinGRU<double>>(c, 3);
        Rng rng(4);
        const Matrix<double> x = random_matrix<double>(23, c.input, rng);
        realtime::MinGRU<double> twin(layer, 8);
        const Matrix<double> expected = twin_samples(twin, x);
        twin.reset();
        Matrix<double> buffer = x;
        twin.process_block(buffer.data(), buffer.rows(), buffer.data());
        expect_same_bits<double>(buffer, expected);
        twin.reset();
        Matrix<double> sample_buffer = x;
        for (Index t = 0; t < x.rows(); ++t) twin.process_sample(sample_buffer.row(t).data(), sample_buffer.row(t).data());
        expect_same_bits<double>(sample_buffer, expected);
    }
}

TEST(RealtimeMinRNN, EigenOverloadTakesViews) {
    const MinCase c{3, 7, false, true};
    const seqnn::MinLSTM<double> layer = make_layer<seqnn::MinLSTM<double>>(c, 9);
    Rng rng(1);
    const Matrix<double> x = random_matrix<double>(19, 3, rng);
    realtime::MinLSTM<double> twin(layer, 4);
    const Matrix<double> expected = twin_samples(twin, x);

    twin.reset();
    Matrix<double> y(19, 3);
    twin.process_block(x, y);
    expect_same_bits<double>(y, expected);

    // Columns of wider matrices: rows with gaps between them.
    Matrix<double> wide_x = Matrix<double>::Zero(19, 8), wide_y = Matrix<double>::Zero(19, 6);
    wide_x.middleCols(2, 3) = x;
    twin.reset();
    twin.process_block(wide_x.middleCols(2, 3), wide_y.middleCols(1, 3));
    expect_same_bits<double>(Matrix<double>(wide_y.middleCols(1, 3)), expected);
    EXPECT_TRUE(wide_y.col(0).isZero(0));
    EXPECT_TRUE(wide_y.rightCols(2).isZero(0));
}

template <typename Layer, typename Twin>
void expect_state_moves_both_ways(const MinCase& c) {
    SCOPED_TRACE(c.describe());
    const Layer layer = make_layer<Layer>(c, 31);
    Rng rng(32);
    const Matrix<double> x = random_matrix<double>(40, c.input, rng);
    State<double> full;
    const Matrix<double> expected = layer_forward(layer, x, full);

    // The layer steps the first 15 samples, the twin takes the stream and finishes it.
    State<double> s = layer.initial_state(1);
    Matrix<double> y(40, layer.output_size()), y_t;
    for (Index t = 0; t < 15; ++t) {
        layer.step(x.row(t), s, y_t);
        y.row(t) = y_t;
    }
    Twin twin(layer, 6);
    twin.set_state(s);
    twin.process_block(x.data() + 15 * c.input, 25, y.data() + 15 * y.cols());
    EXPECT_LT(relative_error(y, expected), 1e-12);
    EXPECT_LT(relative_error(twin.state().tensors[0], full.tensors[0]), 1e-12);
    EXPECT_EQ(twin.state().position, 40);

    // The twin runs the first 25, the layer's step takes over.
    twin.reset();
    Matrix<double> z(40, layer.output_size());
    twin.process_block(x.data(), 25, z.data());
    State<double> handed = twin.state();
    for (Index t = 25; t < 40; ++t) {
        layer.step(x.row(t), handed, y_t);
        z.row(t) = y_t;
    }
    EXPECT_LT(relative_error(z, expected), 1e-12);
    EXPECT_LT(relative_error(handed.tensors[0], full.tensors[0]), 1e-12);

    // ... and forward takes a twin's state the same way.
    twin.reset();
    twin.process_block(x.data(), 25, z.data());
    State<double> handed2 = twin.state();
    const Matrix<double> rest = layer_forward<double>(layer, x.bottomRows(15), handed2);
    EXPECT_LT(relative_error(rest, expected.bottomRows(15)), 1e-12);
}

TEST(RealtimeMinRNN, StateMovesBetweenTwinAndLayerBothWays) {
    for (const MinCase& c : all_cases()) {
        expect_state_moves_both_ways<seqnn::MinGRU<double>, realtime::MinGRU<double>>(c);
        expect_state_moves_both_ways<seqnn::MinLSTM<double>, realtime::MinLSTM<double>>(c);
    }
}

TEST(RealtimeMinRNN, StateAfterResetIsTheLayersInitialState) {
    for (bool learned : {false, true}) {
        const MinCase c{3, 5, false, true, HiddenActivation::PositiveG, learned};
        const seqnn::MinGRU<double> layer = make_layer<seqnn::MinGRU<double>>(c, 6);
        realtime::MinGRU<double> twin(layer);
        const State<double> expected = layer.initial_state(1);
        const State<double> got = twin.state();
        ASSERT_EQ(got.tensors.size(), 1u);
        EXPECT_EQ(got.tensors[0], expected.tensors[0]);
        EXPECT_EQ(got.workspace.size(), expected.workspace.size());  // with the learned start's mark
        EXPECT_EQ(got.batch, 1);
        EXPECT_EQ(got.position, 0);
        // After a sample the state moves on: no longer the learned start.
        const double x[3] = {0.1, -0.2, 0.3};
        double y[3];
        twin.process_sample(x, y);
        EXPECT_EQ(twin.state().workspace.size(), 1u);
        EXPECT_EQ(twin.state().position, 1);
        // A marked initial state given back is the learned start again.
        twin.set_state(expected);
        EXPECT_EQ(twin.state().workspace.size(), expected.workspace.size());
        EXPECT_EQ(twin.state().position, 0);
        // An empty state is the layer's start, as the layer's forward and step take it.
        twin.process_sample(x, y);
        twin.set_state(State<double>{});
        EXPECT_EQ(twin.state().tensors[0], expected.tensors[0]);
        EXPECT_EQ(twin.state().workspace.size(), expected.workspace.size());
    }
}

TEST(RealtimeMinRNN, FloatFollowsDouble) {
    for (const MinCase& c : {MinCase{1, 13, false, true, HiddenActivation::PositiveG, true}, MinCase{5, 5, true, false},
                             MinCase{3, 7, false, true, HiddenActivation::Identity}}) {
        SCOPED_TRACE(c.describe());
        // The same seed draws the same weights, rounded to float.
        const seqnn::MinLSTM<double> layer_d = make_layer<seqnn::MinLSTM<double>>(c, 40);
        const seqnn::MinLSTM<float> layer_f = make_layer<seqnn::MinLSTM<float>>(c, 40);
        const seqnn::MinGRU<double> gru_d = make_layer<seqnn::MinGRU<double>>(c, 41);
        const seqnn::MinGRU<float> gru_f = make_layer<seqnn::MinGRU<float>>(c, 41);
        Rng rng(7);
        const Matrix<double> x = random_matrix<double>(64, c.input, rng);
        const Matrix<float> xf = x.cast<float>();

        realtime::MinLSTM<double> twin_d(layer_d, 16);
        realtime::MinLSTM<float> twin_f(layer_f, 16);
        const Matrix<double> yd = twin_samples(twin_d, x);
        EXPECT_LT(relative_error(twin_samples(twin_f, xf), yd), seqnn::testing::float_tolerance(64));
        State<float> sf;
        const Matrix<float> layer_y = layer_forward<float>(layer_f, xf, sf);
        twin_f.reset();
        EXPECT_LT(relative_error(twin_blocks(twin_f, xf, {20, 0, 44}), layer_y), seqnn::testing::float_tolerance(64));

        realtime::MinGRU<double> gru_twin_d(gru_d, 16);
        realtime::MinGRU<float> gru_twin_f(gru_f, 16);
        EXPECT_LT(relative_error(twin_blocks(gru_twin_f, xf, {64}), twin_samples(gru_twin_d, x)),
                  seqnn::testing::float_tolerance(64));
    }
}

template <typename Twin, typename Scalar>
long allocations_of_twin(Twin& twin, const Matrix<Scalar>& x) {
    Matrix<Scalar> y(x.rows(), twin.output_size());
    start_counting();
    for (Index t = 0; t < x.rows(); ++t) twin.process_sample(x.row(t).data(), y.row(t).data());
    twin.process_block(x.data(), x.rows(), y.data());  // longer than max_block: several pieces
    twin.process_block(x.data(), 0, y.data());
    twin.process_block(x.data(), 1, y.data());
    twin.reset();
    twin.process_block(x, y);  // the checked overload, right shapes
    return stop_counting();
}

TEST(RealtimeMinRNN, ProcessingAllocatesNothing) {
    for (const MinCase& c : all_cases()) {
        SCOPED_TRACE(c.describe());
        Rng rng(3);
        const seqnn::MinGRU<float> gru = make_layer<seqnn::MinGRU<float>>(c, 1);
        const seqnn::MinLSTM<double> lstm = make_layer<seqnn::MinLSTM<double>>(c, 2);
        realtime::MinGRU<float> gru_twin(gru, 8);
        realtime::MinLSTM<double> lstm_twin(lstm, 8);
        EXPECT_EQ(allocations_of_twin(gru_twin, Matrix<float>(random_matrix<float>(29, c.input, rng))), 0);
        EXPECT_EQ(allocations_of_twin(lstm_twin, Matrix<double>(random_matrix<double>(29, c.input, rng))), 0);
    }
}

TEST(RealtimeMinRNN, SetUpErrorsNameTheTwinAndTheShapes) {
    Rng rng(1);
    MinRNNOptions o;
    o.input_size = 5;
    o.hidden_size = 9;
    o.bidirectional = true;
    const seqnn::MinGRU<double> bidirectional(o, rng);
    expect_shape_error([&] { realtime::MinGRU<double> twin(bidirectional); },
                       {"realtime::MinGRU", "MinGRU(5 -> 2x9 -> 5)", "bidirectional"});
    const seqnn::MinLSTM<double> bidirectional_lstm(o, rng);
    expect_shape_error([&] { realtime::MinLSTM<double> twin(bidirectional_lstm); },
                       {"realtime::MinLSTM", "MinLSTM(5 -> 2x9 -> 5)", "bidirectional"});

    o.bidirectional = false;
    const seqnn::MinLSTM<double> layer(o, rng);
    expect_shape_error([&] { realtime::MinLSTM<double> twin(layer, 0); }, {"realtime::MinLSTM", "max_block", "0"});

    realtime::MinLSTM<double> twin(layer);
    Matrix<double> x(4, 2), y(4, 5), y_short(3, 5);
    expect_shape_error([&] { twin.process_block(x, y); }, {"realtime::MinLSTM.process_block", "(4, 2)", "(steps, 5)"});
    const Matrix<double> x_ok(4, 5);
    expect_shape_error([&] { twin.process_block(x_ok, y_short); },
                       {"realtime::MinLSTM.process_block", "(3, 5)", "(4, 5)"});

    State<double> wrong = layer.initial_state(2);
    expect_shape_error([&] { twin.set_state(wrong); }, {"realtime::MinLSTM.set_state", "2 streams"});
    wrong.batch = 0;
    expect_shape_error([&] { twin.set_state(wrong); }, {"realtime::MinLSTM.set_state", "(2, 9)", "(1, 9)"});
    State<double> two;
    two.tensors = {Matrix<double>(1, 9), Matrix<double>(1, 9)};
    expect_shape_error([&] { twin.set_state(two); }, {"realtime::MinLSTM.set_state", "2 tensors", "(1, 9)"});
}

// ---- the causal convolution ----------------------------------------------------------

struct ConvCase {
    Index channels = 5;
    Index kernel = 4;
    bool pointwise = true;
    bool bias = true;
    std::string describe() const {
        return "D=" + std::to_string(channels) + " K=" + std::to_string(kernel) + (pointwise ? " pointwise" : "") +
               (bias ? " bias" : "");
    }
};

std::vector<ConvCase> conv_cases() {
    std::vector<ConvCase> cases;
    for (Index d : {1, 5, 70})
        for (Index k : {1, 2, 4})
            for (bool pointwise : {false, true})
                for (bool bias : {false, true}) cases.push_back({d, k, pointwise, bias});
    return cases;
}

template <typename Scalar>
seqnn::CausalDepthwiseConv1d<Scalar> make_conv(const ConvCase& c, std::uint64_t seed) {
    Rng rng(seed);
    return seqnn::CausalDepthwiseConv1d<Scalar>(
        {.channels = c.channels, .kernel_size = c.kernel, .pointwise = c.pointwise, .bias = c.bias}, rng);
}

TEST(RealtimeCausalConv, SampleEqualsForward) {
    for (const ConvCase& c : conv_cases()) {
        SCOPED_TRACE(c.describe());
        const auto layer = make_conv<double>(c, 3);
        Rng rng(4);
        const Matrix<double> x = random_matrix<double>(37, c.channels, rng);
        State<double> state;
        const Matrix<double> expected = layer_forward<double>(layer, x, state);
        realtime::CausalConv<double> twin(layer);
        EXPECT_LT(relative_error(twin_samples(twin, x), expected), 1e-12);
        EXPECT_EQ(twin.state().tensors[0], state.tensors[0]);  // the window: copies of inputs
        EXPECT_EQ(twin.state().position, 37);

        // From a random window given to both.
        const State<double> start = seqnn::testing::random_state<double>(layer, 1, rng);
        State<double> layer_state = start;
        const Matrix<double> expected2 = layer_forward<double>(layer, x, layer_state);
        twin.set_state(start);
        EXPECT_LT(relative_error(twin_samples(twin, x), expected2), 1e-12);
        EXPECT_EQ(twin.state().tensors[0], layer_state.tensors[0]);
        twin.reset();
        EXPECT_LT(relative_error(twin_samples(twin, x), expected), 1e-12);
    }
}

TEST(RealtimeCausalConv, BlocksEqualSamplesForAnySplit) {
    std::uint64_t seed = 50;
    for (const ConvCase& c : conv_cases())
        for (Index max_block : {1, 3, 16}) {
            SCOPED_TRACE(c.describe() + " max_block=" + std::to_string(max_block));
            const auto layer = make_conv<double>(c, ++seed);
            Rng rng(seed);
            const Matrix<double> x = random_matrix<double>(71, c.channels, rng);
            realtime::CausalConv<double> by_sample(layer, max_block);
            const Matrix<double> expected = twin_samples(by_sample, x);
            for (int trial = 0; trial < 4; ++trial) {
                realtime::CausalConv<double> by_block(layer, max_block);
                expect_same_bits<double>(twin_blocks(by_block, x, random_split(x.rows(), max_block, rng)), expected);
                EXPECT_EQ(by_block.state().tensors[0], by_sample.state().tensors[0]);
            }
            // In place, one buffer for x and y.
            realtime::CausalConv<double> in_place(layer, max_block);
            Matrix<double> buffer = x;
            in_place.process_block(buffer.data(), 40, buffer.data());
            for (Index t = 40; t < x.rows(); ++t) in_place.process_sample(buffer.row(t).data(), buffer.row(t).data());
            expect_same_bits<double>(buffer, expected);
        }
}

TEST(RealtimeCausalConv, StateMovesBetweenTwinAndLayerBothWays) {
    for (const ConvCase& c : conv_cases()) {
        SCOPED_TRACE(c.describe());
        const auto layer = make_conv<double>(c, 8);
        Rng rng(9);
        const Matrix<double> x = random_matrix<double>(30, c.channels, rng);
        State<double> full;
        const Matrix<double> expected = layer_forward<double>(layer, x, full);

        State<double> s = layer.initial_state(1);
        Matrix<double> y(30, c.channels), y_t;
        for (Index t = 0; t < 11; ++t) {
            layer.step(x.row(t), s, y_t);
            y.row(t) = y_t;
        }
        realtime::CausalConv<double> twin(layer, 4);
        twin.set_state(s);
        twin.process_block(x.data() + 11 * c.channels, 19, y.data() + 11 * c.channels);
        EXPECT_LT(relative_error(y, expected), 1e-12);
        EXPECT_EQ(twin.state().tensors[0], full.tensors[0]);

        twin.reset();
        Matrix<double> z(30, c.channels);
        twin.process_block(x.data(), 13, z.data());  // leaves the ring turned part way (max_block 4)
        twin.process_sample(x.row(13).data(), z.row(13).data());
        State<double> handed = twin.state();
        for (Index t = 14; t < 30; ++t) {
            layer.step(x.row(t), handed, y_t);
            z.row(t) = y_t;
        }
        EXPECT_LT(relative_error(z, expected), 1e-12);
    }
}

TEST(RealtimeCausalConv, StateAfterResetIsTheLayersInitialState) {
    const auto layer = make_conv<double>({5, 4, true, true}, 6);
    realtime::CausalConv<double> twin(layer, 2);
    const State<double> expected = layer.initial_state(1);
    EXPECT_EQ(twin.state().tensors[0], expected.tensors[0]);
    EXPECT_EQ(twin.state().workspace.size(), expected.workspace.size());
    EXPECT_EQ(twin.state().batch, 1);
    Rng rng(2);
    const Matrix<double> x = random_matrix<double>(7, 5, rng);
    Matrix<double> y(7, 5);
    twin.process_block(x, y);
    EXPECT_EQ(twin.state().tensors[0], x.bottomRows(3));  // the last K-1 inputs, oldest first
    EXPECT_EQ(twin.state().position, 7);
    twin.set_state(State<double>{});  // empty: the zero window
    EXPECT_EQ(twin.state().tensors[0], expected.tensors[0]);
    EXPECT_EQ(twin.state().position, 0);
}

TEST(RealtimeCausalConv, FloatFollowsDouble) {
    const ConvCase c{5, 4, true, true};
    const auto layer_d = make_conv<double>(c, 2);
    const auto layer_f = make_conv<float>(c, 2);
    Rng rng(3);
    const Matrix<double> x = random_matrix<double>(50, 5, rng);
    realtime::CausalConv<double> twin_d(layer_d, 16);
    realtime::CausalConv<float> twin_f(layer_f, 16);
    EXPECT_LT(relative_error(twin_blocks(twin_f, Matrix<float>(x.cast<float>()), {50}), twin_samples(twin_d, x)),
              seqnn::testing::float_tolerance(20));
}

TEST(RealtimeCausalConv, ProcessingAllocatesNothing) {
    for (const ConvCase& c : conv_cases()) {
        SCOPED_TRACE(c.describe());
        Rng rng(5);
        const auto layer_f = make_conv<float>(c, 1);
        const auto layer_d = make_conv<double>(c, 2);
        realtime::CausalConv<float> twin_f(layer_f, 8);
        realtime::CausalConv<double> twin_d(layer_d, 8);
        EXPECT_EQ(allocations_of_twin(twin_f, Matrix<float>(random_matrix<float>(29, c.channels, rng))), 0);
        EXPECT_EQ(allocations_of_twin(twin_d, Matrix<double>(random_matrix<double>(29, c.channels, rng))), 0);
    }
}

TEST(RealtimeCausalConv, SetUpErrorsNameTheTwinAndTheShapes) {
    const auto layer = make_conv<double>({5, 4, true, true}, 1);
    expect_shape_error([&] { realtime::CausalConv<double> twin(layer, -1); },
                       {"realtime::CausalConv", "max_block", "-1"});
    realtime::CausalConv<double> twin(layer);
    Matrix<double> x(6, 4), y(6, 5);
    expect_shape_error([&] { twin.process_block(x, y); }, {"realtime::CausalConv.process_block", "(6, 4)", "(steps, 5)"});
    State<double> wrong = layer.initial_state(1);
    wrong.tensors[0].resize(4, 5);
    expect_shape_error([&] { twin.set_state(wrong); }, {"realtime::CausalConv.set_state", "(4, 5)", "(3, 5)"});
    expect_shape_error([&] { twin.set_state(layer.initial_state(3)); }, {"realtime::CausalConv.set_state", "3 streams"});
}

}  // namespace
