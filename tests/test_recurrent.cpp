// RNN (tanh, relu), LSTM and GRU: PyTorch semantics against a plain loop
// reference in double, streaming, chunking, gradients and bad input.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>
#include "layer_instances.hpp"

#include <memory>

using namespace seqnn;
using seqnn::testing::random_sequence;
using seqnn::testing::random_state;
using seqnn::testing::relative_error;

namespace {

enum class Cell { RnnTanh, RnnRelu, Lstm, Gru };

std::string cell_name(Cell c) {
    switch (c) {
        case Cell::RnnTanh: return "RnnTanh";
        case Cell::RnnRelu: return "RnnRelu";
        case Cell::Lstm: return "Lstm";
        case Cell::Gru: return "Gru";
    }
    return "?";
}

struct Config {
    Cell cell;
    Index layers;
    bool bias;
};

std::string config_name(const ::testing::TestParamInfo<Config>& info) {
    return cell_name(info.param.cell) + "_L" + std::to_string(info.param.layers) + (info.param.bias ? "" : "_nobias");
}

template <typename Scalar>
std::unique_ptr<RecurrentStack<Scalar>> make_layer(const Config& c, Index input, Index hidden, Rng& rng) {
    const RecurrentOptions o{input, hidden, c.layers, c.bias};
    switch (c.cell) {
        case Cell::RnnTanh: return std::make_unique<RNN<Scalar>>(RNNOptions{input, hidden, c.layers, c.bias, Activation::Tanh}, rng);
        case Cell::RnnRelu: return std::make_unique<RNN<Scalar>>(RNNOptions{input, hidden, c.layers, c.bias, Activation::ReLU}, rng);
        case Cell::Lstm: return std::make_unique<LSTM<Scalar>>(o, rng);
        case Cell::Gru: return std::make_unique<GRU<Scalar>>(o, rng);
    }
    return nullptr;
}

double sigm(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// The PyTorch equations with scalar loops, sequence by sequence and step by step.
// Returns y (B*T, H) and fills `final_state` ({h} or {h, c}, each (L*B, H)).
Matrix<double> reference_forward(const Config& c, RecurrentStack<double>& layer, const Sequence<double>& x,
                                 const State<double>& initial, State<double>& final_state) {
    const Index B = x.batch, T = x.steps, H = layer.hidden_size(), L = layer.num_layers();
    const Index G = c.cell == Cell::Lstm ? 4 : c.cell == Cell::Gru ? 3 : 1;
    final_state = initial;
    Matrix<double> input = x.data;
    Matrix<double> out(B * T, H);
    for (Index k = 0; k < L; ++k) {
        const auto& w = layer.weights(k);
        const Index I = input.cols();
        for (Index b = 0; b < B; ++b) {
            std::vector<double> h(H), cst(H);
            for (Index j = 0; j < H; ++j) {
                h[j] = initial.tensors[0](k * B + b, j);
                if (c.cell == Cell::Lstm) cst[j] = initial.tensors[1](k * B + b, j);
            }
            for (Index t = 0; t < T; ++t) {
                std::vector<double> gi(G * H), gh(G * H);
                for (Index r = 0; r < G * H; ++r) {
                    double si = c.bias ? w.bias_ih.value(0, r) : 0.0, sh = c.bias ? w.bias_hh.value(0, r) : 0.0;
                    for (Index q = 0; q < I; ++q) si += w.weight_ih.value(r, q) * input(b * T + t, q);
                    for (Index q = 0; q < H; ++q) sh += w.weight_hh.value(r, q) * h[q];
                    gi[r] = si;
                    gh[r] = sh;
                }
                std::vector<double> hn(H);
                for (Index j = 0; j < H; ++j) {
                    if (c.cell == Cell::RnnTanh) hn[j] = std::tanh(gi[j] + gh[j]);
                    if (c.cell == Cell::RnnRelu) hn[j] = std::max(0.0, gi[j] + gh[j]);
                    if (c.cell == Cell::Lstm) {
                        const double i = sigm(gi[j] + gh[j]), f = sigm(gi[H + j] + gh[H + j]);
                        const double g = std::tanh(gi[2 * H + j] + gh[2 * H + j]), o = sigm(gi[3 * H + j] + gh[3 * H + j]);
                        cst[j] = f * cst[j] + i * g;
                        hn[j] = o * std::tanh(cst[j]);
                    }
                    if (c.cell == Cell::Gru) {
                        const double r = sigm(gi[j] + gh[j]), z = sigm(gi[H + j] + gh[H + j]);
                        const double n = std::tanh(gi[2 * H + j] + r * gh[2 * H + j]);
                        hn[j] = (1 - z) * n + z * h[j];
                    }
                }
                h = hn;
                for (Index j = 0; j < H; ++j) out(b * T + t, j) = h[j];
            }
            for (Index j = 0; j < H; ++j) {
                final_state.tensors[0](k * B + b, j) = h[j];
                if (c.cell == Cell::Lstm) final_state.tensors[1](k * B + b, j) = cst[j];
            }
        }
        input = out;
    }
    return out;
}

class RecurrentLayer : public ::testing::TestWithParam<Config> {};

}  // namespace

TEST_P(RecurrentLayer, MatchesPlainReferenceInDouble) {
    const Config c = GetParam();
    Rng rng(11);
    auto layer = make_layer<double>(c, 5, 7, rng);
    for (Index T : {1, 300}) {
        const Sequence<double> x = random_sequence<double>(3, T, 5, rng);
        const State<double> initial = random_state<double>(*layer, 3, rng);
        State<double> expected_final;
        const Matrix<double> expected = reference_forward(c, *layer, x, initial, expected_final);
        State<double> state = initial;
        const Sequence<double> y = layer->forward(x, &state);
        EXPECT_LT(relative_error(y.data, expected), 1e-12) << "T=" << T;
        for (std::size_t j = 0; j < state.tensors.size(); ++j)
            EXPECT_LT(relative_error(state.tensors[j], expected_final.tensors[j]), 1e-12) << "state " << j << " T=" << T;
    }
}

TEST_P(RecurrentLayer, FloatAgreesWithDouble) {
    const Config c = GetParam();
    Rng rng_d(5), rng_f(5), data_rng(6);
    auto layer_d = make_layer<double>(c, 5, 7, rng_d);
    auto layer_f = make_layer<float>(c, 5, 7, rng_f);  // same draws, rounded to float
    const Sequence<double> x = random_sequence<double>(3, 300, 5, data_rng);
    const Sequence<float> xf(x.data.cast<float>(), x.batch, x.steps);
    const Sequence<double> y = layer_d->forward(x);
    const Sequence<float> yf = layer_f->forward(xf);
    EXPECT_LT(relative_error(yf.data, y.data), 1e-4);
}

TEST_P(RecurrentLayer, StepEqualsForward) {
    const Config c = GetParam();
    Rng rng(12);
    auto layer = make_layer<double>(c, 5, 7, rng);
    const Sequence<double> x = random_sequence<double>(3, 9, 5, rng);
    const State<double> initial = random_state<double>(*layer, 3, rng);
    State<double> whole_state = initial;
    const Sequence<double> whole = layer->forward(x, &whole_state);

    State<double> state = initial;
    Matrix<double> y;
    for (Index t = 0; t < x.steps; ++t) {
        layer->step(Matrix<double>(x.at_step(t)), state, y);
        EXPECT_LT(relative_error(y, Matrix<double>(whole.at_step(t))), 1e-13) << "t=" << t;
    }
    for (std::size_t j = 0; j < state.tensors.size(); ++j)
        EXPECT_LT(relative_error(state.tensors[j], whole_state.tensors[j]), 1e-13);
    EXPECT_EQ(state.position, x.steps);
}

TEST_P(RecurrentLayer, ChunkedEqualsWhole) {
    const Config c = GetParam();
    Rng rng(13);
    auto layer = make_layer<double>(c, 5, 7, rng);
    const Sequence<double> x = random_sequence<double>(3, 300, 5, rng);
    State<double> whole_state;
    const Sequence<double> whole = layer->forward(x, &whole_state);

    // The same stream in two chunks, 123 + 177 steps, the state carried between.
    const Index split = 123;
    Sequence<double> first(3, split, 5), second(3, 300 - split, 5);
    for (Index b = 0; b < 3; ++b) {
        first.sequence(b) = x.sequence(b).topRows(split);
        second.sequence(b) = x.sequence(b).bottomRows(300 - split);
    }
    State<double> state;
    const Sequence<double> y1 = layer->forward(first, &state);
    const Sequence<double> y2 = layer->forward(second, &state);
    for (Index b = 0; b < 3; ++b) {
        EXPECT_LT(relative_error(y1.sequence(b), whole.sequence(b).topRows(split)), 1e-13);
        EXPECT_LT(relative_error(y2.sequence(b), whole.sequence(b).bottomRows(300 - split)), 1e-13);
    }
    for (std::size_t j = 0; j < state.tensors.size(); ++j)
        EXPECT_LT(relative_error(state.tensors[j], whole_state.tensors[j]), 1e-13);
}

TEST_P(RecurrentLayer, GradientsMatchFiniteDifferences) {
    const Config c = GetParam();
    Rng rng(14);
    auto layer = make_layer<double>(c, 5, 7, rng);
    const Sequence<double> x = random_sequence<double>(3, 6, 5, rng);
    const State<double> initial = random_state<double>(*layer, 3, rng);
    seqnn::testing::GradientChecker checker(*layer);
    seqnn::testing::expect_gradients_match(checker.check(x, initial), 1e-6);
}

TEST_P(RecurrentLayer, GradientsFromZeroStateMatchFiniteDifferences) {
    const Config c = GetParam();
    Rng rng(15);
    auto layer = make_layer<double>(c, 5, 7, rng);
    const Sequence<double> x = random_sequence<double>(3, 1, 5, rng);
    seqnn::testing::GradientChecker checker(*layer);
    seqnn::testing::expect_gradients_match(checker.check(x, State<double>{}), 1e-6);
}

TEST_P(RecurrentLayer, ParametersHavePyTorchNamesAndShapes) {
    const Config c = GetParam();
    Rng rng(16);
    auto layer = make_layer<float>(c, 5, 7, rng);
    const Index G = c.cell == Cell::Lstm ? 4 : c.cell == Cell::Gru ? 3 : 1;
    const auto params = layer->parameters();
    ASSERT_EQ(params.size(), static_cast<std::size_t>(c.layers * (c.bias ? 4 : 2)));
    std::size_t i = 0;
    for (Index k = 0; k < c.layers; ++k) {
        const std::string l = "_l" + std::to_string(k);
        EXPECT_EQ(params[i].name, "weight_ih" + l);
        EXPECT_EQ(params[i++].param->shape, (std::vector<Index>{G * 7, k == 0 ? 5 : 7}));
        EXPECT_EQ(params[i].name, "weight_hh" + l);
        EXPECT_EQ(params[i++].param->shape, (std::vector<Index>{G * 7, 7}));
        if (c.bias) {
            EXPECT_EQ(params[i].name, "bias_ih" + l);
            EXPECT_EQ(params[i++].param->shape, (std::vector<Index>{G * 7}));
            EXPECT_EQ(params[i].name, "bias_hh" + l);
            EXPECT_EQ(params[i++].param->shape, (std::vector<Index>{G * 7}));
        }
    }
    // PyTorch's initialisation: U(-1/sqrt(H), 1/sqrt(H)).
    for (const auto& p : params) EXPECT_LE(p.param->value.cwiseAbs().maxCoeff(), 1.0f / std::sqrt(7.0f));
}

INSTANTIATE_TEST_SUITE_P(Cells, RecurrentLayer,
                         ::testing::Values(Config{Cell::RnnTanh, 1, true}, Config{Cell::RnnRelu, 2, true},
                                           Config{Cell::Lstm, 1, true}, Config{Cell::Lstm, 2, false},
                                           Config{Cell::Gru, 1, true}, Config{Cell::Gru, 2, true},
                                           Config{Cell::Gru, 1, false}, Config{Cell::RnnTanh, 3, false}),
                         config_name);

// One options struct serves the three cells; the nonlinearity is the RNN's alone.
TEST(RecurrentOptionsTest, TheNonlinearityIsTheRnnsOption) {
    Rng rng(17);
    const RNN<float> relu({.input_size = 3, .hidden_size = 4, .nonlinearity = Activation::ReLU}, rng);
    EXPECT_EQ(relu.nonlinearity(), Activation::ReLU);
    EXPECT_EQ(relu.kind(), "RNN");
    EXPECT_EQ(GRU<float>({.input_size = 3, .hidden_size = 4}, rng).kind(), "GRU");
    EXPECT_EQ(LSTM<float>({.input_size = 3, .hidden_size = 4}, rng).kind(), "LSTM");
    seqnn::testing::expect_shape_error(
        [&] { LSTM<float>({.input_size = 3, .hidden_size = 4, .nonlinearity = Activation::ReLU}, rng); },
        {"LSTM", "nonlinearity", "relu"});
    seqnn::testing::expect_shape_error(
        [&] { GRU<float>({.input_size = 3, .hidden_size = 4, .nonlinearity = Activation::ReLU}, rng); },
        {"GRU", "nonlinearity"});
    seqnn::testing::expect_shape_error(
        [&] { RNN<float>({.input_size = 3, .hidden_size = 4, .nonlinearity = Activation::GELU}, rng); },
        {"RNN", "tanh or relu"});
}
