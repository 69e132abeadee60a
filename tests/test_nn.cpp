// The building blocks of include/seqnn/nn/: Linear, Embedding, LayerNorm, RMSNorm and
// the activations. Each against a plain-loop reference in double on odd sizes, float
// against double, finite-difference gradients of every parameter and the input, bad
// input, and PyTorch's parameter names and initialisation.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>
#include "layer_instances.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <vector>

using namespace seqnn;
using seqnn::testing::check_block_gradients;
using seqnn::testing::expect_gradients_match;
using seqnn::testing::expect_shape_error;
using seqnn::testing::float_tolerance;
using seqnn::testing::GradientReport;
using seqnn::testing::random_matrix;
using seqnn::testing::reference_product;
using seqnn::testing::relative_error;

namespace {

// Odd sizes, so that no vector width divides them.
constexpr Index N = 37;       // rows (B*T)
constexpr Index D = 13;       // features in
constexpr Index O = 11;       // features out (Linear)
constexpr Index V = 50;       // vocabulary (Embedding)
constexpr Index BIG_N = 4001;  // enough rows (BIG_N * D >= 2^15) for the norms' threaded path

// Every tensor got a report, in this order: the parameters, then the input.
void expect_reports_for(const std::vector<GradientReport>& reports, const std::vector<std::string>& names) {
    ASSERT_EQ(reports.size(), names.size());
    for (std::size_t i = 0; i < names.size(); ++i) EXPECT_EQ(reports[i].name, names[i]);
}

std::vector<std::string> names_of(const ParameterList<double>& params) {
    std::vector<std::string> names;
    for (const auto& p : params) names.push_back(p.name);
    return names;
}

template <typename Scalar>
void set_random(Parameter<Scalar>& p, Rng& rng, double scale = 1.0) {
    p.value = random_matrix<Scalar>(p.value.rows(), p.value.cols(), rng, scale);
}

// ---------------------------------------------------------------------------
// Plain-loop references, in double.

Matrix<double> reference_linear(const Matrix<double>& x, const Linear<double>& layer) {
    Matrix<double> y(x.rows(), layer.out_features());
    for (Index i = 0; i < x.rows(); ++i)
        for (Index j = 0; j < layer.out_features(); ++j) {
            double s = layer.has_bias() ? layer.bias.value(0, j) : 0.0;
            for (Index k = 0; k < layer.in_features(); ++k) s += x(i, k) * layer.weight.value(j, k);
            y(i, j) = s;
        }
    return y;
}

Matrix<double> reference_layer_norm(const Matrix<double>& x, const LayerNorm<double>& norm) {
    Matrix<double> y(x.rows(), x.cols());
    const Index d = x.cols();
    for (Index i = 0; i < x.rows(); ++i) {
        double mean = 0;
        for (Index j = 0; j < d; ++j) mean += x(i, j);
        mean /= d;
        double var = 0;
        for (Index j = 0; j < d; ++j) var += (x(i, j) - mean) * (x(i, j) - mean);
        var /= d;
        for (Index j = 0; j < d; ++j) {
            double v = (x(i, j) - mean) / std::sqrt(var + norm.eps());
            if (norm.has_weight()) v *= norm.weight.value(0, j);
            if (norm.has_bias()) v += norm.bias.value(0, j);
            y(i, j) = v;
        }
    }
    return y;
}

Matrix<double> reference_rms_norm(const Matrix<double>& x, const RMSNorm<double>& norm) {
    Matrix<double> y(x.rows(), x.cols());
    const Index d = x.cols();
    for (Index i = 0; i < x.rows(); ++i) {
        double mean_square = 0;
        for (Index j = 0; j < d; ++j) mean_square += x(i, j) * x(i, j);
        mean_square /= d;
        for (Index j = 0; j < d; ++j) {
            double v = x(i, j) / std::sqrt(mean_square + norm.eps());
            if (norm.has_weight()) v *= norm.weight.value(0, j);
            y(i, j) = v;
        }
    }
    return y;
}

// PyTorch's formulas, one scalar at a time.
double reference_activation(Activation a, double v) {
    switch (a) {
        case Activation::Identity: return v;
        case Activation::Tanh: return std::tanh(v);
        case Activation::Sigmoid: return 1.0 / (1.0 + std::exp(-v));
        case Activation::ReLU: return v > 0 ? v : 0.0;
        case Activation::GELU: return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    }
    return NAN;
}

template <typename Scalar>
Matrix<Scalar> apply_activation(Activation a, Matrix<Scalar> z) {
    activation_forward<Scalar>(a, z);
    return z;
}

// The three shapes of PyTorch's LayerNorm: affine with bias, affine without bias, none.
struct NormConfig {
    bool affine;
    bool bias;
    std::string name() const { return !affine ? "no_affine" : bias ? "affine_bias" : "affine_no_bias"; }
};
const std::vector<NormConfig> kLayerNormConfigs = {{true, true}, {true, false}, {false, false}};

// A LayerNorm with random (not 1 and 0) weight and bias, so that the affine part is tested.
template <typename Scalar>
LayerNorm<Scalar> random_layer_norm(const NormConfig& c, Index dim, Rng& rng) {
    LayerNorm<Scalar> norm(dim, Scalar(1e-5), c.affine, c.bias);
    if (norm.has_weight()) set_random(norm.weight, rng, 2.0);
    if (norm.has_bias()) set_random(norm.bias, rng, 2.0);
    return norm;
}

template <typename Scalar>
RMSNorm<Scalar> random_rms_norm(bool affine, Index dim, Rng& rng) {
    RMSNorm<Scalar> norm(dim, std::numeric_limits<Scalar>::epsilon(), affine);
    if (norm.has_weight()) set_random(norm.weight, rng, 2.0);
    return norm;
}

}  // namespace

// ===========================================================================
// Linear

TEST(Linear, ForwardMatchesPlainLoopsInDouble) {
    for (bool bias : {true, false}) {
        Rng rng(1);
        const Linear<double> layer(D, O, bias, rng);
        const Matrix<double> x = random_matrix<double>(N, D, rng);
        EXPECT_LT(relative_error(layer.forward(x), reference_linear(x, layer)), 1e-14) << "bias=" << bias;
    }
}

TEST(Linear, ForwardWritesIntoAStridedStepView) {
    Rng rng(2);
    const Linear<double> layer(D, O, true, rng);
    const Index B = 3, T = 5;
    const Sequence<double> x = seqnn::testing::random_sequence<double>(B, T, D, rng);
    Sequence<double> y(B, T, O);
    for (Index t = 0; t < T; ++t) {
        auto y_t = y.at_step(t);  // (B, O), rows T*O apart
        layer.forward(x.at_step(t), y_t);
    }
    EXPECT_LT(relative_error(y.data, reference_linear(x.data, layer)), 1e-14);
}

TEST(Linear, FloatAgreesWithDouble) {
    Rng rng_d(3), rng_f(3), data_rng(4);
    const Linear<double> layer_d(D, O, true, rng_d);
    const Linear<float> layer_f(D, O, true, rng_f);  // the same draws, rounded to float
    const Matrix<double> x = random_matrix<double>(N, D, data_rng);
    EXPECT_LT(relative_error(layer_f.forward(x.cast<float>()), layer_d.forward(x)), float_tolerance(D));
}

TEST(Linear, GradientsOfWeightBiasAndInputMatchFiniteDifferences) {
    for (bool bias : {true, false}) {
        Rng rng(5);
        Linear<double> layer(D, O, bias, rng);
        ParameterList<double> params;
        layer.collect_parameters("", params);
        const Matrix<double> x = random_matrix<double>(N, D, rng);
        const auto reports = check_block_gradients([&](const Matrix<double>& in) { return layer.forward(in); },
                                                   [&](const Matrix<double>& in, const Matrix<double>& dy) {
                                                       return layer.backward(in, dy);
                                                   },
                                                   params, x);
        expect_reports_for(reports, bias ? std::vector<std::string>{"weight", "bias", "input"}
                                         : std::vector<std::string>{"weight", "input"});
        expect_gradients_match(reports, 1e-6);
    }
}

TEST(Linear, BackwardAccumulatesIntoGradients) {
    Rng rng(6);
    Linear<double> layer(D, O, true, rng);
    const Matrix<double> x = random_matrix<double>(N, D, rng), dy = random_matrix<double>(N, O, rng);
    layer.backward(x, dy);
    const Matrix<double> once = layer.weight.grad, once_bias = layer.bias.grad;
    layer.backward(x, dy);
    EXPECT_LT(relative_error(layer.weight.grad, Matrix<double>(2 * once)), 1e-15);
    EXPECT_LT(relative_error(layer.bias.grad, Matrix<double>(2 * once_bias)), 1e-15);
}

TEST(Linear, RejectsInputOfWrongWidthNamingBothShapes) {
    Rng rng(7);
    Linear<double> layer(D, O, true, rng);
    const Matrix<double> x = random_matrix<double>(N, D - 1, rng);
    expect_shape_error([&] { layer.forward(x); }, {"Linear", "(37, 12)", "(N, 13)"});
    expect_shape_error([&] { layer.backward(x, Matrix<double>::Zero(N, O)); }, {"Linear", "(37, 12)", "(N, 13)"});
}

TEST(Linear, RejectsOutputOrGradientOfWrongShapeNamingBothShapes) {
    Rng rng(8);
    Linear<double> layer(D, O, true, rng);
    const Matrix<double> x = random_matrix<double>(N, D, rng);
    Matrix<double> y(N, O + 1);
    expect_shape_error([&] { layer.forward(x, y); }, {"Linear", "(37, 12)", "(37, 11)"});
    expect_shape_error([&] { layer.backward(x, Matrix<double>::Zero(N - 1, O)); },
                       {"Linear.backward", "(36, 11)", "(37, 11)"});
}

TEST(Linear, RejectsNonPositiveSizes) {
    Rng rng(9);
    expect_shape_error([&] { Linear<double>(0, O, true, rng); }, {"Linear", "in=0", "out=11"});
    expect_shape_error([&] { Linear<double>(D, -3, true, rng); }, {"Linear", "in=13", "out=-3"});
}

TEST(Linear, ParametersAreNamedWeightAndBiasWithPyTorchShapesAndInit) {
    Rng rng(10);
    Linear<float> layer(D, O, true, rng);
    ParameterList<float> params;
    layer.collect_parameters("proj.", params);
    ASSERT_EQ(params.size(), 2u);
    EXPECT_EQ(params[0].name, "proj.weight");
    EXPECT_EQ(params[0].param->shape, (std::vector<Index>{O, D}));
    EXPECT_EQ(params[1].name, "proj.bias");
    EXPECT_EQ(params[1].param->shape, (std::vector<Index>{O}));
    // U(-1/sqrt(in), 1/sqrt(in)) for both.
    for (const auto& p : params) EXPECT_LE(p.param->value.cwiseAbs().maxCoeff(), 1.0f / std::sqrt(float(D)));

    Linear<float> no_bias(D, O, false, rng);
    ParameterList<float> only_weight;
    no_bias.collect_parameters("", only_weight);
    ASSERT_EQ(only_weight.size(), 1u);
    EXPECT_EQ(only_weight[0].name, "weight");
}

// ===========================================================================
// Embedding

TEST(Embedding, ForwardLooksUpOneRowPerId) {
    Rng rng(20);
    const Embedding<double> table(V, D, rng);
    std::vector<int> ids(N);
    for (Index i = 0; i < N; ++i) ids[i] = static_cast<int>((i * 7 + 3) % V);
    ids[0] = 0;
    ids[1] = static_cast<int>(V - 1);
    const Matrix<double> y = table.forward(ids);
    ASSERT_EQ(y.rows(), N);
    ASSERT_EQ(y.cols(), D);
    Matrix<double> expected(N, D);
    for (Index i = 0; i < N; ++i)
        for (Index j = 0; j < D; ++j) expected(i, j) = table.weight.value(ids[i], j);
    EXPECT_EQ(relative_error(y, expected), 0.0);
}

TEST(Embedding, FloatAgreesWithDouble) {
    Rng rng_d(21), rng_f(21);
    const Embedding<double> table_d(V, D, rng_d);
    const Embedding<float> table_f(V, D, rng_f);
    const std::vector<int> ids = {4, 49, 0, 4, 17};
    EXPECT_LT(relative_error(table_f.forward(ids), table_d.forward(ids)), float_tolerance(1));
}

TEST(Embedding, AcceptsAnEigenIntVectorThroughASpan) {
    Rng rng(22);
    const Embedding<double> table(V, D, rng);
    const Eigen::VectorXi ids_eigen = (Eigen::VectorXi(4) << 3, 1, 4, 1).finished();
    const std::vector<int> ids_vector = {3, 1, 4, 1};
    const Matrix<double> y =
        table.forward(std::span<const int>(ids_eigen.data(), static_cast<std::size_t>(ids_eigen.size())));
    EXPECT_EQ(relative_error(y, table.forward(ids_vector)), 0.0);
}

TEST(Embedding, BackwardScatterAddsSoRepeatedIdsAccumulate) {
    Rng rng(23);
    Embedding<double> table(V, D, rng);
    const std::vector<int> ids = {2, 0, 2, 2, 7};
    const Matrix<double> dy = random_matrix<double>(5, D, rng);
    table.backward(ids, dy);
    Matrix<double> expected = Matrix<double>::Zero(V, D);
    expected.row(2) = dy.row(0) + dy.row(2) + dy.row(3);
    expected.row(0) = dy.row(1);
    expected.row(7) = dy.row(4);
    EXPECT_LT(relative_error(table.weight.grad, expected), 1e-15);
}

TEST(Embedding, GradientOfWeightMatchesFiniteDifferences) {
    Rng rng(24);
    Embedding<double> table(V, D, rng);
    ParameterList<double> params;
    table.collect_parameters("", params);
    std::vector<int> ids(N);
    for (Index i = 0; i < N; ++i) ids[i] = static_cast<int>((i * i) % 23);  // repeats, and rows never used
    const auto reports = check_block_gradients([&](const Matrix<double>&) { return table.forward(ids); },
                                               [&](const Matrix<double>&, const Matrix<double>& dy) {
                                                   table.backward(ids, dy);
                                                   return Matrix<double>();  // ids take no gradient
                                               },
                                               params, Matrix<double>());
    expect_reports_for(reports, {"weight"});
    expect_gradients_match(reports, 1e-6);
}

TEST(Embedding, InitialisesFromTheStandardNormalLikePyTorch) {
    Rng rng(25);
    const Embedding<double> table(400, 25, rng);  // 10,000 draws: the mean's sd is 0.01
    const double mean = table.weight.value.mean();
    const double sd = std::sqrt((table.weight.value.array() - mean).square().mean());
    EXPECT_NEAR(mean, 0.0, 0.05);
    EXPECT_NEAR(sd, 1.0, 0.05);
    EXPECT_GT(table.weight.value.cwiseAbs().maxCoeff(), 3.0);  // not a bounded uniform
}

TEST(Embedding, RejectsOutOfRangeIdNamingTheIdAndTheVocabularySize) {
    Rng rng(26);
    Embedding<double> table(V, D, rng);
    expect_shape_error([&] { table.forward(std::vector<int>{1, 2, 50}); },
                       {"Embedding", "id 50", "position 2", "vocabulary of 50"});
    expect_shape_error([&] { table.forward(std::vector<int>{-1}); }, {"Embedding", "id -1", "vocabulary of 50"});
    expect_shape_error([&] { table.backward(std::vector<int>{60}, Matrix<double>::Zero(1, D)); },
                       {"Embedding", "id 60", "vocabulary of 50"});
}

TEST(Embedding, LeavesTheOutputUntouchedWhenAnIdIsBad) {
    Rng rng(27);
    const Embedding<double> table(V, D, rng);
    Matrix<double> y = Matrix<double>::Constant(3, D, 42.0);
    EXPECT_THROW(table.forward(std::vector<int>{1, 2, 99}, y), shape_error);
    EXPECT_TRUE((y.array() == 42.0).all());
}

TEST(Embedding, RejectsOutputOrGradientOfWrongShapeNamingBothShapes) {
    Rng rng(28);
    Embedding<double> table(V, D, rng);
    const std::vector<int> ids = {1, 2, 3};
    Matrix<double> y(3, D + 1);
    expect_shape_error([&] { table.forward(ids, y); }, {"Embedding", "(3, 14)", "(3, 13)"});
    expect_shape_error([&] { table.backward(ids, Matrix<double>::Zero(2, D)); },
                       {"Embedding.backward", "(2, 13)", "(3, 13)"});
    expect_shape_error([&] { Embedding<double>(0, D, rng); }, {"Embedding", "num_embeddings=0"});
}

TEST(Embedding, ParameterIsNamedWeightWithPyTorchShape) {
    Rng rng(29);
    Embedding<float> table(V, D, rng);
    ParameterList<float> params;
    table.collect_parameters("embed.", params);
    ASSERT_EQ(params.size(), 1u);
    EXPECT_EQ(params[0].name, "embed.weight");
    EXPECT_EQ(params[0].param->shape, (std::vector<Index>{V, D}));
}

// ===========================================================================
// LayerNorm

TEST(LayerNorm, ForwardMatchesPlainLoopsInDouble) {
    for (const auto& c : kLayerNormConfigs)
        for (Index n : {N, Index(1), BIG_N}) {
            Rng rng(30);
            const LayerNorm<double> norm = random_layer_norm<double>(c, D, rng);
            const Matrix<double> x = (random_matrix<double>(n, D, rng, 3.0).array() + 5.0).matrix();
            EXPECT_LT(relative_error(norm.forward(x), reference_layer_norm(x, norm)), 1e-13)
                << c.name() << " N=" << n;
        }
}

TEST(LayerNorm, NormalisesEachRowToZeroMeanAndUnitVariance) {
    Rng rng(31);
    const LayerNorm<double> norm(D);  // weight 1, bias 0
    const Matrix<double> y = norm.forward(random_matrix<double>(N, D, rng, 4.0));
    for (Index i = 0; i < N; ++i) {
        EXPECT_NEAR(y.row(i).mean(), 0.0, 1e-14);
        EXPECT_NEAR(y.row(i).squaredNorm() / D, 1.0, 1e-3);  // 1 - eps / var
    }
}

TEST(LayerNorm, ConstantRowGivesTheBias) {
    Rng rng(32);
    const LayerNorm<double> norm = random_layer_norm<double>({true, true}, D, rng);
    const Matrix<double> y = norm.forward(Matrix<double>::Constant(2, D, 7.5));
    for (Index i = 0; i < 2; ++i) EXPECT_LT(relative_error(y.row(i), norm.bias.value.row(0)), 1e-15);
}

TEST(LayerNorm, InPlaceEqualsOutOfPlace) {
    Rng rng(33);
    const LayerNorm<double> norm = random_layer_norm<double>({true, true}, D, rng);
    Matrix<double> x = random_matrix<double>(N, D, rng);
    const Matrix<double> expected = norm.forward(x);
    norm.forward(x, x);
    EXPECT_EQ(relative_error(x, expected), 0.0);
}

TEST(LayerNorm, FloatAgreesWithDouble) {
    for (const auto& c : kLayerNormConfigs) {
        Rng rng(34), data_rng(35);
        const LayerNorm<double> norm_d = random_layer_norm<double>(c, D, rng);
        LayerNorm<float> norm_f(D, 1e-5f, c.affine, c.bias);
        if (c.affine) norm_f.weight.value = norm_d.weight.value.cast<float>();
        if (c.bias) norm_f.bias.value = norm_d.bias.value.cast<float>();
        // A mean of 10 against a spread of 1: the two-pass variance keeps float accurate.
        const Matrix<double> x = (random_matrix<double>(N, D, data_rng).array() + 10.0).matrix();
        EXPECT_LT(relative_error(norm_f.forward(x.cast<float>()), norm_d.forward(x)), 10 * float_tolerance(D))
            << c.name();
    }
}

TEST(LayerNorm, GradientsOfWeightBiasAndInputMatchFiniteDifferences) {
    for (const auto& c : kLayerNormConfigs)
        for (Index n : {N, BIG_N}) {
            std::printf("LayerNorm %s N=%ld\n", c.name().c_str(), static_cast<long>(n));
            Rng rng(36);
            LayerNorm<double> norm = random_layer_norm<double>(c, D, rng);
            ParameterList<double> params;
            norm.collect_parameters("", params);
            const Matrix<double> x = (random_matrix<double>(n, D, rng, 2.0).array() + 1.0).matrix();
            const auto reports = check_block_gradients([&](const Matrix<double>& in) { return norm.forward(in); },
                                                       [&](const Matrix<double>& in, const Matrix<double>& dy) {
                                                           return norm.backward(in, dy);
                                                       },
                                                       params, x, 7, n == N ? 1000 : 60);
            std::vector<std::string> expected = names_of(params);
            expected.push_back("input");
            expect_reports_for(reports, expected);
            expect_gradients_match(reports, 1e-6);
        }
}

TEST(LayerNorm, ThreadedRowsGiveBitwiseTheSerialResult) {
    Rng rng(38);
    LayerNorm<double> norm = random_layer_norm<double>({true, true}, D, rng);
    const Matrix<double> x = random_matrix<double>(BIG_N, D, rng), dy = random_matrix<double>(BIG_N, D, rng);
    const auto run = [&](int threads) {
        set_num_threads(threads);
        norm.weight.zero_grad();
        norm.bias.zero_grad();
        std::vector<Matrix<double>> r = {norm.forward(x), norm.backward(x, dy)};
        r.push_back(norm.weight.grad);
        r.push_back(norm.bias.grad);
        return r;
    };
    const int threads = num_threads();
    const auto serial = run(1), threaded = run(std::max(threads, 2));
    set_num_threads(threads);
    for (std::size_t k = 0; k < serial.size(); ++k) EXPECT_EQ(relative_error(threaded[k], serial[k]), 0.0) << k;
}

TEST(LayerNorm, StartsWithWeightOneAndBiasZeroNamedLikePyTorch) {
    LayerNorm<float> norm(D);
    EXPECT_FLOAT_EQ(norm.eps(), 1e-5f);
    ParameterList<float> params;
    norm.collect_parameters("norm1.", params);
    ASSERT_EQ(params.size(), 2u);
    EXPECT_EQ(params[0].name, "norm1.weight");
    EXPECT_EQ(params[0].param->shape, (std::vector<Index>{D}));
    EXPECT_TRUE((params[0].param->value.array() == 1.0f).all());
    EXPECT_EQ(params[1].name, "norm1.bias");
    EXPECT_EQ(params[1].param->shape, (std::vector<Index>{D}));
    EXPECT_TRUE((params[1].param->value.array() == 0.0f).all());

    LayerNorm<float> no_bias(D, 1e-5f, true, false), no_affine(D, 1e-5f, false);
    ParameterList<float> weight_only, none;
    no_bias.collect_parameters("", weight_only);
    no_affine.collect_parameters("", none);
    ASSERT_EQ(weight_only.size(), 1u);
    EXPECT_EQ(weight_only[0].name, "weight");
    EXPECT_TRUE(none.empty());
}

TEST(LayerNorm, RejectsWrongFeatureSizeNamingBothShapes) {
    Rng rng(37);
    LayerNorm<double> norm(D);
    const Matrix<double> x = random_matrix<double>(N, D - 1, rng);
    expect_shape_error([&] { norm.forward(x); }, {"LayerNorm", "(37, 12)", "(N, 13)"});
    expect_shape_error([&] { norm.backward(x, x); }, {"LayerNorm", "(37, 12)", "(N, 13)"});
    const Matrix<double> good = random_matrix<double>(N, D, rng);
    expect_shape_error([&] { norm.backward(good, Matrix<double>::Zero(N, D - 2)); },
                       {"LayerNorm.backward", "(37, 11)", "(37, 13)"});
    Matrix<double> y(N - 1, D);
    expect_shape_error([&] { norm.forward(good, y); }, {"LayerNorm", "(36, 13)", "(37, 13)"});
    expect_shape_error([&] { norm.backward(good, good, y); }, {"LayerNorm.backward", "dx", "(36, 13)", "(37, 13)"});
    expect_shape_error([&] { LayerNorm<double>(0); }, {"LayerNorm", "dim"});
}

TEST(LayerNorm, BackwardIntoAViewEqualsTheReturningOne) {
    Rng rng(38);
    LayerNorm<double> a(D), b(D);
    const Matrix<double> x = random_matrix<double>(N, D, rng), dy = random_matrix<double>(N, D, rng);
    Matrix<double> wide = Matrix<double>::Zero(N, D + 4);  // dx goes to its middle columns
    b.backward(x, dy, wide.middleCols(2, D));
    EXPECT_EQ(relative_error(wide.middleCols(2, D), a.backward(x, dy)), 0.0);
    EXPECT_EQ(relative_error(b.weight.grad, a.weight.grad), 0.0);
    EXPECT_EQ(wide.leftCols(2).norm() + wide.rightCols(2).norm(), 0.0);  // nothing beside it written
}

// ===========================================================================
// RMSNorm

TEST(RMSNorm, ForwardMatchesPlainLoopsInDouble) {
    for (bool affine : {true, false})
        for (Index n : {N, Index(1), BIG_N}) {
            Rng rng(40);
            const RMSNorm<double> norm = random_rms_norm<double>(affine, D, rng);
            const Matrix<double> x = random_matrix<double>(n, D, rng, 3.0);
            EXPECT_LT(relative_error(norm.forward(x), reference_rms_norm(x, norm)), 1e-13)
                << "affine=" << affine << " N=" << n;
        }
}

TEST(RMSNorm, DefaultEpsIsTheMachineEpsilonLikePyTorchsNone) {
    EXPECT_EQ(RMSNorm<float>(D).eps(), std::numeric_limits<float>::epsilon());
    EXPECT_EQ(RMSNorm<double>(D).eps(), std::numeric_limits<double>::epsilon());
}

TEST(RMSNorm, ZeroRowStaysZeroAndFinite) {
    const RMSNorm<float> norm(D);
    const Matrix<float> y = norm.forward(Matrix<float>::Zero(2, D));
    EXPECT_TRUE(y.allFinite());
    EXPECT_TRUE((y.array() == 0.0f).all());
}

TEST(RMSNorm, InPlaceEqualsOutOfPlace) {
    Rng rng(41);
    const RMSNorm<double> norm = random_rms_norm<double>(true, D, rng);
    Matrix<double> x = random_matrix<double>(N, D, rng);
    const Matrix<double> expected = norm.forward(x);
    norm.forward(x, x);
    EXPECT_EQ(relative_error(x, expected), 0.0);
}

// LayerNorm and RMSNorm share their row loops (nn/row_norm.hpp): RMSNorm's backward
// writes into a given dx as LayerNorm's does, and checks it.
TEST(RMSNorm, BackwardIntoAGivenDxEqualsTheReturnedOne) {
    Rng rng(45);
    RMSNorm<double> norm = random_rms_norm<double>(true, D, rng);
    const Matrix<double> x = random_matrix<double>(N, D, rng), dy = random_matrix<double>(N, D, rng);
    const Matrix<double> expected = norm.backward(x, dy);
    const Matrix<double> weight_grad = norm.weight.grad;
    Matrix<double> dx(N, D);
    norm.backward(x, dy, dx);
    EXPECT_EQ(dx, expected);
    EXPECT_EQ(norm.weight.grad, 2 * weight_grad);
    Matrix<double> wrong(N, D + 1);
    seqnn::testing::expect_shape_error([&] { norm.backward(x, dy, wrong); }, {"RMSNorm.backward", "dx"});
}

TEST(RMSNorm, FloatAgreesWithDouble) {
    for (bool affine : {true, false}) {
        Rng rng(42), data_rng(43);
        const RMSNorm<double> norm_d = random_rms_norm<double>(affine, D, rng);
        RMSNorm<float> norm_f(D, std::numeric_limits<float>::epsilon(), affine);
        if (affine) norm_f.weight.value = norm_d.weight.value.cast<float>();
        const Matrix<double> x = random_matrix<double>(N, D, data_rng, 3.0);
        EXPECT_LT(relative_error(norm_f.forward(x.cast<float>()), norm_d.forward(x)), 10 * float_tolerance(D))
            << "affine=" << affine;
    }
}

TEST(RMSNorm, GradientsOfWeightAndInputMatchFiniteDifferences) {
    for (bool affine : {true, false})
        for (Index n : {N, BIG_N}) {
            std::printf("RMSNorm affine=%d N=%ld\n", affine ? 1 : 0, static_cast<long>(n));
            Rng rng(44);
            RMSNorm<double> norm = random_rms_norm<double>(affine, D, rng);
            ParameterList<double> params;
            norm.collect_parameters("", params);
            const Matrix<double> x = random_matrix<double>(n, D, rng, 2.0);
            const auto reports = check_block_gradients([&](const Matrix<double>& in) { return norm.forward(in); },
                                                       [&](const Matrix<double>& in, const Matrix<double>& dy) {
                                                           return norm.backward(in, dy);
                                                       },
                                                       params, x, 7, n == N ? 1000 : 60);
            expect_reports_for(reports, affine ? std::vector<std::string>{"weight", "input"}
                                               : std::vector<std::string>{"input"});
            expect_gradients_match(reports, 1e-6);
        }
}

TEST(RMSNorm, ThreadedRowsGiveBitwiseTheSerialResult) {
    Rng rng(46);
    RMSNorm<double> norm = random_rms_norm<double>(true, D, rng);
    const Matrix<double> x = random_matrix<double>(BIG_N, D, rng), dy = random_matrix<double>(BIG_N, D, rng);
    const auto run = [&](int threads) {
        set_num_threads(threads);
        norm.weight.zero_grad();
        std::vector<Matrix<double>> r = {norm.forward(x), norm.backward(x, dy)};
        r.push_back(norm.weight.grad);
        return r;
    };
    const int threads = num_threads();
    const auto serial = run(1), threaded = run(std::max(threads, 2));
    set_num_threads(threads);
    for (std::size_t k = 0; k < serial.size(); ++k) EXPECT_EQ(relative_error(threaded[k], serial[k]), 0.0) << k;
}

TEST(RMSNorm, StartsWithWeightOneNamedLikePyTorch) {
    RMSNorm<float> norm(D);
    ParameterList<float> params;
    norm.collect_parameters("norm.", params);
    ASSERT_EQ(params.size(), 1u);
    EXPECT_EQ(params[0].name, "norm.weight");
    EXPECT_EQ(params[0].param->shape, (std::vector<Index>{D}));
    EXPECT_TRUE((params[0].param->value.array() == 1.0f).all());

    RMSNorm<float> no_affine(D, 1e-6f, false);
    ParameterList<float> none;
    no_affine.collect_parameters("", none);
    EXPECT_TRUE(none.empty());
}

TEST(RMSNorm, RejectsWrongFeatureSizeNamingBothShapes) {
    Rng rng(45);
    RMSNorm<double> norm(D);
    const Matrix<double> x = random_matrix<double>(N, D + 1, rng);
    expect_shape_error([&] { norm.forward(x); }, {"RMSNorm", "(37, 14)", "(N, 13)"});
    expect_shape_error([&] { norm.backward(x, x); }, {"RMSNorm", "(37, 14)", "(N, 13)"});
    const Matrix<double> good = random_matrix<double>(N, D, rng);
    expect_shape_error([&] { norm.backward(good, Matrix<double>::Zero(N + 1, D)); },
                       {"RMSNorm.backward", "(38, 13)", "(37, 13)"});
    Matrix<double> y(N, D - 1);
    expect_shape_error([&] { norm.forward(good, y); }, {"RMSNorm", "(37, 12)", "(37, 13)"});
    expect_shape_error([&] { RMSNorm<double>(-1); }, {"RMSNorm", "dim"});
}

// ===========================================================================
// Activations

namespace {

class ActivationFunction : public ::testing::TestWithParam<Activation> {};

std::string activation_test_name(const ::testing::TestParamInfo<Activation>& info) { return to_string(info.param); }

}  // namespace

TEST_P(ActivationFunction, ForwardMatchesPlainLoopsInDouble) {
    const Activation a = GetParam();
    Rng rng(50);
    const Matrix<double> x = random_matrix<double>(N, D, rng, 8.0);  // into the saturated tails
    Matrix<double> expected(N, D);
    for (Index i = 0; i < x.size(); ++i) expected.data()[i] = reference_activation(a, x.data()[i]);
    EXPECT_LT(relative_error(apply_activation(a, x), expected), 1e-15);
}

TEST_P(ActivationFunction, FloatAgreesWithDouble) {
    const Activation a = GetParam();
    Rng rng(51);
    const Matrix<double> x = random_matrix<double>(N, D, rng, 20.0);
    EXPECT_LT(relative_error(apply_activation<float>(a, x.cast<float>()), apply_activation(a, x)),
              float_tolerance(1));
}

TEST_P(ActivationFunction, ForwardOnAStridedStepViewTouchesOnlyThatStep) {
    const Activation a = GetParam();
    Rng rng(52);
    const Index B = 3, T = 4;
    Sequence<double> x = seqnn::testing::random_sequence<double>(B, T, D, rng, 3.0);
    const Sequence<double> before = x;
    auto step = x.at_step(2);  // (B, D), rows T*D apart
    activation_forward<double>(a, step);
    for (Index t = 0; t < T; ++t) {
        const Matrix<double> expected =
            t == 2 ? apply_activation(a, Matrix<double>(before.at_step(t))) : Matrix<double>(before.at_step(t));
        EXPECT_EQ(relative_error(Matrix<double>(x.at_step(t)), expected), 0.0) << "t=" << t;
    }
}

TEST_P(ActivationFunction, GradientMatchesFiniteDifferences) {
    const Activation a = GetParam();
    Rng rng(53);
    Matrix<double> x = random_matrix<double>(N, D, rng, 3.0);
    // Keep clear of ReLU's kink at 0, where the derivative is not defined.
    for (Index i = 0; i < x.size(); ++i)
        if (std::abs(x.data()[i]) < 1e-3) x.data()[i] = 0.5;
    const auto reports = check_block_gradients(
        [&](const Matrix<double>& in) { return apply_activation(a, in); },
        [&](const Matrix<double>& in, const Matrix<double>& dy) {
            const Matrix<double> out = apply_activation(a, in);
            Matrix<double> grad = dy;
            activation_backward<double>(a, in, out, grad);
            return grad;
        },
        ParameterList<double>{}, x);
    expect_reports_for(reports, {"input"});
    expect_gradients_match(reports, 1e-6);
}

TEST_P(ActivationFunction, BackwardRejectsMismatchedShapesNamingThem) {
    const Activation a = GetParam();
    const Matrix<double> pre = Matrix<double>::Zero(N, D), out = Matrix<double>::Zero(N, D - 1);
    Matrix<double> grad = Matrix<double>::Zero(N, D);
    expect_shape_error([&] { activation_backward<double>(a, pre, out, grad); },
                       {"activation_backward(" + to_string(a) + ")", "(37, 12)", "(37, 13)"});
}

INSTANTIATE_TEST_SUITE_P(All, ActivationFunction,
                         ::testing::Values(Activation::Identity, Activation::Tanh, Activation::Sigmoid,
                                           Activation::ReLU, Activation::GELU),
                         activation_test_name);

TEST(Gelu, MatchesKnownValuesOfTheExactErfForm) {
    // x * Phi(x) with Phi(1) = 0.8413447460685429 and phi(1) = 0.24197072451914337.
    EXPECT_NEAR(gelu(1.0), 0.8413447460685429, 1e-15);
    EXPECT_NEAR(gelu(-1.0), -0.15865525393145707, 1e-15);
    EXPECT_EQ(gelu(0.0), 0.0);
    EXPECT_NEAR(gelu_derivative(0.0), 0.5, 1e-15);
    EXPECT_NEAR(gelu_derivative(1.0), 0.8413447460685429 + 0.24197072451914337, 1e-15);
    EXPECT_NEAR(gelu(1.0f), 0.8413447f, 1e-7f);
}

TEST(Gelu, KeepsRelativePrecisionInTheLowerTail) {
    // Phi(-10) = 7.619853024160527e-24; 1 + erf(-10 / sqrt 2) would round to 0 here.
    EXPECT_NEAR(gelu(-10.0) / (-10.0 * 7.619853024160527e-24), 1.0, 1e-12);
    EXPECT_LT(gelu(-10.0), 0.0);
}

TEST(Sigmoid, StaysFiniteAndSaturatesForHugeInputs) {
    EXPECT_EQ(sigmoid(-1000.0), 0.0);
    EXPECT_EQ(sigmoid(1000.0), 1.0);
    EXPECT_EQ(sigmoid(-200.0f), 0.0f);
    const Matrix<float> y =
        apply_activation<float>(Activation::Sigmoid, (Matrix<float>(1, 4) << -1000.f, -90.f, 90.f, 1000.f).finished());
    EXPECT_TRUE(y.allFinite());
    EXPECT_NEAR(y(0, 0), 0.0f, 1e-30f);
    EXPECT_EQ(y(0, 3), 1.0f);
}

TEST(Relu, BackwardGivesZeroWhereTheUnitIsOffEvenForAnInfiniteGradient) {
    const Matrix<double> pre = (Matrix<double>(1, 3) << -1.0, 0.0, 2.0).finished();
    const Matrix<double> out = apply_activation(Activation::ReLU, pre);
    Matrix<double> grad = (Matrix<double>(1, 3) << INFINITY, NAN, 3.0).finished();
    activation_backward<double>(Activation::ReLU, pre, out, grad);
    EXPECT_EQ(grad(0, 0), 0.0);
    EXPECT_EQ(grad(0, 1), 0.0);  // PyTorch: relu'(0) = 0
    EXPECT_EQ(grad(0, 2), 3.0);
}

TEST(Relu, PropagatesNaNLikePyTorch) {
    Matrix<float> z = Matrix<float>::Constant(3, 17, NAN);  // long enough for the vector path
    activation_forward<float>(Activation::ReLU, z);
    EXPECT_TRUE(z.array().isNaN().all());
}

// ===========================================================================
// The threaded passes the layers share (kernels/elementwise.hpp, kernels/matmul.hpp)

namespace {

// Column sums as a plain double loop down each column.
Matrix<double> reference_column_sums(const Matrix<double>& m) {
    Matrix<double> sums = Matrix<double>::Zero(1, m.cols());
    for (Index j = 0; j < m.cols(); ++j)
        for (Index i = 0; i < m.rows(); ++i) sums(0, j) += m(i, j);
    return sums;
}

// Runs f with `threads` threads, then restores the thread count.
template <typename F>
auto with_threads(int threads, const F& f) {
    const int before = num_threads();
    set_num_threads(threads);
    auto result = f();
    set_num_threads(before);
    return result;
}

}  // namespace

TEST(AddColumnSums, MatchesPlainLoopsAndIsBitwiseTheSameForAnyThreadCount) {
    Rng rng(70);
    // Widths below, at and across the 16-column blocks; 2111 rows make every width but
    // the first two worth splitting.
    for (Index cols : {Index(1), Index(13), Index(16), Index(37), Index(100)}) {
        const Matrix<float> m = random_matrix<float>(2111, cols, rng);
        const Matrix<float> start = random_matrix<float>(1, cols, rng);
        const auto sums = [&](int threads) {
            return with_threads(threads, [&] {
                Matrix<float> out = start;
                add_column_sums(m, out);
                return out;
            });
        };
        const Matrix<float> serial = sums(1);
        const Matrix<double> expected = start.cast<double>() + reference_column_sums(m.cast<double>());
        EXPECT_LT(relative_error(serial.cast<double>(), expected), 1e-4) << cols << " columns";
        for (int threads : {2, 3, std::max(num_threads(), 4)})
            EXPECT_EQ(relative_error(sums(threads), serial), 0.0) << cols << " columns, " << threads << " threads";
    }
}

TEST(AddColumnSums, TakesAnArrayExpressionSuchAsANormsWeightGradient) {
    Rng rng(71);
    const Matrix<double> dy = random_matrix<double>(999, 45, rng), xhat = random_matrix<double>(999, 45, rng);
    Matrix<double> out = Matrix<double>::Zero(1, 45);
    add_column_sums(dy.array() * xhat.array(), out);
    const Matrix<double> product = (dy.array() * xhat.array()).matrix();
    EXPECT_LT(relative_error(out, reference_column_sums(product)), 1e-13);
}

TEST(ParallelCopy, ResizesTheDestinationAndCopiesEveryEntry) {
    Rng rng(72);
    const Matrix<double> src = random_matrix<double>(3001, 19, rng);
    Matrix<double> dst(2, 2);
    parallel_copy<double>(dst, src);
    EXPECT_EQ(relative_error(dst, src), 0.0);
    EXPECT_EQ(relative_error(parallel_copy_of<double>(src.topRows(5)), src.topRows(5)), 0.0);
}

TEST(MatmulRows, MatchesPlainLoopsInDoubleSplitOrNot) {
    Rng rng(74);
    const Matrix<double> w = random_matrix<double>(37, 13, rng);  // (N, K), as a Linear's weight
    for (Index rows : {Index(5), Index(2037)}) {  // a step's few rows; enough to split on 4 threads
        const Matrix<double> a = random_matrix<double>(rows, 13, rng), g = random_matrix<double>(rows, 37, rng);
        with_threads(std::max(num_threads(), 4), [&] {
#ifdef _OPENMP
            EXPECT_EQ(matmul_row_threads(rows, 13, 37) > 1, rows == 2037) << rows << " rows";
#endif
            Matrix<double> c(rows, 37), d(rows, 13);
            matmul_rows<double>(a, w.transpose(), c);  // (rows, K) x (K, N)
            matmul_rows<double>(g, w, d);              // (rows, N) x (N, K)
            EXPECT_LT(relative_error(c, reference_product(a, w.transpose())), 1e-13) << rows << " rows";
            EXPECT_LT(relative_error(d, reference_product(g, w)), 1e-13) << rows << " rows";
            return 0;
        });
    }
}

TEST(MatmulRows, AddsTheBiasToEveryRowSplitOrNot) {
    Rng rng(76);
    const Matrix<double> w = random_matrix<double>(37, 13, rng), bias = random_matrix<double>(1, 37, rng);
    for (Index rows : {Index(5), Index(2037)}) {
        const Matrix<double> a = random_matrix<double>(rows, 13, rng);
        with_threads(std::max(num_threads(), 4), [&] {
            Matrix<double> c(rows, 37);
            matmul_rows<double>(a, w.transpose(), c, bias.data());
            const Matrix<double> expected = reference_product(a, w.transpose()).rowwise() + bias.row(0);
            EXPECT_LT(relative_error(c, expected), 1e-13) << rows << " rows";
            return 0;
        });
    }
}

TEST(MatmulRows, GivesTheBitsOfOneThreadOnAnyThreadCount) {
    Rng rng(75);
    const Matrix<float> a = random_matrix<float>(2111, 300, rng), w = random_matrix<float>(77, 300, rng);
    const auto product = [&](int threads) {
        return with_threads(threads, [&] {
            Matrix<float> c(2111, 77);
            matmul_rows<float>(a, w.transpose(), c);
            return c;
        });
    };
    const Matrix<float> serial = product(1);
    for (int threads : {2, 3, std::max(num_threads(), 4)}) {
#ifdef SEQNN_USE_BLIS
        // At kBlisMinFlops and above the product is one BLIS gemm, whose bits depend on
        // the thread count: there they must agree to a float's rounding over K = 300 terms.
        if (2.0 * 2111 * 300 * 77 >= kBlisMinFlops) {
            EXPECT_LT(relative_error(product(threads), serial), float_tolerance(300))
                << threads << " threads";
            continue;
        }
#endif
        EXPECT_EQ(relative_error(product(threads), serial), 0.0) << threads << " threads";
    }
}

TEST(Linear, BiasGradientIsBitwiseTheSameForAnyThreadCount) {
    Rng rng(73);
    Linear<float> layer(D, 37, true, rng);
    const Matrix<float> x = random_matrix<float>(BIG_N, D, rng), dy = random_matrix<float>(BIG_N, 37, rng);
    const auto bias_grad = [&](int threads) {
        return with_threads(threads, [&] {
            layer.bias.zero_grad();
            layer.weight.zero_grad();
            layer.backward(x, dy);
            return Matrix<float>(layer.bias.grad);
        });
    };
    const Matrix<float> serial = bias_grad(1);
    EXPECT_LT(relative_error(serial.cast<double>(), reference_column_sums(dy.cast<double>())), 1e-4);
    EXPECT_EQ(relative_error(bias_grad(std::max(num_threads(), 3)), serial), 0.0);
}
