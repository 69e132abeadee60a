// The paper's own minGRU and minLSTM (BorealisAI/minRNNs, models/minRNNs.py): their
// checkpoints load strictly into MinGRU / MinLSTM made with borealis_options(), and give
// the module's outputs, final h and gradients (init_hidden_state's included). The fixtures
// (tests/fixtures/min{gru,lstm}_borealis.safetensors, float64) hold the module's parameters
// ("param.<name>"), x, y, h_n, the loss weights dy and dh_n and every gradient
// ("grad.<name>", "grad.x"); the module ran from no state, so h_0 = g(init_hidden_state).
// Each is checked in double (to 1e-10) and in float (to 1e-5), relative to the largest
// reference entry (or 1), in every scan mode.
#include "testing.hpp"

#include <seqnn/io/layouts.hpp>
#include <seqnn/io/state_dict.hpp>
#include <seqnn/seqnn.hpp>

#include "layer_instances.hpp"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

using namespace seqnn;
using seqnn::testing::relative_error;

namespace {

const std::filesystem::path kFixtures = SEQNN_FIXTURE_DIR;

template <typename Scalar>
double tolerance() {
    return std::is_same_v<Scalar, double> ? 1e-10 : 1e-5;
}

// The module's layer: dim 3, expansion_factor 1.5 (E = 4), use_init_hidden_state=True.
template <typename Scalar>
std::unique_ptr<MinRNN<Scalar>> make_layer(const std::string& kind, MinRNNMode mode = MinRNNMode::Parallel,
                                           std::uint64_t seed = 1) {
    Rng rng(seed);
    MinRNNOptions o = borealis_options(3, 1.5);
    o.mode = mode;
    if (kind == "minGRU") return std::make_unique<MinGRU<Scalar>>(o, rng);
    return std::make_unique<MinLSTM<Scalar>>(o, rng);
}

std::string fixture_file(const std::string& kind) {
    return kind == "minGRU" ? "mingru_borealis.safetensors" : "minlstm_borealis.safetensors";
}

template <typename Scalar>
void expect_matches_fixture(const std::string& kind, MinRNNMode mode) {
    const std::string file = fixture_file(kind);
    const io::TensorMap f = io::load_safetensors(kFixtures / file);
    auto layer = make_layer<Scalar>(kind, mode);
    EXPECT_EQ(layer->hidden_size(), 4);
    io::load_state_dict(f, layer->parameters(), io::LoadOptions{.strict = true, .prefix = "param"}, file);

    const Sequence<Scalar> x = io::sequence_from_tensor<Scalar>(f.at("x"));  // (B, T, D)
    State<Scalar> state;  // empty: the learned initial state
    Context<Scalar> ctx;
    const Sequence<Scalar> y = layer->forward(x, &state, &ctx);
    EXPECT_LT(relative_error(y.data, io::sequence_from_tensor<Scalar>(f.at("y")).data), tolerance<Scalar>()) << file << ": y";
    EXPECT_LT(relative_error(state.tensors.at(0), f.at("h_n").to_matrix<Scalar>()), tolerance<Scalar>()) << file << ": h_n";

    layer->zero_grad();
    State<Scalar> d_final;
    d_final.tensors.push_back(f.at("dh_n").to_matrix<Scalar>());
    const Sequence<Scalar> dy = io::sequence_from_tensor<Scalar>(f.at("dy"));
    const Sequence<Scalar> dx = layer->backward(dy, ctx, &d_final);
    EXPECT_LT(relative_error(dx.data, io::sequence_from_tensor<Scalar>(f.at("grad.x")).data), tolerance<Scalar>()) << file << ": grad of x";
    for (const auto& p : layer->parameters()) {
        Matrix<Scalar> expected(p.param->grad.rows(), p.param->grad.cols());
        f.at("grad." + p.name).copy_to(std::span<Scalar>(expected.data(), static_cast<std::size_t>(expected.size())));
        EXPECT_LT(relative_error(p.param->grad, expected), tolerance<Scalar>()) << file << ": grad of " << p.name;
    }
}

template <typename Scalar>
class Borealis : public ::testing::Test {};
using Scalars = ::testing::Types<double, float>;
TYPED_TEST_SUITE(Borealis, Scalars);

TYPED_TEST(Borealis, MinGruMatchesTheOfficialModule) {
    for (MinRNNMode mode : {MinRNNMode::Parallel, MinRNNMode::LogSpace, MinRNNMode::Sequential}) {
        SCOPED_TRACE(static_cast<int>(mode));
        expect_matches_fixture<TypeParam>("minGRU", mode);
    }
}

TYPED_TEST(Borealis, MinLstmMatchesTheOfficialModule) {
    for (MinRNNMode mode : {MinRNNMode::Parallel, MinRNNMode::LogSpace, MinRNNMode::Sequential}) {
        SCOPED_TRACE(static_cast<int>(mode));
        expect_matches_fixture<TypeParam>("minLSTM", mode);
    }
}

// The names, in the order PyTorch registers them (init_hidden_state last), are the fixture's.
TEST(BorealisNames, ParametersInTheModulesOrder) {
    for (const std::string kind : {"minGRU", "minLSTM"}) {
        auto layer = make_layer<double>(kind);
        std::vector<std::string> names;
        for (const auto& p : layer->parameters()) names.push_back(p.name);
        EXPECT_EQ(names, (std::vector<std::string>{"to_hidden_and_gate.weight", "to_hidden_and_gate.bias",
                                                    "to_out.weight", "to_out.bias", "init_hidden_state"}))
            << kind;
        EXPECT_EQ(layer->init_hidden_state().shape, std::vector<Index>{4});
    }
    // lucidrains' naming is unchanged.
    Rng rng(1);
    MinLSTM<double> lucidrains({.input_size = 3, .hidden_size = 4}, rng);
    EXPECT_EQ(lucidrains.parameters().front().name, "to_hidden_and_f_i_gate.weight");
}

// Streaming from a fresh (empty) state, or from initial_state(B), gives forward's outputs
// and final h: both start at g(init_hidden_state).
TEST(BorealisStep, StepMatchesForward) {
    for (const std::string kind : {"minGRU", "minLSTM"}) {
        SCOPED_TRACE(kind);
        auto layer = make_layer<double>(kind);
        Rng rng(3);
        const Index B = 3, T = 5;
        const Sequence<double> x = seqnn::testing::random_sequence<double>(B, T, 3, rng);
        State<double> whole;
        const Sequence<double> y = layer->forward(x, &whole);
        const Sequence<double> y_null = layer->forward(x);
        EXPECT_LT(relative_error(y_null.data, y.data), 1e-14);

        State<double> fresh, made = layer->initial_state(B);
        EXPECT_TRUE(made.tensors[0] == layer->learned_h0().replicate(B, 1));
        Matrix<double> out;
        for (State<double>* s : {&fresh, &made}) {
            for (Index t = 0; t < T; ++t) {
                layer->step(x.at_step(t), *s, out);
                for (Index b = 0; b < B; ++b)
                    EXPECT_LT(relative_error(out.row(b), y.data.row(b * T + t)), 1e-12) << "t=" << t;
            }
            EXPECT_LT(relative_error(s->tensors[0], whole.tensors[0]), 1e-12);
        }
        // Forward in chunks: the second chunk starts from the first's final h, not g(init).
        auto steps = [&](Index t0, Index t1) {
            Sequence<double> part(Matrix<double>(B * (t1 - t0), 3), B, t1 - t0);
            for (Index b = 0; b < B; ++b) part.data.middleRows(b * (t1 - t0), t1 - t0) = x.data.middleRows(b * T + t0, t1 - t0);
            return part;
        };
        State<double> chunks;
        layer->forward(steps(0, 2), &chunks);
        const Sequence<double> y2 = layer->forward(steps(2, T), &chunks);
        for (Index b = 0; b < B; ++b)
            EXPECT_LT(relative_error(y2.data.middleRows(b * (T - 2), T - 2), y.data.middleRows(b * T + 2, T - 2)), 1e-12);
        EXPECT_LT(relative_error(chunks.tensors[0], whole.tensors[0]), 1e-12);
    }
}

// Finite differences agree with backward for every parameter, init_hidden_state included,
// and for x, from no state; in every mode.
TEST(BorealisGradients, FiniteDifferences) {
    for (const std::string kind : {"minGRU", "minLSTM"})
        for (MinRNNMode mode : {MinRNNMode::Parallel, MinRNNMode::LogSpace}) {
            SCOPED_TRACE(kind + " mode " + std::to_string(static_cast<int>(mode)));
            auto layer = make_layer<double>(kind, mode, 5);
            Rng rng(4);
            const Sequence<double> x = seqnn::testing::random_sequence<double>(3, 6, 3, rng);
            seqnn::testing::GradientChecker checker(*layer);
            const auto reports = checker.check(x, State<double>{});
            bool saw_init = false;
            for (const auto& r : reports) saw_init |= r.name == "init_hidden_state";
            EXPECT_TRUE(saw_init);
            seqnn::testing::expect_gradients_match(reports, 1e-6);
        }
}

// A state the caller writes is used as given, and no gradient reaches init_hidden_state;
// backward still reports dL/dh0.
TEST(BorealisGradients, CallerStateBypassesTheLearnedOne) {
    auto layer = make_layer<double>("minLSTM");
    Rng rng(6);
    const Index B = 2, T = 4;
    const Sequence<double> x = seqnn::testing::random_sequence<double>(B, T, 3, rng);
    State<double> state = layer->initial_state(B);
    state.tensors[0] = seqnn::testing::random_matrix<double>(B, 4, rng).cwiseAbs();
    const Matrix<double> h0 = state.tensors[0];
    Context<double> ctx;
    layer->zero_grad();
    const Sequence<double> y = layer->forward(x, &state, &ctx);
    EXPECT_GT(relative_error(y.data, layer->forward(x).data), 1e-6);
    State<double> d_initial;
    layer->backward(Sequence<double>(Matrix<double>::Ones(B * T, 3), B, T), ctx, nullptr, &d_initial);
    EXPECT_TRUE(layer->init_hidden_state().grad.isZero(0));
    EXPECT_FALSE(d_initial.tensors.at(0).isZero(0));

    // The same h0, again from the caller: the same outputs as a layer without the learned state.
    Rng rng2(1);
    MinRNNOptions plain = borealis_options(3, 1.5, /*use_init_hidden_state=*/false);
    MinLSTM<double> without(plain, rng2);
    ParameterList<double> to = without.parameters(), from = layer->parameters();
    ASSERT_EQ(to.size() + 1, from.size());
    for (std::size_t k = 0; k < to.size(); ++k) to[k].param->value = from[k].param->value;
    State<double> s2 = without.initial_state(B);
    EXPECT_TRUE(s2.tensors[0].isZero(0));
    s2.tensors[0] = h0;
    EXPECT_LT(relative_error(without.forward(x, &s2).data, y.data), 1e-14);
}

TEST(BorealisOptions, RefusesWhatItCannotDefine) {
    Rng rng(1);
    MinRNNOptions o = borealis_options(3, 1.5);
    o.bidirectional = true;
    seqnn::testing::expect_shape_error([&] { MinGRU<double>(o, rng); }, {"learned_initial_state", "unidirectional"});
    o = borealis_options(3, 1.5);
    o.activation = HiddenActivation::Identity;
    seqnn::testing::expect_shape_error([&] { MinLSTM<double>(o, rng); }, {"learned_initial_state", "PositiveG"});
}

}  // namespace
