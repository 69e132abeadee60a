// Conformance with PyTorch: every layer, loaded with a PyTorch module's weights by
// their state_dict names, gives that module's outputs, final states and gradients.
// The fixtures (tests/fixtures/*.safetensors, float64) are written by
// tests/fixtures/make_fixtures.py with Debian's python3-torch; this test needs no Python.
// Each is checked in double (to 1e-10) and in float (to 1e-5), relative to the
// largest reference entry (or 1).
#include "testing.hpp"

#include <seqnn/io/state_dict.hpp>
#include <seqnn/models/transformer_block.hpp>
#include <seqnn/models/language_model.hpp>
#include <seqnn/seqnn.hpp>
#include <seqnn/train/loss.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <numeric>

using namespace seqnn;
using seqnn::testing::relative_error;

namespace {

const std::filesystem::path kFixtures = SEQNN_FIXTURE_DIR;

template <typename Scalar>
double tolerance() {
    return std::is_same_v<Scalar, double> ? 1e-10 : 1e-5;
}

// One fixture file: tensors by name, reshaped the way seqnn lays them out.
class Fixture {
public:
    explicit Fixture(const std::string& file) : tensors_(io::load_safetensors(kFixtures / file)), file_(file) {}

    // A tensor of shape (d0, ..., dk) as a (d0*...*d(k-1), dk) matrix: (B, T, D) becomes
    // the (B*T, D) sequence layout and PyTorch's (L, B, H) state the (L*B, H) one.
    template <typename Scalar>
    Matrix<Scalar> matrix(const std::string& name) const {
        const io::Tensor& t = tensors_.at(name);
        const std::vector<Index>& shape = t.shape();
        const Index cols = shape.empty() ? 1 : shape.back();
        const Index rows = cols == 0 ? 0 : t.numel() / cols;
        Matrix<Scalar> m(rows, cols);
        t.copy_to(std::span<Scalar>(m.data(), static_cast<std::size_t>(m.size())));
        return m;
    }
    Index dim(const std::string& name, std::size_t k) const { return tensors_.at(name).shape().at(k); }
    std::vector<int> ids(const std::string& name) const {
        const auto values = tensors_.at(name).values<std::int64_t>();
        return std::vector<int>(values.begin(), values.end());
    }
    // A packed fixture's "lengths" as Sequence::lengths; empty when the fixture has none.
    std::vector<Index> lengths() const {
        if (!tensors_.contains("lengths")) return {};
        const auto values = tensors_.at("lengths").values<std::int64_t>();
        return std::vector<Index>(values.begin(), values.end());
    }

    // Sets every parameter from "param.<name>", strictly: no parameter missing, none left over.
    template <typename Scalar>
    void load_into(const ParameterList<Scalar>& params) const {
        io::TensorMap weights;
        for (const auto& [name, tensor] : tensors_)
            if (name.rfind("param.", 0) == 0) weights.set(name.substr(6), tensor);
        io::load_state_dict(weights, params, /*strict=*/true, file_);
    }

    // Every parameter's gradient against "grad.<name>".
    template <typename Scalar>
    void expect_parameter_gradients(const ParameterList<Scalar>& params) const {
        for (const auto& p : params) {
            Matrix<Scalar> expected(p.param->grad.rows(), p.param->grad.cols());  // e.g. conv (D, 1, K) as (D, K)
            tensors_.at("grad." + p.name).copy_to(std::span<Scalar>(expected.data(), static_cast<std::size_t>(expected.size())));
            EXPECT_LT(relative_error(p.param->grad, expected), tolerance<Scalar>()) << file_ << ": grad of " << p.name;
        }
    }

    const std::string& file() const { return file_; }

private:
    io::TensorMap tensors_;
    std::string file_;
};

// Runs a sequence layer on the fixture's x (with its lengths, for a packed fixture) from
// its initial states, compares y and the final states, then backpropagates dy (and
// d(final state)) and compares every gradient.
template <typename Scalar>
void expect_layer_matches(Layer<Scalar>& layer, const Fixture& f, const std::vector<std::string>& states) {
    const Index B = f.dim("x", 0), T = f.dim("x", 1);
    f.load_into(layer.parameters());
    Sequence<Scalar> x(f.matrix<Scalar>("x"), B, T);
    x.lengths = f.lengths();
    State<Scalar> state = layer.initial_state(B);
    State<Scalar> d_final;
    for (std::size_t k = 0; k < states.size(); ++k) {
        state.tensors[k] = f.matrix<Scalar>(states[k] + "0");
        d_final.tensors.push_back(f.matrix<Scalar>("d" + states[k] + "_n"));
    }

    Context<Scalar> ctx;
    const Sequence<Scalar> y = layer.forward(x, &state, &ctx);
    EXPECT_LT(relative_error(y.data, f.matrix<Scalar>("y")), tolerance<Scalar>()) << f.file() << ": y";
    for (std::size_t k = 0; k < states.size(); ++k)
        EXPECT_LT(relative_error(state.tensors[k], f.matrix<Scalar>(states[k] + "_n")), tolerance<Scalar>())
            << f.file() << ": " << states[k] << "_n";

    layer.zero_grad();
    State<Scalar> d_initial;
    const Sequence<Scalar> dy(f.matrix<Scalar>("dy"), B, T);
    const Sequence<Scalar> dx = layer.backward(dy, ctx, states.empty() ? nullptr : &d_final, &d_initial);
    EXPECT_LT(relative_error(dx.data, f.matrix<Scalar>("grad.x")), tolerance<Scalar>()) << f.file() << ": grad of x";
    for (std::size_t k = 0; k < states.size(); ++k)
        EXPECT_LT(relative_error(d_initial.tensors.at(k), f.matrix<Scalar>("grad." + states[k] + "0")),
                  tolerance<Scalar>())
            << f.file() << ": grad of " << states[k] << "0";
    f.expect_parameter_gradients(layer.parameters());
}

template <typename Scalar>
class PyTorchConformance : public ::testing::Test {};
using Scalars = ::testing::Types<double, float>;
TYPED_TEST_SUITE(PyTorchConformance, Scalars);

TYPED_TEST(PyTorchConformance, RnnTanhMatchesNnRnn) {
    Rng rng(1);
    RNN<TypeParam> rnn({.input_size = 4, .hidden_size = 6, .num_layers = 2, .nonlinearity = Activation::Tanh}, rng);
    expect_layer_matches<TypeParam>(rnn, Fixture("rnn_tanh.safetensors"), {"h"});
}

TYPED_TEST(PyTorchConformance, RnnReluMatchesNnRnn) {
    Rng rng(1);
    RNN<TypeParam> rnn({.input_size = 4, .hidden_size = 6, .num_layers = 2, .nonlinearity = Activation::ReLU}, rng);
    expect_layer_matches<TypeParam>(rnn, Fixture("rnn_relu.safetensors"), {"h"});
}

TYPED_TEST(PyTorchConformance, LstmMatchesNnLstm) {
    Rng rng(1);
    LSTM<TypeParam> lstm({.input_size = 4, .hidden_size = 6, .num_layers = 2}, rng);
    expect_layer_matches<TypeParam>(lstm, Fixture("lstm.safetensors"), {"h", "c"});
}

TYPED_TEST(PyTorchConformance, GruMatchesNnGru) {
    Rng rng(1);
    GRU<TypeParam> gru({.input_size = 4, .hidden_size = 6, .num_layers = 2}, rng);
    expect_layer_matches<TypeParam>(gru, Fixture("gru.safetensors"), {"h"});
}

// Variable-length batches as pack_padded_sequence(enforce_sorted=False) runs them, the
// bidirectional layers (packed and not) and the LSTM's projection, against nn.RNN, nn.GRU
// and nn.LSTM (I=3, H=5, L=2, B=4, T=6; proj_size 3).
TYPED_TEST(PyTorchConformance, PackedRnnGruLstmMatchPackPaddedSequence) {
    Rng rng(1);
    RNN<TypeParam> rnn({.input_size = 3, .hidden_size = 5, .num_layers = 2}, rng);
    expect_layer_matches<TypeParam>(rnn, Fixture("rnn_tanh_packed.safetensors"), {"h"});
    GRU<TypeParam> gru({.input_size = 3, .hidden_size = 5, .num_layers = 2}, rng);
    expect_layer_matches<TypeParam>(gru, Fixture("gru_packed.safetensors"), {"h"});
    LSTM<TypeParam> lstm({.input_size = 3, .hidden_size = 5, .num_layers = 2}, rng);
    expect_layer_matches<TypeParam>(lstm, Fixture("lstm_packed.safetensors"), {"h", "c"});
}

TYPED_TEST(PyTorchConformance, BidirectionalRnnGruLstmMatchPyTorch) {
    Rng rng(1);
    const RecurrentOptions o{.input_size = 3, .hidden_size = 5, .num_layers = 2, .bidirectional = true};
    RNN<TypeParam> rnn(o, rng);
    expect_layer_matches<TypeParam>(rnn, Fixture("rnn_tanh_bidirectional.safetensors"), {"h"});
    GRU<TypeParam> gru(o, rng);
    expect_layer_matches<TypeParam>(gru, Fixture("gru_bidirectional.safetensors"), {"h"});
    LSTM<TypeParam> lstm(o, rng);
    expect_layer_matches<TypeParam>(lstm, Fixture("lstm_bidirectional.safetensors"), {"h", "c"});
}

TYPED_TEST(PyTorchConformance, PackedBidirectionalGruLstmMatchPackPaddedSequence) {
    Rng rng(1);
    const RecurrentOptions o{.input_size = 3, .hidden_size = 5, .num_layers = 2, .bidirectional = true};
    GRU<TypeParam> gru(o, rng);
    expect_layer_matches<TypeParam>(gru, Fixture("gru_bidirectional_packed.safetensors"), {"h"});
    LSTM<TypeParam> lstm(o, rng);
    expect_layer_matches<TypeParam>(lstm, Fixture("lstm_bidirectional_packed.safetensors"), {"h", "c"});
}

TYPED_TEST(PyTorchConformance, LstmWithProjectionMatchesNnLstmProjSize) {
    Rng rng(1);
    LSTM<TypeParam> lstm({.input_size = 3, .hidden_size = 5, .num_layers = 2, .proj_size = 3}, rng);
    expect_layer_matches<TypeParam>(lstm, Fixture("lstm_proj.safetensors"), {"h", "c"});
    LSTM<TypeParam> packed_bidirectional(
        {.input_size = 3, .hidden_size = 5, .num_layers = 2, .bidirectional = true, .proj_size = 3}, rng);
    expect_layer_matches<TypeParam>(packed_bidirectional, Fixture("lstm_proj_bidirectional_packed.safetensors"),
                                    {"h", "c"});
}

// The reference runs the paper's log-space scan from a positive initial state; every
// seqnn mode computes the same function and must match it.
TYPED_TEST(PyTorchConformance, MinGruAndMinLstmMatchThePapersLogSpaceFormulation) {
    for (const MinRNNMode mode : {MinRNNMode::Sequential, MinRNNMode::Parallel, MinRNNMode::LogSpace}) {
        SCOPED_TRACE("mode " + std::to_string(static_cast<int>(mode)));
        const MinRNNOptions o{.input_size = 4, .expansion = 1.5, .bias = false,
                              .activation = HiddenActivation::PositiveG, .mode = mode};
        Rng rng(1);
        MinGRU<TypeParam> mingru(o, rng);
        expect_layer_matches<TypeParam>(mingru, Fixture("mingru.safetensors"), {"h"});
        MinLSTM<TypeParam> minlstm(o, rng);
        expect_layer_matches<TypeParam>(minlstm, Fixture("minlstm.safetensors"), {"h"});
    }
}

TYPED_TEST(PyTorchConformance, TransformerBlockMatchesNnTransformerEncoderLayer) {
    const Fixture f("transformer.safetensors");
    Rng rng(1);
    TransformerBlock<TypeParam> block(
        {.d_model = 8, .num_heads = 2, .dim_feedforward = 16, .causal = true, .max_cache_length = 16}, rng);
    expect_layer_matches<TypeParam>(block, f, {});
}

// The whole language model (minLM's layout, minGRU mixers, causal conv): logits, the
// mean cross-entropy and the gradient of every parameter.
TYPED_TEST(PyTorchConformance, LanguageModelMatchesMinLm) {
    using Scalar = TypeParam;
    const Fixture f("min_lm.safetensors");
    const Index B = f.dim("tokens", 0), T = f.dim("tokens", 1);
    Rng rng(1);
    LanguageModel<Scalar> lm({.vocab_size = 11, .dim = 8, .depth = 2,
                              .mixer = {.kind = MixerKind::MinGRU, .expansion = 1.5},
                              .ff_mult = 4.0, .conv = true, .conv_kernel = 3},
                             rng);
    f.load_into(lm.parameters());

    Context<Scalar> ctx;
    const Sequence<Scalar> logits = lm.forward(TokenBatch(f.ids("tokens"), B, T), nullptr, &ctx);
    EXPECT_LT(relative_error(logits.data, f.matrix<Scalar>("logits")), tolerance<Scalar>());

    Matrix<Scalar> dlogits;
    const std::vector<int> targets = f.ids("targets");
    const Scalar loss = cross_entropy_loss<Scalar>(logits.data, targets, dlogits);
    EXPECT_NEAR(loss, f.matrix<Scalar>("loss")(0, 0), tolerance<Scalar>());
    lm.zero_grad();
    lm.backward(Sequence<Scalar>(dlogits, B, T), ctx);
    f.expect_parameter_gradients(lm.parameters());
}

// Loading is by name, and the fixtures hold exactly the names seqnn gives.
TEST(PyTorchConformanceNames, AWrongArchitectureIsRejectedWithEveryProblemListed) {
    Rng rng(1);
    GRU<double> one_layer({.input_size = 4, .hidden_size = 6, .num_layers = 1}, rng);
    try {
        Fixture("gru.safetensors").load_into(one_layer.parameters());
        FAIL() << "a 2-layer checkpoint loaded into a 1-layer GRU";
    } catch (const io::state_dict_error& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find("weight_ih_l1"), std::string::npos) << message;
        EXPECT_NE(message.find("bias_hh_l1"), std::string::npos) << message;
    }
}

}  // namespace
