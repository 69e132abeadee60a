// Bad input raises seqnn::shape_error (a std::invalid_argument) whose message
// names the layer and both shapes, for every layer behind the common interface.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>
#include "layer_instances.hpp"

#include <functional>
#include <memory>

using namespace seqnn;
using seqnn::testing::expect_shape_error;
using seqnn::testing::random_sequence;

namespace {

struct Maker {
    std::string kind;
    std::function<std::unique_ptr<Layer<double>>(Rng&)> make;  // input size 5
};

std::vector<Maker> all_layers() {
    return {
        {"RNN", [](Rng& r) { return std::make_unique<RNN<double>>(RNNOptions{.input_size = 5, .hidden_size = 7}, r); }},
        {"LSTM", [](Rng& r) { return std::make_unique<LSTM<double>>(RecurrentOptions{5, 7, 2, true}, r); }},
        {"GRU", [](Rng& r) { return std::make_unique<GRU<double>>(RecurrentOptions{5, 7, 1, true}, r); }},
        {"MinGRU", [](Rng& r) { return std::make_unique<MinGRU<double>>(MinRNNOptions{.input_size = 5, .hidden_size = 7}, r); }},
        {"MinLSTM", [](Rng& r) {
             return std::make_unique<MinLSTM<double>>(
                 MinRNNOptions{.input_size = 5, .expansion = 2.0, .mode = MinRNNMode::LogSpace}, r);
         }},
    };
}

class LayerErrors : public ::testing::TestWithParam<Maker> {
protected:
    void SetUp() override { layer = GetParam().make(rng); }
    Rng rng{21};
    std::unique_ptr<Layer<double>> layer;
};

std::string maker_name(const ::testing::TestParamInfo<Maker>& info) { return info.param.kind; }

}  // namespace

TEST_P(LayerErrors, ShapeErrorIsAnInvalidArgument) {
    EXPECT_THROW(layer->forward(random_sequence<double>(3, 4, 6, rng)), std::invalid_argument);
}

TEST_P(LayerErrors, WrongFeatureSizeNamesLayerAndBothShapes) {
    const auto x = random_sequence<double>(3, 4, 6, rng);
    expect_shape_error([&] { layer->forward(x); }, {GetParam().kind, "(B=3, T=4, D=6)", "D=5"});
}

TEST_P(LayerErrors, EmptyBatchIsRejected) {
    expect_shape_error([&] { layer->forward(Sequence<double>(0, 4, 5)); }, {GetParam().kind, "B=0", "empty"});
}

TEST_P(LayerErrors, EmptySequenceIsRejected) {
    expect_shape_error([&] { layer->forward(Sequence<double>(3, 0, 5)); }, {GetParam().kind, "T=0", "empty"});
}

TEST_P(LayerErrors, MatrixThatDisagreesWithBAndTIsRejected) {
    Sequence<double> x = random_sequence<double>(3, 4, 5, rng);
    x.steps = 5;  // 12 rows cannot be 3 sequences of 5 steps
    expect_shape_error([&] { layer->forward(x); }, {GetParam().kind, "(12, 5)", "B=3, T=5"});
}

TEST_P(LayerErrors, StateForAnotherBatchSizeIsRejected) {
    State<double> state = layer->initial_state(2);
    const auto x = random_sequence<double>(3, 4, 5, rng);
    expect_shape_error([&] { layer->forward(x, &state); },
                       {GetParam().kind, shape_string(state.tensors[0]), "made for 2 streams", "B=3"});
    state.batch = 0;  // a state that does not record B (e.g. assembled by hand): its shapes say it
    const std::string expected = shape_string(state.tensors[0].rows() / 2 * 3, state.tensors[0].cols());
    expect_shape_error([&] { layer->forward(x, &state); },
                       {GetParam().kind, shape_string(state.tensors[0]), expected});
}

TEST_P(LayerErrors, StepWithWrongInputWidthIsRejected) {
    State<double> state = layer->initial_state(3);
    Matrix<double> y;
    expect_shape_error([&] { layer->step(Matrix<double>::Zero(3, 4), state, y); }, {GetParam().kind, "(3, 4)", "5"});
}

TEST_P(LayerErrors, StepWithStateForAnotherBatchSizeIsRejected) {
    State<double> state = layer->initial_state(2);
    Matrix<double> y;
    expect_shape_error([&] { layer->step(Matrix<double>::Zero(3, 5), state, y); },
                       {GetParam().kind, shape_string(state.tensors[0])});
}

TEST_P(LayerErrors, GradientOfWrongShapeIsRejected) {
    const auto x = random_sequence<double>(3, 4, 5, rng);
    Context<double> ctx;
    const auto y = layer->forward(x, nullptr, &ctx);
    const auto dy_wide = random_sequence<double>(3, 4, y.features() + 1, rng);
    expect_shape_error([&] { layer->backward(dy_wide, ctx); },
                       {GetParam().kind, shape_string(dy_wide), "D=" + std::to_string(y.features())});
    const auto dy_long = random_sequence<double>(3, 5, y.features(), rng);
    expect_shape_error([&] { layer->backward(dy_long, ctx); }, {GetParam().kind, shape_string(dy_long), "T=4"});
}

TEST_P(LayerErrors, BackwardWithoutTrainingForwardIsRejected) {
    const auto dy = random_sequence<double>(3, 4, layer->output_size(), rng);
    Context<double> empty;
    EXPECT_THROW(layer->backward(dy, empty), shape_error);
}

INSTANTIATE_TEST_SUITE_P(AllLayers, LayerErrors, ::testing::ValuesIn(all_layers()), maker_name);

TEST(LayerConstruction, NonPositiveSizesAreRejected) {
    Rng rng(1);
    expect_shape_error([&] { GRU<float>({.input_size = 0, .hidden_size = 7}, rng); }, {"GRU", "0"});
    expect_shape_error([&] { LSTM<float>({.input_size = 3, .hidden_size = -1}, rng); }, {"LSTM", "-1"});
    expect_shape_error([&] { RNN<float>({.input_size = 3, .hidden_size = 4, .nonlinearity = Activation::GELU}, rng); },
                       {"RNN", "gelu"});
}
