// Padded batches (Sequence::lengths) and bidirectional layers for minGRU, minLSTM and the
// causal depthwise conv, written as specifications:
//   - a padded batch gives what each sequence run alone gives (outputs, zeros past each
//     end, final state, dL/dx, parameter gradients): every cell, mode and scan split, with
//     and without the output projection, one and two directions, from a random state;
//   - what the padding holds, NaN included, reaches nothing;
//   - a bidirectional layer is two unidirectional layers, the second run on each
//     sequence reversed, with their h concatenated (and projected);
//   - gradients match finite differences with lengths, in both directions;
//   - a padded stream fed in chunks equals it fed whole;
//   - a bidirectional layer refuses to step, before any layer of a stack has stepped.
// Sizes are odd (D = 5, E = 7, T = 13) and every check runs in double and in float.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>

#include "layer_instances.hpp"

#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

using namespace seqnn;
using seqnn::testing::expect_padded_batch_matches_each_alone;
using seqnn::testing::random_matrix;
using seqnn::testing::relative_error;
using seqnn::testing::ThreadGuard;

namespace {

enum class Cell { MinGru, MinLstm };

struct Config {
    Cell cell;
    MinRNNMode mode;
    ScanSplit split;
    Index hidden;  // E; 5 = D: no projection
    bool bidirectional;
};

const char* mode_name(MinRNNMode m) {
    switch (m) {
        case MinRNNMode::Sequential: return "Sequential";
        case MinRNNMode::Parallel: return "Parallel";
        case MinRNNMode::LogSpace: return "LogSpace";
    }
    return "?";
}

const char* split_name(ScanSplit s) {
    switch (s) {
        case ScanSplit::Auto: return "Auto";
        case ScanSplit::Channels: return "Channels";
        case ScanSplit::Time: return "Time";
    }
    return "?";
}

std::string config_name(const ::testing::TestParamInfo<Config>& info) {
    const Config& c = info.param;
    return std::string(c.cell == Cell::MinGru ? "MinGRU" : "MinLSTM") + "_" + mode_name(c.mode) + "_" +
           split_name(c.split) + "_E" + std::to_string(c.hidden) + (c.bidirectional ? "_bidirectional" : "");
}

// Every cell, mode and split a layer accepts, with and without projection, one and two directions.
std::vector<Config> every_config() {
    std::vector<Config> out;
    for (Cell cell : {Cell::MinGru, Cell::MinLstm})
        for (MinRNNMode mode : {MinRNNMode::Sequential, MinRNNMode::Parallel, MinRNNMode::LogSpace})
            for (ScanSplit split : {ScanSplit::Auto, ScanSplit::Channels, ScanSplit::Time}) {
                if (split != ScanSplit::Auto && mode == MinRNNMode::Sequential) continue;  // refused
                if (split == ScanSplit::Time && mode == MinRNNMode::LogSpace) continue;     // refused
                for (Index hidden : {5, 7})
                    for (bool bidirectional : {false, true}) out.push_back({cell, mode, split, hidden, bidirectional});
            }
    return out;
}

// The identity activation where the mode allows it, so that both activations take part.
template <typename Scalar>
std::unique_ptr<MinRNN<Scalar>> make_layer(const Config& c, Rng& rng) {
    const MinRNNOptions o{.input_size = 5,
                          .hidden_size = c.hidden,
                          .bias = true,
                          .activation = c.mode == MinRNNMode::Sequential ? HiddenActivation::Identity
                                                                         : HiddenActivation::PositiveG,
                          .mode = c.mode,
                          .split = c.split,
                          .bidirectional = c.bidirectional};
    if (c.cell == Cell::MinGru) return std::make_unique<MinGRU<Scalar>>(o, rng);
    return std::make_unique<MinLSTM<Scalar>>(o, rng);
}

// B = 4 sequences of T = 13 steps: full, a single step, two odd lengths.
const std::vector<Index> kLengths{13, 1, 8, 5};

// A padded batch of random steps, padding included (it must reach nothing).
template <typename Scalar>
Sequence<Scalar> padded_batch(const std::vector<Index>& lengths, Index T, Index D, Rng& rng) {
    Sequence<Scalar> x = seqnn::testing::random_sequence<Scalar>(static_cast<Index>(lengths.size()), T, D, rng, 2.0);
    x.lengths = lengths;
    return x;
}

// A random state with every entry in [0.1, 0.6]: positive, as the log-space mode requires.
template <typename Scalar>
State<Scalar> positive_state(const Layer<Scalar>& layer, Index batch, Rng& rng) {
    State<Scalar> s = layer.initial_state(batch);
    for (Matrix<Scalar>* t : state_tensors(s))
        *t = (random_matrix<Scalar>(t->rows(), t->cols(), rng, 0.5).array().abs() + Scalar(0.1)).matrix();
    return s;
}

// Tolerances of a batch against its sequences run alone: the same operations on every
// real row; only the parameter gradients' sums over rows are grouped differently.
template <typename Scalar>
double batch_tolerance() {
    return std::is_same_v<Scalar, double> ? 1e-12 : 1e-5;
}

// x's rows [t0, t0 + steps) of every sequence, as a batch of `steps` steps with `lengths`
// (empty: none).
template <typename Scalar>
Sequence<Scalar> time_slice(const Sequence<Scalar>& x, Index t0, Index steps, std::vector<Index> lengths) {
    Sequence<Scalar> out(x.batch, steps, x.features());
    for (Index b = 0; b < x.batch; ++b) out.sequence(b) = x.sequence(b).middleRows(t0, steps);
    out.lengths = std::move(lengths);
    return out;
}

// A padded stream fed in two chunks equals it fed whole: the first chunk's T1 steps are
// real in every sequence (T1 < every length), the second is a padded batch whose lengths
// are what remains of each sequence. (A chunk in which a sequence has no step left would
// need a length of 0, which Sequence::lengths does not allow.)
template <typename Scalar>
void expect_padded_chunks_match_whole(const Layer<Scalar>& layer, const Sequence<Scalar>& x,
                                      const State<Scalar>& initial, Index T1, double tol) {
    const Index B = x.batch, T = x.steps;
    State<Scalar> whole_state = initial;
    const Sequence<Scalar> whole = layer.forward(x, &whole_state);

    std::vector<Index> rest;
    for (Index b = 0; b < B; ++b) {
        ASSERT_GT(x.length(b), T1);
        rest.push_back(x.length(b) - T1);
    }
    State<Scalar> state = initial;
    const Sequence<Scalar> y1 = layer.forward(time_slice(x, 0, T1, {}), &state);
    const Sequence<Scalar> y2 = layer.forward(time_slice(x, T1, T - T1, rest), &state);
    EXPECT_EQ(y2.lengths, rest);
    for (Index b = 0; b < B; ++b) {
        EXPECT_LT(relative_error(y1.sequence(b), whole.sequence(b).topRows(T1)), tol) << "sequence " << b;
        EXPECT_LT(relative_error(y2.sequence(b), whole.sequence(b).bottomRows(T - T1)), tol) << "sequence " << b;
    }
    const auto got = state_tensors(state), expected = state_tensors(whole_state);
    ASSERT_EQ(got.size(), expected.size());
    for (std::size_t k = 0; k < got.size(); ++k) EXPECT_LT(relative_error(*got[k], *expected[k]), tol);
}

// One training forward and backward, with dL/dy and dL/d(final state) given: y, every
// final state tensor, dx, every dL/d(initial state) tensor and every parameter gradient.
template <typename Scalar>
std::vector<Matrix<Scalar>> train_step(Layer<Scalar>& layer, const Sequence<Scalar>& x, const State<Scalar>& initial,
                                       const Matrix<Scalar>& dy, const State<Scalar>& d_final) {
    layer.zero_grad();
    State<Scalar> state = initial;
    Context<Scalar> ctx;
    const Sequence<Scalar> y = layer.forward(x, &state, &ctx);
    State<Scalar> d_initial;
    const Sequence<Scalar> dx = layer.backward(Sequence<Scalar>(dy, x.batch, x.steps), ctx, &d_final, &d_initial);
    std::vector<Matrix<Scalar>> out{y.data, dx.data};
    for (const Matrix<Scalar>* t : state_tensors(state)) out.push_back(*t);
    for (const Matrix<Scalar>* t : state_tensors(d_initial)) out.push_back(*t);
    for (const auto& p : layer.parameters()) out.push_back(p.param->grad);
    return out;
}

// The padding's values are never read: NaN there gives the same bits, forward and
// backward, as zeros there.
template <typename Scalar>
void expect_padding_is_never_read(Layer<Scalar>& layer, const Sequence<Scalar>& x, const State<Scalar>& initial) {
    Rng rng(9);
    const Matrix<Scalar> dy = random_matrix<Scalar>(x.data.rows(), layer.output_size(), rng);
    State<Scalar> d_final = layer.initial_state(x.batch);
    for (Matrix<Scalar>* t : state_tensors(d_final)) *t = random_matrix<Scalar>(t->rows(), t->cols(), rng);
    Sequence<Scalar> zeros = x, nans = x;
    for (Index b = 0; b < x.batch; ++b) {
        zeros.sequence(b).bottomRows(x.steps - x.length(b)).setZero();
        nans.sequence(b).bottomRows(x.steps - x.length(b)).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    }
    const auto expected = train_step(layer, zeros, initial, dy, d_final);
    const auto got = train_step(layer, nans, initial, dy, d_final);
    ASSERT_EQ(got.size(), expected.size());
    for (std::size_t k = 0; k < got.size(); ++k) EXPECT_EQ(got[k], expected[k]) << "tensor " << k;
}

class PaddedMinRNN : public ::testing::TestWithParam<Config> {};

template <typename Scalar>
void check_padded_batch_matches_each_alone(const Config& c) {
    Rng rng(51);
    auto layer = make_layer<Scalar>(c, rng);
    const Sequence<Scalar> x = padded_batch<Scalar>(kLengths, 13, 5, rng);
    for (const bool with_state : {false, true}) {
        SCOPED_TRACE(with_state ? "from a random state" : "from zeros");
        const State<Scalar> initial = with_state ? positive_state(*layer, 4, rng) : State<Scalar>{};
        expect_padded_batch_matches_each_alone<Scalar>(*layer, x, initial, batch_tolerance<Scalar>());
    }
}

}  // namespace

// The forced splits run on 3 threads, so that the time split cuts sequences of their own
// lengths (1, 5, 8 and 13 steps) into pieces and the channel split shares them out.
TEST_P(PaddedMinRNN, PaddedBatchMatchesEachSequenceAloneDouble) {
    ThreadGuard guard;
    set_num_threads(3);
    check_padded_batch_matches_each_alone<double>(GetParam());
}

TEST_P(PaddedMinRNN, PaddedBatchMatchesEachSequenceAloneFloat) {
    ThreadGuard guard;
    set_num_threads(3);
    check_padded_batch_matches_each_alone<float>(GetParam());
}

TEST_P(PaddedMinRNN, PaddingIsNeverRead) {
    ThreadGuard guard;
    set_num_threads(3);
    Rng rng(52);
    auto layer = make_layer<double>(GetParam(), rng);
    const Sequence<double> x = padded_batch<double>(kLengths, 13, 5, rng);
    expect_padding_is_never_read<double>(*layer, x, positive_state(*layer, 4, rng));
}

TEST_P(PaddedMinRNN, GradientsMatchFiniteDifferencesWithLengths) {
    ThreadGuard guard;
    set_num_threads(3);
    Rng rng(53);
    auto layer = make_layer<double>(GetParam(), rng);
    const Sequence<double> x = padded_batch<double>(kLengths, 13, 5, rng);
    seqnn::testing::GradientChecker checker(*layer);
    seqnn::testing::expect_gradients_match(checker.check(x, positive_state(*layer, 4, rng)), 1e-6);
}

// Long enough that the gates, the scans and the GEMMs split across threads: one thread and
// two give the same outputs, states and gradients, with lengths of every size.
TEST_P(PaddedMinRNN, ThreadedEqualsSingleThreaded) {
    ThreadGuard guard;
    Rng rng(55);
    auto layer = make_layer<double>(GetParam(), rng);
    const Sequence<double> x = padded_batch<double>({1000, 1, 999, 500, 37}, 1000, 5, rng);
    const State<double> initial = positive_state(*layer, 5, rng);
    const Matrix<double> dy = random_matrix<double>(x.data.rows(), layer->output_size(), rng);
    State<double> d_final = layer->initial_state(5);
    d_final.tensors[0] = random_matrix<double>(d_final.tensors[0].rows(), d_final.tensors[0].cols(), rng);
    set_num_threads(1);
    const auto one = train_step(*layer, x, initial, dy, d_final);
    set_num_threads(2);
    const auto two = train_step(*layer, x, initial, dy, d_final);
    ASSERT_EQ(one.size(), two.size());
    for (std::size_t k = 0; k < one.size(); ++k) EXPECT_LT(relative_error(two[k], one[k]), 1e-10) << "tensor " << k;
}

// Unidirectional only: a reverse direction starts at each sequence's end, so a chunk's
// reverse state would have to come from the chunks after it.
TEST_P(PaddedMinRNN, PaddedChunksMatchTheWholeStream) {
    const Config c = GetParam();
    if (c.bidirectional) GTEST_SKIP() << "a bidirectional layer runs whole sequences only";
    ThreadGuard guard;
    set_num_threads(3);
    Rng rng(54);
    auto layer = make_layer<double>(c, rng);
    const Sequence<double> x = padded_batch<double>({13, 6, 9, 4}, 13, 5, rng);
    const State<double> initial = positive_state(*layer, 4, rng);
    for (Index T1 : {1, 3}) {
        SCOPED_TRACE("first chunk of " + std::to_string(T1) + " steps");
        expect_padded_chunks_match_whole<double>(*layer, x, initial, T1, 1e-12);
    }
    auto layer_f = make_layer<float>(c, rng);
    const Sequence<float> xf = padded_batch<float>({13, 6, 9, 4}, 13, 5, rng);
    expect_padded_chunks_match_whole<float>(*layer_f, xf, positive_state(*layer_f, 4, rng), 3, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(EveryModeAndSplit, PaddedMinRNN, ::testing::ValuesIn(every_config()), config_name);

// ---------------------------------------------------------------------------------
// Bidirectional layers.

namespace {

// Each sequence's real rows in reverse order.
template <typename Scalar>
Matrix<Scalar> reversed_rows(const Matrix<Scalar>& m) {
    return m.colwise().reverse();
}

template <typename Scalar>
void copy_linear(Linear<Scalar>& to, Linear<Scalar>& from) {
    to.weight.value = from.weight.value;
    if (from.has_bias()) to.bias.value = from.bias.value;
}

// One direction of `bi` as a unidirectional layer of the same options: its projection
// copied in, its h read from a training forward's context (whether or not it projects).
template <typename Scalar>
Matrix<Scalar> one_direction(const Config& c, MinRNN<Scalar>& bi, bool reverse, const Matrix<Scalar>& x,
                             const Matrix<Scalar>& h0, Matrix<Scalar>& h_final) {
    Rng rng(1);
    Config uni = c;
    uni.bidirectional = false;
    auto layer = make_layer<Scalar>(uni, rng);
    copy_linear(layer->in_projection(), reverse ? bi.reverse_in_projection() : bi.in_projection());
    State<Scalar> state = layer->initial_state(1);
    state.tensors[0] = h0;
    Context<Scalar> ctx;
    layer->forward(Sequence<Scalar>(reverse ? reversed_rows(x) : x, 1, x.rows()), &state, &ctx);
    h_final = state.tensors[0];
    const Matrix<Scalar>& h = saved_for_backward<typename MinRNN<Scalar>::Saved>(ctx).h;  // (L, E)
    return reverse ? reversed_rows(h) : h;
}

template <typename Scalar>
void check_bidirectional_is_two_directions(const Config& c) {
    ThreadGuard guard;
    set_num_threads(3);
    Rng rng(61);
    auto bi = make_layer<Scalar>(c, rng);
    const Index B = 4, T = 13, E = c.hidden;
    const Sequence<Scalar> x = padded_batch<Scalar>(kLengths, T, 5, rng);
    State<Scalar> state = positive_state(*bi, B, rng);
    const Matrix<Scalar> h0 = state.tensors[0];  // (2B, E): forward rows, then reverse rows
    const Sequence<Scalar> y = bi->forward(x, &state);
    ASSERT_EQ(y.features(), bi->output_size());
    const double tol = batch_tolerance<Scalar>();
    for (Index b = 0; b < B; ++b) {
        const Index L = x.length(b);
        const Matrix<Scalar> xb = x.sequence(b).topRows(L);
        Matrix<Scalar> forward_final, reverse_final;
        Matrix<Scalar> hidden(L, 2 * E);  // [h | h^r], both in time order
        hidden.leftCols(E) = one_direction<Scalar>(c, *bi, false, xb, h0.row(b), forward_final);
        hidden.rightCols(E) = one_direction<Scalar>(c, *bi, true, xb, h0.row(B + b), reverse_final);
        Matrix<Scalar> expected = hidden;
        if (bi->projects()) {
            Linear<Scalar>& out = bi->out_projection();
            expected = out.forward(hidden);  // (L, 2E) x (2E, D)
        }
        EXPECT_LT(relative_error(y.sequence(b).topRows(L), expected), tol) << "sequence " << b;
        EXPECT_TRUE(y.sequence(b).bottomRows(T - L).isZero(0)) << "sequence " << b;
        EXPECT_LT(relative_error(state.tensors[0].row(b), forward_final), tol) << "forward final state " << b;
        EXPECT_LT(relative_error(state.tensors[0].row(B + b), reverse_final), tol) << "reverse final state " << b;
    }
}

class BidirectionalMinRNN : public ::testing::TestWithParam<Config> {};

std::vector<Config> bidirectional_configs() {
    std::vector<Config> out;
    for (const Config& c : every_config())
        if (c.bidirectional) out.push_back(c);
    return out;
}

}  // namespace

// The reverse direction is a unidirectional layer with the reverse parameters run on each
// sequence reversed (from its own end, with lengths); the output concatenates the two
// directions' h, projected to D when the layer projects.
TEST_P(BidirectionalMinRNN, IsTwoUnidirectionalLayersTheSecondOnTheReversedSequence) {
    check_bidirectional_is_two_directions<double>(GetParam());
    check_bidirectional_is_two_directions<float>(GetParam());
}

INSTANTIATE_TEST_SUITE_P(EveryModeAndSplit, BidirectionalMinRNN, ::testing::ValuesIn(bidirectional_configs()),
                         config_name);

TEST(BidirectionalMinRNNShape, NamesSizesAndStateOfBothDirections) {
    Rng rng(62);
    MinGRU<float> projecting({.input_size = 5, .hidden_size = 7, .bias = true, .bidirectional = true}, rng);
    std::vector<std::string> names;
    for (const auto& p : projecting.parameters()) names.push_back(p.name);
    EXPECT_EQ(names, (std::vector<std::string>{"to_hidden_and_gate.weight", "to_hidden_and_gate.bias",
                                               "reverse.to_hidden_and_gate.weight", "reverse.to_hidden_and_gate.bias",
                                               "to_out.weight", "to_out.bias"}));
    const auto params = projecting.parameters();
    EXPECT_EQ(params[2].param->shape, (std::vector<Index>{14, 5}));
    EXPECT_EQ(params[4].param->shape, (std::vector<Index>{5, 14}));  // (D, 2E): columns [forward | reverse]
    EXPECT_EQ(projecting.output_size(), 5);
    EXPECT_EQ(projecting.hidden_size(), 7);
    EXPECT_EQ(projecting.signature(), "MinGRU(5 -> 2x7 -> 5)");
    EXPECT_EQ(projecting.initial_state(3).tensors[0].rows(), 6);  // (2B, E): forward rows, then reverse rows

    MinLSTM<float> plain({.input_size = 5, .bidirectional = true}, rng);
    names.clear();
    for (const auto& p : plain.parameters()) names.push_back(p.name);
    EXPECT_EQ(names, (std::vector<std::string>{"to_hidden_and_f_i_gate.weight", "reverse.to_hidden_and_f_i_gate.weight"}));
    EXPECT_FALSE(plain.projects());
    EXPECT_EQ(plain.output_size(), 10);  // both directions' h, like a bidirectional nn.GRU
    EXPECT_EQ(plain.signature(), "MinLSTM(5 -> 2x5)");
    Rng data(63);
    EXPECT_EQ(plain.forward(seqnn::testing::random_sequence<float>(2, 3, 5, data)).features(), 10);

    // A unidirectional layer keeps its names, so existing checkpoints load.
    MinGRU<float> uni({.input_size = 5, .hidden_size = 7}, rng);
    names.clear();
    for (const auto& p : uni.parameters()) names.push_back(p.name);
    EXPECT_EQ(names, (std::vector<std::string>{"to_hidden_and_gate.weight", "to_out.weight"}));
}

// step() refuses, naming the layer, whether the state is fresh or came from a forward,
// and so does check_state for a step: a stack refuses before any of its layers has stepped.
TEST(BidirectionalMinRNNShape, StepIsRefused) {
    using seqnn::testing::expect_shape_error;
    Rng rng(64);
    MinGRU<double> layer({.input_size = 5, .bidirectional = true}, rng);
    const Matrix<double> x_t = random_matrix<double>(2, 5, rng);
    Matrix<double> y_t;
    const std::vector<std::string> needles{"MinGRU.step", "cannot stream",
                                           "its reverse direction needs the whole sequence"};
    State<double> fresh;
    expect_shape_error([&] { layer.step(x_t, fresh, y_t); }, needles);
    State<double> state;
    layer.forward(seqnn::testing::random_sequence<double>(2, 4, 5, rng), &state);
    const Matrix<double> before = state.tensors[0];
    expect_shape_error([&] { layer.step(x_t, state, y_t); }, needles);
    EXPECT_EQ(state.tensors[0], before);
    EXPECT_EQ(state.position, 4);
    expect_shape_error([&] { layer.check_state(state, 2, Call::Step); }, needles);
    layer.check_state(state, 2, Call::Forward);  // forward takes it

    Sequential<double> stack;
    stack.emplace<MinLSTM<double>>(MinRNNOptions{.input_size = 5}, rng);
    stack.emplace<MinGRU<double>>(MinRNNOptions{.input_size = 5, .bidirectional = true}, rng);
    State<double> stack_state = stack.initial_state(2);
    expect_shape_error([&] { stack.step(x_t, stack_state, y_t); }, needles);
    EXPECT_TRUE(stack_state.children[0].tensors[0].isZero(0)) << "the first layer stepped";
    EXPECT_EQ(stack_state.children[0].position, 0);
}

// ---------------------------------------------------------------------------------
// The causal depthwise conv.

namespace {

struct ConvConfig {
    Index kernel;
    bool pointwise;
    bool bias;
};

class PaddedCausalConv : public ::testing::TestWithParam<ConvConfig> {};

std::string conv_name(const ::testing::TestParamInfo<ConvConfig>& info) {
    return "K" + std::to_string(info.param.kernel) + (info.param.pointwise ? "_pointwise" : "") +
           (info.param.bias ? "_bias" : "");
}

template <typename Scalar>
CausalDepthwiseConv1d<Scalar> make_conv(const ConvConfig& c, Rng& rng) {
    return CausalDepthwiseConv1d<Scalar>({.channels = 5, .kernel_size = c.kernel, .pointwise = c.pointwise, .bias = c.bias},
                                         rng);
}

// Lengths 1 and 2 are shorter than the window (K-1 = 3 steps for K = 4): the final window
// then starts with the initial window's last rows, as running the sequence alone gives.
const std::vector<Index> kConvLengths{13, 1, 2, 8, 5};

template <typename Scalar>
void check_conv_padded_batch_matches_each_alone(const ConvConfig& c) {
    Rng rng(71);
    auto conv = make_conv<Scalar>(c, rng);
    const Sequence<Scalar> x = padded_batch<Scalar>(kConvLengths, 13, 5, rng);
    for (const bool with_state : {false, true}) {
        SCOPED_TRACE(with_state ? "from a random window" : "from zeros");
        const State<Scalar> initial =
            with_state ? seqnn::testing::random_state<Scalar>(conv, 5, rng) : conv.initial_state(5);
        // The window (B*(K-1), D) is laid out by sequence: rows [b*(K-1), (b+1)*(K-1)) are b's.
        expect_padded_batch_matches_each_alone<Scalar>(conv, x, initial, batch_tolerance<Scalar>(), 3,
                                                       seqnn::testing::StateRows::StreamMajor);
    }
}

}  // namespace

TEST_P(PaddedCausalConv, PaddedBatchMatchesEachSequenceAlone) {
    check_conv_padded_batch_matches_each_alone<double>(GetParam());
    check_conv_padded_batch_matches_each_alone<float>(GetParam());
}

// The final window holds each sequence's own last K-1 real steps, oldest first.
TEST_P(PaddedCausalConv, FinalWindowHoldsEachSequencesLastRealSteps) {
    const ConvConfig c = GetParam();
    Rng rng(72);
    auto conv = make_conv<double>(c, rng);
    const Sequence<double> x = padded_batch<double>(kConvLengths, 13, 5, rng);
    State<double> state = seqnn::testing::random_state<double>(conv, 5, rng);
    const Matrix<double> window = state.tensors[0];
    conv.forward(x, &state);
    const Index W = c.kernel - 1;
    for (Index b = 0; b < x.batch; ++b)
        for (Index j = 0; j < W; ++j) {
            const Index s = x.length(b) - W + j;  // the step this row holds; < 0: the initial window's
            const Matrix<double> expected = s >= 0 ? Matrix<double>(x.data.row(b * 13 + s))
                                                   : Matrix<double>(window.row(b * W + W + s));
            EXPECT_EQ(Matrix<double>(state.tensors[0].row(b * W + j)), expected) << "sequence " << b << ", row " << j;
        }
}

TEST_P(PaddedCausalConv, PaddingIsNeverRead) {
    Rng rng(73);
    auto conv = make_conv<double>(GetParam(), rng);
    const Sequence<double> x = padded_batch<double>(kConvLengths, 13, 5, rng);
    expect_padding_is_never_read<double>(conv, x, seqnn::testing::random_state<double>(conv, 5, rng));
}

TEST_P(PaddedCausalConv, GradientsMatchFiniteDifferencesWithLengths) {
    Rng rng(74);
    auto conv = make_conv<double>(GetParam(), rng);
    const Sequence<double> x = padded_batch<double>(kConvLengths, 13, 5, rng);
    seqnn::testing::GradientChecker checker(conv);
    seqnn::testing::expect_gradients_match(checker.check(x, seqnn::testing::random_state<double>(conv, 5, rng)), 1e-6);
}

TEST_P(PaddedCausalConv, PaddedChunksMatchTheWholeStream) {
    Rng rng(75);
    auto conv = make_conv<double>(GetParam(), rng);
    const Sequence<double> x = padded_batch<double>({13, 6, 9, 4, 7}, 13, 5, rng);
    const State<double> initial = seqnn::testing::random_state<double>(conv, 5, rng);
    for (Index T1 : {1, 3}) {
        SCOPED_TRACE("first chunk of " + std::to_string(T1) + " steps");
        expect_padded_chunks_match_whole<double>(conv, x, initial, T1, 1e-13);
    }
}

INSTANTIATE_TEST_SUITE_P(Kernels, PaddedCausalConv,
                         ::testing::Values(ConvConfig{4, true, true}, ConvConfig{4, false, true},
                                           ConvConfig{3, true, false}, ConvConfig{1, false, true}),
                         conv_name);
