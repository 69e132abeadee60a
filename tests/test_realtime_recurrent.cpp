// The real-time twins of Linear, GRU, LSTM and RNN (realtime/linear.hpp, gru.hpp, lstm.hpp,
// rnn.hpp): per sample they give what the layer's forward gives for one stream, per block
// what per sample gives for any split of the stream, they hand a stream to the layer's step
// and take one back, and once made they allocate nothing.
//
// This file counts heap allocations: operator new (allocation_counter.hpp) and Eigen's own
// malloc, whose runtime check is switched on and its failed assertions counted.
#include "eigen_malloc_counter.hpp"

#include "testing.hpp"

#include <seqnn/seqnn.hpp>
#include <seqnn/realtime/gru.hpp>
#include <seqnn/realtime/linear.hpp>
#include <seqnn/realtime/lstm.hpp>
#include <seqnn/realtime/rnn.hpp>
#include "layer_instances.hpp"

#include <memory>
#include <string>
#include <vector>

#include "allocation_counter.hpp"

using namespace seqnn;
using seqnn::testing::expect_shape_error;
using seqnn::testing::random_matrix;
using seqnn::testing::relative_error;

namespace {

enum class Cell { GRU, LSTM, RNNTanh, RNNReLU };

// One recurrent layer's kind and options.
struct Case {
    Cell cell = Cell::GRU;
    Index input = 3;
    Index hidden = 7;
    Index layers = 1;
    bool bias = true;
    Index proj = 0;  // the LSTM's proj_size

    RecurrentOptions options() const {
        RecurrentOptions o;
        o.input_size = input;
        o.hidden_size = hidden;
        o.num_layers = layers;
        o.bias = bias;
        o.proj_size = proj;
        if (cell == Cell::RNNReLU) o.nonlinearity = Activation::ReLU;
        return o;
    }
    std::string describe() const {
        static const char* names[] = {"GRU", "LSTM", "RNN(tanh)", "RNN(relu)"};
        return std::string(names[static_cast<int>(cell)]) + " I=" + std::to_string(input) + " H=" +
               std::to_string(hidden) + " L=" + std::to_string(layers) + (bias ? " bias" : " no bias") +
               (proj > 0 ? " proj=" + std::to_string(proj) : "");
    }
};

// Every cell at odd sizes: one input feature, a few, stacked (small stacks run time step by
// time step in process_block, larger ones layer by layer), without bias, and the LSTM's
// projection.
std::vector<Case> all_cases() {
    std::vector<Case> cases;
    for (Cell cell : {Cell::GRU, Cell::LSTM, Cell::RNNTanh, Cell::RNNReLU}) {
        cases.push_back({cell, 1, 7, 1, true, 0});
        cases.push_back({cell, 3, 13, 1, false, 0});
        cases.push_back({cell, 3, 7, 2, true, 0});
        cases.push_back({cell, 1, 13, 3, false, 0});
        cases.push_back({cell, 5, 20, 2, true, 0});
        cases.push_back({cell, 13, 5, 2, true, 0});
        cases.push_back({cell, 2, 4, 1, true, 0});  // one half packet of doubles with AVX-512 (SizedStack)
    }
    cases.push_back({Cell::LSTM, 3, 13, 1, true, 5});
    cases.push_back({Cell::LSTM, 1, 7, 2, false, 3});
    // Wide layers: process_block projects a piece as one product (layer 1 here, both layers
    // of the projected LSTM), and steps a stack layer by layer.
    cases.push_back({Cell::GRU, 3, 64, 2, true, 0});
    cases.push_back({Cell::LSTM, 17, 64, 1, false, 0});
    cases.push_back({Cell::RNNReLU, 16, 65, 2, true, 0});
    cases.push_back({Cell::LSTM, 16, 64, 2, true, 20});
    return cases;
}

template <typename Scalar>
std::unique_ptr<RecurrentStack<Scalar>> make_layer(const Case& c, Rng& rng) {
    switch (c.cell) {
        case Cell::GRU: return std::make_unique<GRU<Scalar>>(c.options(), rng);
        case Cell::LSTM: return std::make_unique<LSTM<Scalar>>(c.options(), rng);
        default: return std::make_unique<RNN<Scalar>>(c.options(), rng);
    }
}

// Calls f(twin) with the twin of `layer`, made with max_block.
template <typename Scalar, typename F>
void with_twin(const Case& c, const RecurrentStack<Scalar>& layer, Index max_block, F&& f) {
    switch (c.cell) {
        case Cell::GRU: {
            realtime::GRU<Scalar> twin(static_cast<const GRU<Scalar>&>(layer), max_block);
            f(twin);
            break;
        }
        case Cell::LSTM: {
            realtime::LSTM<Scalar> twin(static_cast<const LSTM<Scalar>&>(layer), max_block);
            f(twin);
            break;
        }
        default: {
            realtime::RNN<Scalar> twin(static_cast<const RNN<Scalar>&>(layer), max_block);
            f(twin);
        }
    }
}

// x (T, I) sample by sample through the twin.
template <typename Scalar, typename Twin>
Matrix<Scalar> run_samples(Twin& twin, const Matrix<Scalar>& x) {
    Matrix<Scalar> y(x.rows(), twin.output_size());
    for (Index t = 0; t < x.rows(); ++t) twin.process_sample(x.row(t).data(), y.row(t).data());
    return y;
}

// Random block sizes that add up to T: zeros, ones, and sizes up to over twice max_block.
std::vector<Index> random_split(Index T, Index max_block, Rng& rng) {
    std::uniform_int_distribution<int> pick(0, 5);
    std::uniform_int_distribution<Index> size(2, 2 * max_block + 3);
    std::vector<Index> sizes;
    Index left = T;
    while (left > 0) {
        const int kind = pick(rng);
        const Index n = kind == 0 ? 0 : kind == 1 ? 1 : std::min(left, size(rng));
        sizes.push_back(n);
        left -= n;
    }
    return sizes;
}

// x (T, I) block by block through the twin, in the given block sizes.
template <typename Scalar, typename Twin>
Matrix<Scalar> run_blocks(Twin& twin, const Matrix<Scalar>& x, const std::vector<Index>& sizes) {
    Matrix<Scalar> y(x.rows(), twin.output_size());
    Index t = 0;
    for (Index n : sizes) {
        twin.process_block(x.data() + t * x.cols(), n, y.data() + t * y.cols());
        t += n;
    }
    return y;
}

// The layer's state of one stream, random.
template <typename Scalar>
State<Scalar> random_state(const RecurrentStack<Scalar>& layer, Rng& rng) {
    return seqnn::testing::random_state<Scalar>(layer, 1, rng);
}

// The Scalar of a twin type.
template <template <typename> class Twin, typename Scalar>
Scalar scalar_of(const Twin<Scalar>&);

double max_state_error(const State<double>& a, const State<double>& b) {
    EXPECT_EQ(a.tensors.size(), b.tensors.size());
    double e = 0;
    for (std::size_t i = 0; i < std::min(a.tensors.size(), b.tensors.size()); ++i)
        e = std::max(e, relative_error(a.tensors[i], b.tensors[i]));
    return e;
}

}  // namespace

TEST(RealtimeRecurrent, SampleMatchesForward) {
    for (const Case& c : all_cases()) {
        SCOPED_TRACE(c.describe());
        Rng rng(11);
        const auto layer = make_layer<double>(c, rng);
        const Index T = 37;
        const Matrix<double> x = random_matrix<double>(T, c.input, rng);
        State<double> start = random_state(*layer, rng);
        with_twin<double>(c, *layer, 8, [&](auto& twin) {
            EXPECT_EQ(twin.input_size(), c.input);
            EXPECT_EQ(twin.output_size(), layer->output_size());
            twin.set_state(start);
            const Matrix<double> y = run_samples(twin, x);
            State<double> state = start;
            const Sequence<double> expected = layer->forward(Sequence<double>(x, 1, T), &state);
            EXPECT_LT(relative_error(y, expected.data), 1e-12);
            EXPECT_LT(max_state_error(twin.state(), state), 1e-12);
            // From zeros after reset, as a forward without a state.
            twin.reset();
            EXPECT_LT(relative_error(run_samples(twin, x), layer->forward(Sequence<double>(x, 1, T)).data), 1e-12);
        });
    }
}

TEST(RealtimeRecurrent, BlocksMatchSamplesForAnySplit) {
    for (const Case& c : all_cases()) {
        SCOPED_TRACE(c.describe());
        Rng rng(12);
        const auto layer = make_layer<double>(c, rng);
        const Index T = 61, max_block = 6;
        const Matrix<double> x = random_matrix<double>(T, c.input, rng);
        const State<double> start = random_state(*layer, rng);
        with_twin<double>(c, *layer, max_block, [&](auto& twin) {
            EXPECT_EQ(twin.max_block(), max_block);
            twin.set_state(start);
            const Matrix<double> expected = run_samples(twin, x);
            const State<double> end = twin.state();
            for (int trial = 0; trial < 4; ++trial) {
                const std::vector<Index> sizes = random_split(T, max_block, rng);
                twin.set_state(start);
                EXPECT_LT(relative_error(run_blocks(twin, x, sizes), expected), 1e-14) << "trial " << trial;
                EXPECT_LT(max_state_error(twin.state(), end), 1e-14);
            }
            // The whole stream as one block (many pieces), and the Eigen overload.
            twin.set_state(start);
            EXPECT_LT(relative_error(run_blocks(twin, x, {T}), expected), 1e-14);
            twin.set_state(start);
            Matrix<double> y(T, twin.output_size());
            twin.process_block(x, y);
            EXPECT_LT(relative_error(y, expected), 1e-14);
            // A strided view (every other row of a taller matrix) runs sample by sample.
            Matrix<double> tall = Matrix<double>::Zero(2 * T, c.input), out = Matrix<double>::Zero(2 * T, y.cols());
            for (Index t = 0; t < T; ++t) tall.row(2 * t) = x.row(t);
            using Rows = Eigen::Map<Matrix<double>, 0, Eigen::OuterStride<>>;
            twin.set_state(start);
            twin.process_block(Rows(tall.data(), T, c.input, Eigen::OuterStride<>(2 * c.input)),
                               Rows(out.data(), T, y.cols(), Eigen::OuterStride<>(2 * y.cols())));
            for (Index t = 0; t < T; ++t) EXPECT_LT(relative_error(out.row(2 * t), expected.row(t)), 1e-14);
        });
    }
}

TEST(RealtimeRecurrent, StreamMovesBetweenStepAndTwin) {
    for (const Case& c : all_cases()) {
        SCOPED_TRACE(c.describe());
        Rng rng(13);
        const auto layer = make_layer<double>(c, rng);
        const Index T = 24;
        const Matrix<double> x = random_matrix<double>(T, c.input, rng);
        State<double> start = random_state(*layer, rng);
        State<double> whole = start;
        const Matrix<double> expected = layer->forward(Sequence<double>(x, 1, T), &whole).data;
        with_twin<double>(c, *layer, 5, [&](auto& twin) {
            // The twin's state has the layer's shapes for one stream.
            const State<double> zero = twin.state();
            const State<double> made = layer->initial_state(1);
            ASSERT_EQ(zero.tensors.size(), made.tensors.size());
            for (std::size_t i = 0; i < made.tensors.size(); ++i) {
                EXPECT_EQ(zero.tensors[i].rows(), made.tensors[i].rows());
                EXPECT_EQ(zero.tensors[i].cols(), made.tensors[i].cols());
                EXPECT_TRUE(zero.tensors[i].isZero(0));
            }
            EXPECT_EQ(zero.batch, 1);
            // Steps 0..9 in layer.step, 10..19 in the twin (a block), 20.. in layer.step again.
            State<double> state = start;
            Matrix<double> y(T, layer->output_size()), y_t;
            for (Index t = 0; t < 10; ++t) {
                layer->step(x.row(t), state, y_t);
                y.row(t) = y_t;
            }
            twin.set_state(state);
            twin.process_block(x.data() + 10 * c.input, 10, y.data() + 10 * y.cols());
            state = twin.state();
            EXPECT_EQ(state.position, start.position + 20);
            for (Index t = 20; t < T; ++t) {
                layer->step(x.row(t), state, y_t);
                y.row(t) = y_t;
            }
            EXPECT_LT(relative_error(y, expected), 1e-12);
            EXPECT_LT(max_state_error(state, whole), 1e-12);
        });
    }
}

TEST(RealtimeRecurrent, FloatAgreesWithDouble) {
    for (const Case& c : all_cases()) {
        SCOPED_TRACE(c.describe());
        Rng rng(14);
        const auto reference = make_layer<double>(c, rng);
        const auto layer = make_layer<float>(c, rng);
        ParameterList<double> from = reference->parameters();
        ParameterList<float> to = layer->parameters();
        ASSERT_EQ(from.size(), to.size());
        for (std::size_t i = 0; i < from.size(); ++i) to[i].param->value = from[i].param->value.cast<float>();
        const Index T = 64;
        const Matrix<double> x = random_matrix<double>(T, c.input, rng);
        const Matrix<double> expected = reference->forward(Sequence<double>(x, 1, T)).data;
        with_twin<float>(c, *layer, 16, [&](auto& twin) {
            const Matrix<float> xf = x.cast<float>();
            EXPECT_LT(relative_error(run_samples(twin, xf), expected), seqnn::testing::float_tolerance(T * c.hidden));
            twin.reset();
            EXPECT_LT(relative_error(run_blocks(twin, xf, {T}), expected), seqnn::testing::float_tolerance(T * c.hidden));
        });
    }
}

TEST(RealtimeRecurrent, InputAndOutputMayShareMemory) {
    // process_sample reads x before it writes y; process_block may run in place when the
    // output is no wider than the input.
    for (Cell cell : {Cell::GRU, Cell::LSTM, Cell::RNNTanh}) {
        const Case c{cell, 7, 7, 2, true, 0};
        SCOPED_TRACE(c.describe());
        Rng rng(15);
        const auto layer = make_layer<double>(c, rng);
        const Index T = 19;
        const Matrix<double> x = random_matrix<double>(T, c.input, rng);
        with_twin<double>(c, *layer, 4, [&](auto& twin) {
            const Matrix<double> expected = run_samples(twin, x);
            twin.reset();
            Matrix<double> buffer = x;
            for (Index t = 0; t < T; ++t) twin.process_sample(buffer.row(t).data(), buffer.row(t).data());
            EXPECT_EQ(buffer, expected);
            twin.reset();
            buffer = x;
            twin.process_block(buffer.data(), T, buffer.data());
            EXPECT_EQ(buffer, expected);
        });
    }
}

TEST(RealtimeLinear, MatchesForwardInBothProductForms) {
    // Few inputs (columns form), few outputs (rows form), square, odd sizes, with and without bias.
    const Index shapes[][2] = {{1, 7}, {3, 20}, {13, 1}, {29, 2}, {16, 16}, {7, 13}, {40, 3}, {37, 1}, {64, 2}};
    for (const auto& shape : shapes)
        for (bool bias : {true, false}) {
            SCOPED_TRACE("in=" + std::to_string(shape[0]) + " out=" + std::to_string(shape[1]) +
                         (bias ? " bias" : ""));
            Rng rng(16);
            const Linear<double> layer(shape[0], shape[1], bias, rng);
            realtime::Linear<double> twin(layer, 4);
            EXPECT_EQ(twin.input_size(), shape[0]);
            EXPECT_EQ(twin.output_size(), shape[1]);
            const Index T = 11;
            const Matrix<double> x = random_matrix<double>(T, shape[0], rng);
            const Matrix<double> expected = layer.forward(x);
            EXPECT_LT(relative_error(run_samples(twin, x), expected), 1e-14);
            EXPECT_LT(relative_error(run_blocks(twin, x, {0, 1, 7, 3}), expected), 1e-14);
            Matrix<double> y(T, shape[1]);
            twin.process_block(x, y);
            EXPECT_LT(relative_error(y, expected), 1e-14);
            // Stateless: its state is empty, for one stream.
            EXPECT_TRUE(twin.state().tensors.empty());
            twin.set_state(twin.state());
            twin.set_state(State<double>{});
        }
}

TEST(RealtimeLinear, FloatAgreesWithDouble) {
    for (Index in : {1, 24})
        for (Index out : {1, 24}) {
            Rng rng(17);
            const Linear<double> reference(in, out, true, rng);
            Linear<float> layer(in, out, true, rng);
            layer.weight.value = reference.weight.value.cast<float>();
            layer.bias.value = reference.bias.value.cast<float>();
            realtime::Linear<float> twin(layer);
            const Matrix<double> x = random_matrix<double>(9, in, rng);
            EXPECT_LT(relative_error(run_samples(twin, Matrix<float>(x.cast<float>())), reference.forward(x)),
                      seqnn::testing::float_tolerance(in));
        }
}

TEST(RealtimeAllocation, TwinsAllocateNothingAfterConstruction) {
    start_counting();  // the counter sees both kinds of allocation
    auto* v = new std::vector<int>(100);
    Matrix<float> m(40, 40);
    EXPECT_EQ(stop_counting(), 3);
    delete v;
    Rng rng(18);
    const Index T = 300, max_block = 64;
    const auto count = [&](auto& twin) {
        using Scalar = decltype(scalar_of(twin));
        const Matrix<Scalar> x = random_matrix<Scalar>(T, twin.input_size(), rng);
        Matrix<Scalar> y(T, twin.output_size());
        start_counting();
        for (Index t = 0; t < 50; ++t) twin.process_sample(x.row(t).data(), y.row(t).data());
        twin.process_block(x.data(), T, y.data());  // several pieces
        twin.process_block(x.data(), 0, y.data());
        twin.process_block(x.data(), 1, y.data());
        twin.process_block(x, y);  // the checked overload, shapes right
        twin.reset();
        return stop_counting();
    };
    for (const Case& c : {Case{Cell::GRU, 1, 16, 1, true, 0}, Case{Cell::GRU, 3, 13, 2, false, 0},
                          Case{Cell::LSTM, 1, 32, 2, true, 0}, Case{Cell::LSTM, 3, 13, 2, true, 5},
                          Case{Cell::RNNTanh, 2, 9, 3, true, 0}, Case{Cell::RNNReLU, 1, 8, 1, false, 0}}) {
        SCOPED_TRACE(c.describe());
        const auto single = make_layer<float>(c, rng);
        with_twin<float>(c, *single, max_block, [&](auto& twin) { EXPECT_EQ(count(twin), 0); });
        const auto twice = make_layer<double>(c, rng);
        with_twin<double>(c, *twice, max_block, [&](auto& twin) { EXPECT_EQ(count(twin), 0); });
    }
    for (Index out : {1, 20}) {
        const Linear<float> layer(16, out, true, rng);
        realtime::Linear<float> twin(layer, max_block);
        EXPECT_EQ(count(twin), 0);
    }
}

TEST(RealtimeErrors, SetUpNamesTheTwinAndTheShapes) {
    Rng rng(19);
    RecurrentOptions both{.input_size = 3, .hidden_size = 5};
    both.bidirectional = true;
    const GRU<double> gru(both, rng);
    expect_shape_error([&] { realtime::GRU<double> twin(gru); }, {"realtime::GRU", "bidirectional", "3 -> 5"});
    const LSTM<double> lstm(both, rng);
    expect_shape_error([&] { realtime::LSTM<double> twin(lstm); }, {"realtime::LSTM", "bidirectional"});
    const RNN<double> rnn(both, rng);
    expect_shape_error([&] { realtime::RNN<double> twin(rnn); }, {"realtime::RNN", "bidirectional"});

    const GRU<double> one({.input_size = 3, .hidden_size = 5, .num_layers = 2}, rng);
    expect_shape_error([&] { realtime::GRU<double> twin(one, 0); }, {"realtime::GRU", "max_block", "0"});
    const Linear<double> linear(4, 2, true, rng);
    expect_shape_error([&] { realtime::Linear<double> twin(linear, -1); }, {"realtime::Linear", "max_block"});

    // A weight whose shape does not match the layer's options (a checkpoint loaded by hand).
    GRU<double> broken({.input_size = 3, .hidden_size = 5}, rng);
    broken.weights(0).weight_hh.value.resize(15, 4);
    expect_shape_error([&] { realtime::GRU<double> twin(broken); }, {"realtime::GRU", "weight_hh_l0", "(15, 4)",
                                                                     "(15, 5)"});

    // The Eigen overload checks x and y.
    realtime::GRU<double> twin(one);
    Matrix<double> x(4, 2), y(4, 5);
    expect_shape_error([&] { twin.process_block(x, y); }, {"realtime::GRU.process_block", "(4, 2)", "(steps, 3)"});
    Matrix<double> x3(4, 3), y3(3, 5);
    expect_shape_error([&] { twin.process_block(x3, y3); }, {"realtime::GRU.process_block", "(3, 5)", "(4, 5)"});
    realtime::Linear<double> head(linear);
    expect_shape_error([&] { head.process_block(x3, y3); }, {"realtime::Linear.process_block", "(4, 3)"});

    // set_state checks the state's tensors.
    State<double> wrong = one.initial_state(1);
    wrong.tensors[0].resize(3, 5);
    expect_shape_error([&] { twin.set_state(wrong); }, {"realtime::GRU.set_state", "(3, 5)", "(2, 5)"});
    expect_shape_error([&] { twin.set_state(one.initial_state(2)); }, {"realtime::GRU.set_state", "B=2"});
    realtime::LSTM<double> lstm_twin(LSTM<double>({.input_size = 3, .hidden_size = 5}, rng));
    expect_shape_error([&] { lstm_twin.set_state(one.initial_state(1)); }, {"realtime::LSTM.set_state", "1 tensors",
                                                                           "h and c"});
    State<double> with_tensor;
    with_tensor.tensors.push_back(Matrix<double>(1, 2));
    expect_shape_error([&] { head.set_state(with_tensor); }, {"realtime::Linear.set_state", "1 tensors"});
}
