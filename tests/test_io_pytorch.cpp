// seqnn::io as a PyTorch harness uses it, in double and float:
//   - PyTorch's (B, T, D) inputs, (L, B, H) nn.RNN/GRU/LSTM states and lucidrains minGRU's
//     (B, 1, E) hidden convert to and from seqnn's Sequence and state matrices, element for
//     element, and back to the same tensor; a wrong rank or shape is a shape_error naming
//     the function, the tensor's shape and the shape expected;
//   - strict loading with a prefix loads one layer out of a larger checkpoint, where full
//     strict loading fails, and is strict within the prefix; sub_state_dict and with_prefix
//     move tensors between a layer's names and a model's;
//   - a PyTorch fixture (tests/fixtures) runs through these functions alone and matches.
#include "testing.hpp"

#include <seqnn/io/layouts.hpp>
#include <seqnn/io/safetensors.hpp>
#include <seqnn/io/state_dict.hpp>
#include <seqnn/layers/gru.hpp>
#include <seqnn/layers/lstm.hpp>
#include <seqnn/layers/mingru.hpp>
#include "layer_instances.hpp"

#include <cstdint>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

using namespace seqnn;
using namespace seqnn::io;
using seqnn::testing::expect_shape_error;
using seqnn::testing::random_matrix;
using seqnn::testing::random_sequence;
using seqnn::testing::relative_error;

namespace {

template <typename Scalar>
class IoLayouts : public ::testing::Test {};
template <typename Scalar>
class IoPrefix : public ::testing::Test {};
template <typename Scalar>
class IoPyTorchFixture : public ::testing::Test {};
using Scalars = ::testing::Types<double, float>;
TYPED_TEST_SUITE(IoLayouts, Scalars);
TYPED_TEST_SUITE(IoPrefix, Scalars);
TYPED_TEST_SUITE(IoPyTorchFixture, Scalars);

// A tensor of `shape` holding 0, 1, 2, ... in row-major order, stored as Scalar's dtype.
template <typename Scalar>
Tensor iota_tensor(std::vector<Index> shape) {
    Index n = 1;
    for (Index d : shape) n *= d;
    std::vector<Scalar> values(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<Scalar>(i);
    return Tensor::from_values(values, std::move(shape));
}

}  // namespace

// ---------------------------------------------------------------------------
// (B, T, D) <-> Sequence

TYPED_TEST(IoLayouts, ABatchFirstTensorIsASequenceWhoseRowBTimesTPlusTIsStepTOfSequenceB) {
    using Scalar = TypeParam;
    const Index B = 2, T = 3, D = 4;
    const Sequence<Scalar> x = sequence_from_tensor<Scalar>(iota_tensor<Scalar>({B, T, D}));
    EXPECT_EQ(x.batch, B);
    EXPECT_EQ(x.steps, T);
    ASSERT_EQ(x.data.rows(), B * T);
    ASSERT_EQ(x.features(), D);
    for (Index b = 0; b < B; ++b)
        for (Index t = 0; t < T; ++t)
            for (Index d = 0; d < D; ++d) {
                const auto expected = static_cast<Scalar>((b * T + t) * D + d);  // x[b, t, d] in PyTorch
                EXPECT_EQ(x.data(b * T + t, d), expected);
                EXPECT_EQ(x.at_step(t)(b, d), expected);
            }
}

TYPED_TEST(IoLayouts, ASequenceRoundTripsThroughABatchFirstTensor) {
    using Scalar = TypeParam;
    Rng rng(3);
    const Sequence<Scalar> x = random_sequence<Scalar>(3, 5, 2, rng);
    const Tensor t = tensor_from_sequence(x);
    EXPECT_EQ(t.shape(), (std::vector<Index>{3, 5, 2}));
    EXPECT_EQ(t.dtype(), dtype_of<Scalar>());
    const Sequence<Scalar> back = sequence_from_tensor<Scalar>(t, 3, 5, 2);  // every size checked, all match
    EXPECT_EQ(back.batch, 3);
    EXPECT_EQ(back.steps, 5);
    EXPECT_EQ(back.data, x.data);
    EXPECT_EQ(tensor_from_sequence(back), t);

    // Another dtype on the way out: F32 holds a float exactly, and a double to float precision.
    const Tensor f32 = tensor_from_sequence(x, DType::F32);
    EXPECT_EQ(f32.dtype(), DType::F32);
    EXPECT_EQ(sequence_from_tensor<float>(f32).data, x.data.template cast<float>().eval());
}

TYPED_TEST(IoLayouts, SequenceFromTensorRefusesAnotherRankNamingBothShapes) {
    using Scalar = TypeParam;
    expect_shape_error([] { sequence_from_tensor<Scalar>(iota_tensor<Scalar>({6, 4})); },
                       {"io::sequence_from_tensor", "[6, 4]", "rank 2", "expected rank 3", "(B, T, D)"});
    expect_shape_error([] { sequence_from_tensor<Scalar>(iota_tensor<Scalar>({1, 2, 3, 4})); },
                       {"io::sequence_from_tensor", "[1, 2, 3, 4]", "rank 4", "(B, T, D)"});
    expect_shape_error([] { sequence_from_tensor<Scalar>(Tensor(dtype_of<Scalar>(), {})); },
                       {"io::sequence_from_tensor", "[]", "rank 0"});
}

TYPED_TEST(IoLayouts, SequenceFromTensorRefusesASizeOtherThanTheOneAskedForNamingBothShapes) {
    using Scalar = TypeParam;
    const Tensor t = iota_tensor<Scalar>({2, 3, 4});
    expect_shape_error([&] { sequence_from_tensor<Scalar>(t, any_size, any_size, 5); },
                       {"io::sequence_from_tensor", "[2, 3, 4]", "(B, T, D) = (B=any, T=any, D=5)"});
    expect_shape_error([&] { sequence_from_tensor<Scalar>(t, 3, 3, 4); },
                       {"io::sequence_from_tensor", "[2, 3, 4]", "(B=3, T=3, D=4)"});
    expect_shape_error([&] { sequence_from_tensor<Scalar>(t, 2, -2); }, {"io::sequence_from_tensor", "T=-2", "negative"});
}

TYPED_TEST(IoLayouts, TensorFromSequenceRefusesAMatrixThatDoesNotHoldBTimesTRows) {
    using Scalar = TypeParam;
    const Sequence<Scalar> wrong(Matrix<Scalar>::Zero(5, 4), 2, 3);
    expect_shape_error([&] { tensor_from_sequence(wrong); },
                       {"io::tensor_from_sequence", "(B=2, T=3, D=4)", "(5, 4)", "expected (B*T, D) = (6, 4)"});
}

// ---------------------------------------------------------------------------
// (L, B, H) <-> (L*B, H)

TYPED_TEST(IoLayouts, APyTorchStateTensorIsAStateMatrixWhoseRowLTimesBPlusBIsLayerLOfSequenceB) {
    using Scalar = TypeParam;
    const Index L = 2, B = 3, H = 4;
    const Tensor t = iota_tensor<Scalar>({L, B, H});
    const Matrix<Scalar> h = state_from_tensor<Scalar>(t, L, B, H);
    ASSERT_EQ(h.rows(), L * B);
    ASSERT_EQ(h.cols(), H);
    for (Index l = 0; l < L; ++l)
        for (Index b = 0; b < B; ++b)
            for (Index k = 0; k < H; ++k) EXPECT_EQ(h(l * B + b, k), static_cast<Scalar>((l * B + b) * H + k));
    EXPECT_EQ(tensor_from_state(h, L), t);  // back to the same tensor, byte for byte
}

TYPED_TEST(IoLayouts, AStateMatrixRoundTripsThroughAPyTorchStateTensor) {
    using Scalar = TypeParam;
    Rng rng(4);
    const Matrix<Scalar> h = random_matrix<Scalar>(3 * 2, 5, rng);  // L=3, B=2, H=5
    const Tensor t = tensor_from_state(h, 3);
    EXPECT_EQ(t.shape(), (std::vector<Index>{3, 2, 5}));
    EXPECT_EQ(t.dtype(), dtype_of<Scalar>());
    EXPECT_EQ(state_from_tensor<Scalar>(t), h);
    EXPECT_EQ(tensor_from_state(h.topRows(2), 1).shape(), (std::vector<Index>{1, 2, 5}));  // a block converts too
    EXPECT_EQ(tensor_from_state(h, 3, DType::F64).dtype(), DType::F64);
}

TYPED_TEST(IoLayouts, StateFromTensorRefusesAnotherRankOrSizeNamingBothShapes) {
    using Scalar = TypeParam;
    expect_shape_error([] { state_from_tensor<Scalar>(iota_tensor<Scalar>({6, 4})); },
                       {"io::state_from_tensor", "[6, 4]", "rank 2", "expected rank 3", "(L, B, H)"});
    const Tensor t = iota_tensor<Scalar>({2, 3, 4});
    expect_shape_error([&] { state_from_tensor<Scalar>(t, 2, 5); },
                       {"io::state_from_tensor", "[2, 3, 4]", "(L, B, H) = (L=2, B=5, H=any)"});
    expect_shape_error([&] { state_from_tensor<Scalar>(t, 1, 3, 4); },
                       {"io::state_from_tensor", "[2, 3, 4]", "(L=1, B=3, H=4)"});
}

TYPED_TEST(IoLayouts, TensorFromStateRefusesALayerCountThatDoesNotDivideTheRows) {
    using Scalar = TypeParam;
    const Matrix<Scalar> h = Matrix<Scalar>::Zero(5, 4);
    expect_shape_error([&] { tensor_from_state(h, 2); },
                       {"io::tensor_from_state", "(5, 4)", "(L*B, H)", "L=2", "not a multiple of 2"});
    expect_shape_error([&] { tensor_from_state(h, 0); }, {"io::tensor_from_state", "positive", "L=0"});
}

// ---------------------------------------------------------------------------
// (B, 1, E) <-> (B, E)

TYPED_TEST(IoLayouts, AMinGruHiddenOfShapeB1EIsTheBByEStateMatrix) {
    using Scalar = TypeParam;
    const Tensor t = iota_tensor<Scalar>({3, 1, 6});
    const Matrix<Scalar> h = min_rnn_state_from_tensor<Scalar>(t, 3, 6);
    ASSERT_EQ(h.rows(), 3);
    ASSERT_EQ(h.cols(), 6);
    for (Index b = 0; b < 3; ++b)
        for (Index e = 0; e < 6; ++e) EXPECT_EQ(h(b, e), static_cast<Scalar>(b * 6 + e));
    EXPECT_EQ(tensor_from_min_rnn_state(h), t);

    Rng rng(5);
    const Matrix<Scalar> r = random_matrix<Scalar>(2, 7, rng);
    const Tensor rt = tensor_from_min_rnn_state(r);
    EXPECT_EQ(rt.shape(), (std::vector<Index>{2, 1, 7}));
    EXPECT_EQ(min_rnn_state_from_tensor<Scalar>(rt), r);
}

TYPED_TEST(IoLayouts, MinRnnStateFromTensorRefusesAnotherRankOrShapeNamingBothShapes) {
    using Scalar = TypeParam;
    expect_shape_error([] { min_rnn_state_from_tensor<Scalar>(iota_tensor<Scalar>({3, 6})); },
                       {"io::min_rnn_state_from_tensor", "[3, 6]", "rank 2", "expected rank 3", "(B, 1, E)"});
    expect_shape_error([] { min_rnn_state_from_tensor<Scalar>(iota_tensor<Scalar>({3, 2, 6})); },
                       {"io::min_rnn_state_from_tensor", "[3, 2, 6]", "(B, 1, E) = (B=any, 1, E=any)"});
    expect_shape_error([] { min_rnn_state_from_tensor<Scalar>(iota_tensor<Scalar>({3, 1, 6}), 4, 6); },
                       {"io::min_rnn_state_from_tensor", "[3, 1, 6]", "(B=4, 1, E=6)"});
}

TEST(IoLayoutsToMatrix, ARankThreeTensorPointsToTheLayoutConversions) {
    expect_shape_error([] { iota_tensor<float>({2, 3, 4}).to_matrix<float>(); },
                       {"[2, 3, 4]", "rank 3", "io::sequence_from_tensor", "io::state_from_tensor"});
}

// ---------------------------------------------------------------------------
// Loading with a prefix

namespace {

// A hand-made layer's parameters: "weight" (2, 3), "bias" (3), "scale" (4).
template <typename Scalar>
struct Toy {
    Parameter<Scalar> weight{2, 3}, bias{3}, scale{4};
    ParameterList<Scalar> parameters() { return {{"weight", &weight}, {"bias", &bias}, {"scale", &scale}}; }
    explicit Toy(std::uint64_t seed) {
        Rng rng(seed);
        for (auto& p : parameters()) p.param->init_uniform(Scalar(1), rng);
    }
    bool equals(const Toy& other) const {
        return weight.value == other.weight.value && bias.value == other.bias.value && scale.value == other.scale.value;
    }
};

// A model's checkpoint: the toy layers `encoder` and `decoder` under those prefixes, and a
// step counter beside them.
template <typename Scalar>
TensorMap checkpoint_of(Toy<Scalar>& encoder, Toy<Scalar>& decoder) {
    TensorMap out = with_prefix(state_dict(encoder.parameters()), "encoder");
    for (const auto& [name, tensor] : with_prefix(state_dict(decoder.parameters()), "decoder.")) out.set(name, tensor);
    out.set("step", Tensor::from_values(std::vector<std::int64_t>{7}, {}));
    return out;
}

// A unique file in the temporary directory, removed when the test ends.
class TempPath {
public:
    explicit TempPath(const std::string& stem) {
        std::random_device seed;
        path_ = std::filesystem::temp_directory_path() /
                (stem + "-" + std::to_string(seed()) + "-" + std::to_string(seed()) + ".safetensors");
    }
    ~TempPath() {
        std::error_code ignored;
        std::filesystem::remove(path_, ignored);
    }
    TempPath(const TempPath&) = delete;
    TempPath& operator=(const TempPath&) = delete;
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

}  // namespace

TYPED_TEST(IoPrefix, StrictLoadingWithAPrefixLoadsOneLayerWhereFullStrictLoadingFails) {
    using Scalar = TypeParam;
    Toy<Scalar> encoder(1), decoder(2), target(3);
    const TensorMap checkpoint = checkpoint_of(encoder, decoder);

    // The whole checkpoint does not fit one layer: every other key is unexpected.
    const Toy<Scalar> before = target;
    try {
        load_state_dict(checkpoint, target.parameters());
        ADD_FAILURE() << "strict loading of the whole checkpoint into one layer succeeded";
    } catch (const state_dict_error& e) {
        EXPECT_EQ(e.report().missing, (std::vector<std::string>{"weight", "bias", "scale"}));
        EXPECT_EQ(e.report().unexpected.size(), 7u);
    }
    EXPECT_TRUE(target.equals(before));

    // Within the prefix it fits exactly; the decoder's keys and "step" are ignored.
    for (const std::string prefix : {"decoder", "decoder."}) {
        Toy<Scalar> into(3);
        const LoadReport report = load_state_dict(checkpoint, into.parameters(), LoadOptions{.prefix = prefix});
        EXPECT_TRUE(report.complete()) << prefix;
        EXPECT_EQ(report.loaded, (std::vector<std::string>{"decoder.weight", "decoder.bias", "decoder.scale"}));
        EXPECT_TRUE(into.equals(decoder)) << prefix;
    }
    Toy<Scalar> into(3);
    load_state_dict(checkpoint, into.parameters(), {.strict = true, .prefix = "encoder"});
    EXPECT_TRUE(into.equals(encoder));
}

TYPED_TEST(IoPrefix, StrictLoadingWithAPrefixIsStrictWithinIt) {
    using Scalar = TypeParam;
    Toy<Scalar> encoder(1), decoder(2), target(3);
    TensorMap checkpoint = checkpoint_of(encoder, decoder);
    checkpoint.erase("encoder.scale");                                                      // missing
    checkpoint.set("encoder.stray", Tensor(dtype_of<Scalar>(), {1}));                       // unexpected
    checkpoint.set("encoder.weight", Tensor::from_matrix(Matrix<Scalar>::Ones(3, 2)));      // mis-shaped
    checkpoint.set("encoderx.weight", Tensor(dtype_of<Scalar>(), {9}));  // outside "encoder.": ignored
    const Toy<Scalar> before = target;
    try {
        load_state_dict(checkpoint, target.parameters(), LoadOptions{.prefix = "encoder"}, "model.safetensors");
        ADD_FAILURE() << "a missing key within the prefix loaded";
    } catch (const state_dict_error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("3 problem(s) loading model.safetensors under prefix 'encoder.':"), std::string::npos) << msg;
        EXPECT_NE(msg.find("missing keys: encoder.scale"), std::string::npos) << msg;
        EXPECT_NE(msg.find("unexpected keys: encoder.stray\n"), std::string::npos) << msg;
        EXPECT_NE(msg.find("size mismatch for encoder.weight: file has " + std::string(dtype_name(dtype_of<Scalar>())) +
                           " [3, 2], parameter is [2, 3]"),
                  std::string::npos)
            << msg;
        EXPECT_EQ(e.report().missing, (std::vector<std::string>{"encoder.scale"}));
        EXPECT_EQ(e.report().unexpected, (std::vector<std::string>{"encoder.stray"}));
    }
    EXPECT_TRUE(target.equals(before));  // all or nothing

    // Only the missing key: still refused, and the message names it with its prefix.
    TensorMap only_missing = checkpoint_of(encoder, decoder);
    only_missing.erase("decoder.bias");
    EXPECT_THROW(load_state_dict(only_missing, target.parameters(), LoadOptions{.prefix = "decoder"}), state_dict_error);
    EXPECT_NO_THROW(load_state_dict(only_missing, target.parameters(), LoadOptions{.prefix = "encoder"}));
}

TYPED_TEST(IoPrefix, NonStrictLoadingWithAPrefixLoadsWhatFitsAndReportsOnlyWithinIt) {
    using Scalar = TypeParam;
    Toy<Scalar> encoder(1), decoder(2), target(3);
    TensorMap checkpoint = checkpoint_of(encoder, decoder);
    checkpoint.erase("encoder.scale");
    const Matrix<Scalar> scale_before = target.scale.value;
    const LoadReport report =
        load_state_dict(checkpoint, target.parameters(), LoadOptions{.strict = false, .prefix = "encoder"});
    EXPECT_EQ(report.loaded, (std::vector<std::string>{"encoder.weight", "encoder.bias"}));
    EXPECT_EQ(report.missing, (std::vector<std::string>{"encoder.scale"}));
    EXPECT_TRUE(report.unexpected.empty());  // the decoder and "step" lie outside the prefix
    EXPECT_EQ(target.weight.value, encoder.weight.value);
    EXPECT_EQ(target.scale.value, scale_before);
}

TYPED_TEST(IoPrefix, AnEmptyPrefixIsTheWholeStateDict) {
    using Scalar = TypeParam;
    Toy<Scalar> source(1), target(2);
    const TensorMap sd = state_dict(source.parameters());
    EXPECT_TRUE(load_state_dict(sd, target.parameters(), LoadOptions{}).complete());
    EXPECT_TRUE(target.equals(source));
    EXPECT_EQ(sub_state_dict(sd, ""), sd);
    EXPECT_EQ(with_prefix(sd, ""), sd);
}

TYPED_TEST(IoPrefix, SubStateDictExtractsOnePrefixUnderShortNamesAndWithPrefixPutsItBack) {
    using Scalar = TypeParam;
    Toy<Scalar> encoder(1), decoder(2);
    TensorMap checkpoint = checkpoint_of(encoder, decoder);
    checkpoint.metadata = {{"format", "pt"}};
    checkpoint.set("encoderx.weight", Tensor(dtype_of<Scalar>(), {9}));

    const TensorMap sub = sub_state_dict(checkpoint, "encoder");
    EXPECT_EQ(sub.names(), (std::vector<std::string>{"bias", "scale", "weight"}));
    EXPECT_EQ(sub.at("weight"), checkpoint.at("encoder.weight"));
    EXPECT_EQ(sub.metadata, checkpoint.metadata);
    EXPECT_EQ(sub_state_dict(checkpoint, "encoder."), sub);
    EXPECT_TRUE(sub_state_dict(checkpoint, "enc").empty());  // a prefix is whole name components

    TensorMap layer = state_dict(encoder.parameters());
    layer.metadata = checkpoint.metadata;
    EXPECT_EQ(sub, layer);
    const TensorMap back = with_prefix(sub, "encoder");
    EXPECT_EQ(back.names(), (std::vector<std::string>{"encoder.bias", "encoder.scale", "encoder.weight"}));
    EXPECT_EQ(sub_state_dict(back, "encoder"), sub);

    // Nested modules: "blocks.0" of "blocks.0.mixer.weight".
    const TensorMap nested = with_prefix(with_prefix(sub, "mixer"), "blocks.0");
    EXPECT_TRUE(nested.contains("blocks.0.mixer.weight"));
    EXPECT_EQ(sub_state_dict(sub_state_dict(nested, "blocks.0"), "mixer"), sub);
    EXPECT_EQ(sub_state_dict(nested, "blocks.0.mixer"), sub);
}

TYPED_TEST(IoPrefix, ALayerLoadsStrictlyFromAModelFileByPrefix) {
    using Scalar = TypeParam;
    Rng rng_a(1), rng_b(2), rng_c(3), rng_x(4);
    const RecurrentOptions options{.input_size = 3, .hidden_size = 5, .num_layers = 2};
    GRU<Scalar> first(options, rng_a), second(options, rng_b), fresh(options, rng_c);
    TensorMap model = with_prefix(state_dict(first.parameters()), "rnn.0");
    for (const auto& [name, tensor] : with_prefix(state_dict(second.parameters()), "rnn.1")) model.set(name, tensor);
    TempPath file("io-prefix");
    save_safetensors(file.path(), model);

    EXPECT_THROW(load_parameters(file.path(), fresh), state_dict_error);
    EXPECT_TRUE(load_parameters(file.path(), fresh, LoadOptions{.prefix = "rnn.1"}).complete());
    const Sequence<Scalar> x = random_sequence<Scalar>(2, 4, 3, rng_x);
    EXPECT_EQ(fresh.forward(x).data, second.forward(x).data);
    EXPECT_TRUE(load_parameters(file.path(), fresh.parameters(), LoadOptions{.prefix = "rnn.0"}).complete());
    EXPECT_EQ(fresh.forward(x).data, first.forward(x).data);

    try {
        load_parameters(file.path(), fresh, LoadOptions{.prefix = "rnn.2"});
        ADD_FAILURE() << "an absent prefix loaded";
    } catch (const state_dict_error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(file.path().string() + " under prefix 'rnn.2.'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("rnn.2.weight_ih_l0"), std::string::npos) << msg;
    }
}

// ---------------------------------------------------------------------------
// A PyTorch fixture through these functions alone: the weights by prefix ("param."), x and
// the states in PyTorch's layouts, and seqnn's outputs back in them.

namespace {

template <typename Scalar>
double tolerance() {
    return std::is_same_v<Scalar, double> ? 1e-10 : 1e-5;
}

TensorMap fixture(const std::string& name) { return load_safetensors(std::filesystem::path(SEQNN_FIXTURE_DIR) / name); }

// Expects the tensors' values to agree within the tolerance, and their shapes exactly.
template <typename Scalar>
void expect_close(const Tensor& actual, const Tensor& expected, const std::string& what) {
    EXPECT_EQ(actual.shape(), expected.shape()) << what;
    const auto a = actual.values<double>(), e = expected.values<double>();
    ASSERT_EQ(a.size(), e.size()) << what;
    using Vector = Eigen::Matrix<double, 1, Eigen::Dynamic>;
    const Eigen::Map<const Vector> av(a.data(), static_cast<Index>(a.size())), ev(e.data(), static_cast<Index>(e.size()));
    EXPECT_LT(relative_error(av, ev), tolerance<Scalar>()) << what;
}

}  // namespace

TYPED_TEST(IoPyTorchFixture, AStackedGruAndLstmMatchPyTorchThroughTheLayoutConversions) {
    using Scalar = TypeParam;
    {
        const TensorMap f = fixture("gru.safetensors");
        Rng rng(1);
        GRU<Scalar> gru({.input_size = 4, .hidden_size = 6, .num_layers = 2}, rng);
        EXPECT_THROW(load_state_dict(f, gru.parameters()), state_dict_error);  // x, y, h0, ... are not weights
        load_state_dict(f, gru.parameters(), LoadOptions{.prefix = "param"});
        const Sequence<Scalar> x = sequence_from_tensor<Scalar>(f.at("x"), any_size, any_size, 4);
        State<Scalar> state = gru.initial_state(x.batch);
        state.tensors[0] = state_from_tensor<Scalar>(f.at("h0"), 2, x.batch, 6);
        const Sequence<Scalar> y = gru.forward(x, &state);
        expect_close<Scalar>(tensor_from_sequence(y), f.at("y"), "gru y");
        expect_close<Scalar>(tensor_from_state(state.tensors[0], 2), f.at("h_n"), "gru h_n");
    }
    {
        const TensorMap f = fixture("lstm.safetensors");
        Rng rng(1);
        LSTM<Scalar> lstm({.input_size = 4, .hidden_size = 6, .num_layers = 2}, rng);
        load_state_dict(f, lstm.parameters(), LoadOptions{.prefix = "param."});
        const Sequence<Scalar> x = sequence_from_tensor<Scalar>(f.at("x"));
        State<Scalar> state = lstm.initial_state(x.batch);  // {h, c}: PyTorch's (h0, c0)
        state.tensors[0] = state_from_tensor<Scalar>(f.at("h0"), 2, x.batch, 6);
        state.tensors[1] = state_from_tensor<Scalar>(f.at("c0"), 2, x.batch, 6);
        const Sequence<Scalar> y = lstm.forward(x, &state);
        expect_close<Scalar>(tensor_from_sequence(y), f.at("y"), "lstm y");
        expect_close<Scalar>(tensor_from_state(state.tensors[0], 2), f.at("h_n"), "lstm h_n");
        expect_close<Scalar>(tensor_from_state(state.tensors[1], 2), f.at("c_n"), "lstm c_n");
    }
}

TYPED_TEST(IoPyTorchFixture, AMinGruMatchesTheReferenceWithItsHiddenInTheB1ELayout) {
    using Scalar = TypeParam;
    const TensorMap f = fixture("mingru.safetensors");
    // The fixture keeps the reference's (B, 1, E) hidden squeezed to (B, E); restore it, as
    // the reference takes and returns it.
    const auto unsqueeze = [](const Tensor& t) {
        const std::vector<Index>& s = t.shape();
        const auto bytes = t.bytes();
        return Tensor(t.dtype(), {s.at(0), 1, s.at(1)}, std::vector<std::byte>(bytes.begin(), bytes.end()));
    };
    const Tensor h0 = unsqueeze(f.at("h0")), h_n = unsqueeze(f.at("h_n"));

    Rng rng(1);
    MinGRU<Scalar> mingru({.input_size = 4, .expansion = 1.5, .bias = false,
                           .activation = HiddenActivation::PositiveG, .mode = MinRNNMode::LogSpace},
                          rng);
    load_state_dict(f, mingru.parameters(), LoadOptions{.prefix = "param"});
    const Sequence<Scalar> x = sequence_from_tensor<Scalar>(f.at("x"));
    State<Scalar> state = mingru.initial_state(x.batch);
    state.tensors[0] = min_rnn_state_from_tensor<Scalar>(h0, x.batch, 6);
    const Sequence<Scalar> y = mingru.forward(x, &state);
    expect_close<Scalar>(tensor_from_sequence(y), f.at("y"), "mingru y");
    expect_close<Scalar>(tensor_from_min_rnn_state(state.tensors[0]), h_n, "mingru h_n");
}
