// TransformerBlock (models/transformer_block.hpp) and the position embeddings (layers/positional.hpp):
// a plain reference in double (loops, full softmax), the causal mask, streaming with the
// KV cache (step == forward, chunked == whole), gradients, threads, float, names, errors.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>
#include <seqnn/models/transformer_block.hpp>
#include <seqnn/layers/positional.hpp>
#include "layer_instances.hpp"

#include <limits>

using namespace seqnn;
using seqnn::testing::random_matrix;
using seqnn::testing::random_sequence;
using seqnn::testing::relative_error;

namespace {

// Odd sizes: E = 24 with H = 3 (Dh = 8), F = 40.
TransformerOptions options(bool rotary = false, bool causal = true, Index max_cache = 64) {
    return {.d_model = 24, .num_heads = 3, .dim_feedforward = 40, .causal = causal, .rotary = rotary,
            .max_cache_length = max_cache};
}

// Non-trivial norms and biases (PyTorch starts them at 1 and 0, which would hide mistakes).
template <typename Scalar>
void randomize(TransformerBlock<Scalar>& block, Rng& rng) {
    for (auto& p : block.parameters()) p.param->init_uniform(Scalar(0.4), rng);
    block.norm1().weight.value.array() += Scalar(1);
    block.norm2().weight.value.array() += Scalar(1);
}

// ---- the plain reference: one position at a time, loops, full softmax, double ----

Matrix<double> layer_norm(const Matrix<double>& x, const LayerNorm<double>& n) {
    Matrix<double> y(x.rows(), x.cols());
    for (Index r = 0; r < x.rows(); ++r) {
        double mean = 0, var = 0;
        for (Index j = 0; j < x.cols(); ++j) mean += x(r, j) / double(x.cols());
        for (Index j = 0; j < x.cols(); ++j) var += (x(r, j) - mean) * (x(r, j) - mean) / double(x.cols());
        for (Index j = 0; j < x.cols(); ++j)
            y(r, j) = (x(r, j) - mean) / std::sqrt(var + 1e-5) * n.weight.value(0, j) +
                      (n.has_bias() ? n.bias.value(0, j) : 0.0);
    }
    return y;
}

Matrix<double> linear(const Matrix<double>& x, const Linear<double>& l) {
    Matrix<double> y(x.rows(), l.out_features());
    for (Index r = 0; r < x.rows(); ++r)
        for (Index o = 0; o < l.out_features(); ++o) {
            double s = l.has_bias() ? l.bias.value(0, o) : 0.0;
            for (Index i = 0; i < l.in_features(); ++i) s += x(r, i) * l.weight.value(o, i);
            y(r, o) = s;
        }
    return y;
}

// RoPE of one head's Dh features at position p, the "rotate half" pairs.
void rotate(double* x, Index Dh, Index p) {
    for (Index i = 0; i < Dh / 2; ++i) {
        const double a = double(p) * std::pow(10000.0, -2.0 * double(i) / double(Dh));
        const double x1 = x[i], x2 = x[i + Dh / 2];
        x[i] = x1 * std::cos(a) - x2 * std::sin(a);
        x[i + Dh / 2] = x2 * std::cos(a) + x1 * std::sin(a);
    }
}

// The block on whole sequences: x (B*T, E) -> y (B*T, E).
Matrix<double> reference_block(TransformerBlock<double>& blk, const Sequence<double>& x) {
    const TransformerOptions& o = blk.options();
    const Index B = x.batch, T = x.steps, E = o.d_model, H = o.num_heads, Dh = E / H;
    const Matrix<double> qkv_lin = linear(layer_norm(x.data, blk.norm1()), blk.in_proj());
    Matrix<double> qkv = qkv_lin;
    if (o.rotary)
        for (Index r = 0; r < B * T; ++r)
            for (Index h = 0; h < H; ++h) {
                rotate(&qkv(r, h * Dh), Dh, r % T);
                rotate(&qkv(r, E + h * Dh), Dh, r % T);
            }
    Matrix<double> attn = Matrix<double>::Zero(B * T, E);
    for (Index b = 0; b < B; ++b)
        for (Index h = 0; h < H; ++h)
            for (Index i = 0; i < T; ++i) {
                std::vector<double> p(T, 0.0);
                double mx = -std::numeric_limits<double>::infinity(), sum = 0;
                const Index last = o.causal ? i : T - 1;
                for (Index j = 0; j <= last; ++j) {
                    double s = 0;
                    for (Index d = 0; d < Dh; ++d) s += qkv(b * T + i, h * Dh + d) * qkv(b * T + j, E + h * Dh + d);
                    p[j] = s / std::sqrt(double(Dh));
                    mx = std::max(mx, p[j]);
                }
                for (Index j = 0; j <= last; ++j) sum += (p[j] = std::exp(p[j] - mx));
                for (Index j = 0; j <= last; ++j)
                    for (Index d = 0; d < Dh; ++d)
                        attn(b * T + i, h * Dh + d) += p[j] / sum * qkv(b * T + j, 2 * E + h * Dh + d);
            }
    const Matrix<double> h = x.data + linear(attn, blk.out_proj());
    Matrix<double> hidden = linear(layer_norm(h, blk.norm2()), blk.linear1());
    for (Index i = 0; i < hidden.size(); ++i) {
        const double v = hidden.data()[i];
        hidden.data()[i] = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));  // PyTorch's exact GELU
    }
    return h + linear(hidden, blk.linear2());
}

Sequence<double> chunk_of(const Sequence<double>& x, Index start, Index len) {
    Sequence<double> c(x.batch, len, x.features());
    for (Index b = 0; b < x.batch; ++b) c.sequence(b) = x.sequence(b).middleRows(start, len);
    return c;
}

}  // namespace

TEST(TransformerBlock, MatchesPlainReferenceInDouble) {
    for (bool rotary : {false, true})
        for (bool causal : {true, false})
            for (Index T : {1, 37}) {
                Rng rng(41);
                TransformerBlock<double> blk(options(rotary, causal), rng);
                randomize(blk, rng);
                const Sequence<double> x = random_sequence<double>(3, T, 24, rng, 2.0);
                const double err = relative_error(blk.forward(x).data, reference_block(blk, x));
                std::printf("  rotary=%d causal=%d T=%-3ld rel.err %.2e\n", rotary, causal, long(T), err);
                EXPECT_LT(err, 1e-13);
            }
}

TEST(TransformerBlock, CausalMaskHidesTheFuture) {
    Rng rng(42);
    TransformerBlock<double> blk(options(true), rng);
    randomize(blk, rng);
    Sequence<double> x = random_sequence<double>(3, 37, 24, rng);
    const Sequence<double> before = blk.forward(x);
    for (Index b = 0; b < 3; ++b) x.sequence(b).bottomRows(17).setRandom();
    const Sequence<double> after = blk.forward(x);
    for (Index b = 0; b < 3; ++b) EXPECT_EQ(after.sequence(b).topRows(20), before.sequence(b).topRows(20));
    EXPECT_GT(relative_error(after.data, before.data), 1e-3);
}

TEST(TransformerBlock, StepEqualsForward) {
    for (bool rotary : {false, true}) {
        Rng rng(43);
        TransformerBlock<double> blk(options(rotary, true, 16), rng);
        randomize(blk, rng);
        const Sequence<double> x = random_sequence<double>(3, 11, 24, rng);
        State<double> whole_state;
        const Sequence<double> whole = blk.forward(x, &whole_state);
        State<double> state = blk.initial_state(3);
        Matrix<double> y;
        for (Index t = 0; t < 11; ++t) {
            blk.step(Matrix<double>(x.at_step(t)), state, y);
            EXPECT_LT(relative_error(y, Matrix<double>(whole.at_step(t))), 1e-13) << "t=" << t;
        }
        EXPECT_EQ(state.position, 11);
        EXPECT_EQ(whole_state.position, 11);
        for (int c = 0; c < 2; ++c)
            for (Index b = 0; b < 3; ++b)
                EXPECT_LT(relative_error(TransformerBlock<double>::kv_cache(state).tensors[c].middleRows(b * 16, 11),
                                         TransformerBlock<double>::kv_cache(whole_state).tensors[c].middleRows(b * 16, 11)),
                          1e-13);
    }
}

// Chunks of 1, 13, 7 and 16 positions through a cache that starts too small (8 per stream,
// so forward grows it to fit: 37 rows), all equal to one whole forward; the full cache then
// refuses a step and a forward of one more position grows it again.
TEST(TransformerBlock, ChunkedEqualsWhole) {
    for (bool rotary : {false, true}) {
        Rng rng(44);
        TransformerBlock<double> blk(options(rotary, true, 8), rng);
        randomize(blk, rng);
        const Sequence<double> x = random_sequence<double>(3, 38, 24, rng);
        const Sequence<double> whole = blk.forward(x);
        State<double> state;
        Index start = 0;
        for (Index len : {1, 13, 7, 16}) {
            const Sequence<double> y = blk.forward(chunk_of(x, start, len), &state);
            EXPECT_LT(relative_error(y.data, chunk_of(whole, start, len).data), 1e-13) << "chunk at " << start;
            start += len;
            EXPECT_EQ(state.position, start);
        }
        EXPECT_EQ(TransformerBlock<double>::kv_cache(state).tensors[0].rows(), 3 * 37);
        Matrix<double> y;
        seqnn::testing::expect_shape_error([&] { blk.step(Matrix<double>(x.at_step(37)), state, y); },
                                           {"SelfAttention.step", "full", "37 of 37", "(111, 24)"});
        EXPECT_LT(relative_error(blk.forward(chunk_of(x, 37, 1), &state).data, chunk_of(whole, 37, 1).data), 1e-13);
        EXPECT_EQ(TransformerBlock<double>::kv_cache(state).tensors[0].rows(), 3 * 38);
    }
}

// forward's final state is a cache that step() continues from.
TEST(TransformerBlock, StepsContinueFromForwardsCache) {
    for (bool rotary : {false, true}) {
        Rng rng(52);
        TransformerBlock<double> blk(options(rotary, true, 30), rng);
        randomize(blk, rng);
        const Sequence<double> x = random_sequence<double>(3, 30, 24, rng);
        const Sequence<double> whole = blk.forward(x);
        State<double> state;
        blk.forward(chunk_of(x, 0, 17), &state);
        EXPECT_EQ(TransformerBlock<double>::kv_cache(state).tensors[0].rows(), 3 * 30);  // max(max_cache_length, T) rows per stream
        Matrix<double> y;
        for (Index t = 17; t < 30; ++t) {
            blk.step(Matrix<double>(x.at_step(t)), state, y);
            EXPECT_LT(relative_error(y, Matrix<double>(whole.at_step(t))), 1e-13) << "t=" << t;
        }
    }
}

TEST(TransformerBlock, GradientsMatchFiniteDifferences) {
    for (bool rotary : {false, true}) {
        Rng rng(45);
        TransformerBlock<double> blk(
            {.d_model = 12, .num_heads = 3, .dim_feedforward = 10, .rotary = rotary, .max_cache_length = 9}, rng);
        randomize(blk, rng);
        seqnn::testing::GradientChecker checker(blk);
        const Sequence<double> x = random_sequence<double>(2, 5, 12, rng, 1.5);
        std::printf(" rotary=%d, no initial cache:\n", rotary);
        seqnn::testing::expect_gradients_match(checker.check(x, State<double>(), 40), 1e-6);

        // From a cache filled by a 3-position prefix: gradients reach the cached K and V
        // (initial_state[0], [1]) too, and rows 8.. of the 9-row cache pass d_final through.
        State<double> prefix;
        blk.forward(random_sequence<double>(2, 3, 12, rng), &prefix);
        std::printf(" rotary=%d, after a 3-position prefix:\n", rotary);
        seqnn::testing::expect_gradients_match(checker.check(x, prefix, 40), 1e-6);
    }
}

TEST(TransformerBlock, NonCausalGradientsMatchFiniteDifferences) {
    Rng rng(46);
    TransformerBlock<double> blk({.d_model = 12, .num_heads = 2, .dim_feedforward = 8, .causal = false}, rng);
    randomize(blk, rng);
    seqnn::testing::GradientChecker checker(blk);
    const Sequence<double> x = random_sequence<double>(2, 4, 12, rng, 1.5);
    seqnn::testing::expect_gradients_match(checker.check(x, State<double>(), 40), 1e-6);
}

// Large enough that the kernel, the norms, GELU and the GEMMs split across threads.
TEST(TransformerBlock, ThreadedEqualsSingleThreaded) {
    Rng rng(47);
    TransformerBlock<double> blk(options(true), rng);
    randomize(blk, rng);
    const Sequence<double> x = random_sequence<double>(3, 300, 24, rng);
    const Sequence<double> dy = random_sequence<double>(3, 300, 24, rng);
    auto run = [&](int threads, Matrix<double>& dx, Matrix<double>& dw) {
        set_num_threads(threads);
        Context<double> ctx;
        const Sequence<double> y = blk.forward(x, nullptr, &ctx);
        blk.zero_grad();
        dx = blk.backward(dy, ctx).data;
        dw = blk.parameters()[0].param->grad;
        return y.data;
    };
    Matrix<double> dx1, dw1, dx2, dw2;
    const Matrix<double> y1 = run(1, dx1, dw1);
    const Matrix<double> y2 = run(2, dx2, dw2);
    set_num_threads(2);
    EXPECT_LT(relative_error(y2, y1), 1e-12);
    EXPECT_LT(relative_error(dx2, dx1), 1e-12);
    EXPECT_LT(relative_error(dw2, dw1), 1e-10);
}

TEST(TransformerBlock, FloatAgreesWithDouble) {
    Rng rng_d(48), rng_f(48), data(49);
    TransformerBlock<double> bd(options(true), rng_d);
    TransformerBlock<float> bf(options(true), rng_f);
    const Sequence<double> x = random_sequence<double>(3, 200, 24, data);
    const Sequence<float> xf(x.data.cast<float>(), 3, 200);
    EXPECT_LT(relative_error(bf.forward(xf).data, bd.forward(x).data), seqnn::testing::float_tolerance(200));
    // Training too (float's GELU and its derivative use Eigen's vectorised erf).
    const Sequence<double> dy = random_sequence<double>(3, 200, 24, data);
    const Sequence<float> dyf(dy.data.cast<float>(), 3, 200);
    Context<double> cd;
    Context<float> cf;
    bd.forward(x, nullptr, &cd);
    bf.forward(xf, nullptr, &cf);
    EXPECT_LT(relative_error(bf.backward(dyf, cf).data, bd.backward(dy, cd).data), seqnn::testing::float_tolerance(200));
    EXPECT_LT(relative_error(bf.linear1().weight.grad, bd.linear1().weight.grad), seqnn::testing::float_tolerance(600));
    // Streaming in float too.
    State<float> s = bf.initial_state(3);
    Matrix<float> y;
    const Sequence<float> whole = bf.forward(xf);
    for (Index t = 0; t < 20; ++t) bf.step(Matrix<float>(xf.at_step(t)), s, y);
    EXPECT_LT(relative_error(y, Matrix<float>(whole.at_step(19))), seqnn::testing::float_tolerance(200));
}

TEST(TransformerBlock, ParametersHavePyTorchNamesAndShapes) {
    Rng rng(50);
    TransformerBlock<float> blk(options(), rng);
    std::vector<std::string> names;
    std::vector<std::vector<Index>> shapes;
    for (const auto& p : blk.parameters()) {
        names.push_back(p.name);
        shapes.push_back(p.param->shape);
    }
    EXPECT_EQ(names, (std::vector<std::string>{"self_attn.in_proj_weight", "self_attn.in_proj_bias",
                                               "self_attn.out_proj.weight", "self_attn.out_proj.bias",
                                               "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                                               "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"}));
    EXPECT_EQ(shapes, (std::vector<std::vector<Index>>{
                          {72, 24}, {72}, {24, 24}, {24}, {40, 24}, {40}, {24, 40}, {24}, {24}, {24}, {24}, {24}}));
    // PyTorch's initialisation: zero in_proj and out_proj biases, unit norms.
    EXPECT_TRUE(blk.in_proj().bias.value.isZero(0));
    EXPECT_TRUE(blk.out_proj().bias.value.isZero(0));
    EXPECT_TRUE(blk.norm1().weight.value.isOnes(0));
    TransformerBlock<float> no_bias({.d_model = 24, .num_heads = 3, .bias = false}, rng);
    EXPECT_EQ(no_bias.parameters().size(), 6u);
    EXPECT_EQ(no_bias.dim_feedforward(), 96);
}

TEST(TransformerBlock, BadInputRaisesShapeError) {
    using seqnn::testing::expect_shape_error;
    Rng rng(51);
    expect_shape_error([&] { TransformerBlock<double>({.d_model = 25, .num_heads = 3}, rng); },
                       {"SelfAttention", "E=25", "H=3", "divisible"});  // the block's mixer names itself
    expect_shape_error([&] { TransformerBlock<double>({.d_model = 6, .num_heads = 2, .rotary = true}, rng); },
                       {"SelfAttention", "even", "Dh=E/H=3"});
    TransformerBlock<double> blk(options(false, true, 4), rng);
    expect_shape_error([&] { blk.forward(random_sequence<double>(3, 5, 23, rng)); },
                       {"TransformerBlock.forward", "(B=3, T=5, D=23)", "D=24"});
    expect_shape_error([&] { blk.forward(Sequence<double>(0, 5, 24)); }, {"TransformerBlock.forward", "B=0"});
    State<double> state = blk.initial_state(2);
    expect_shape_error([&] { blk.forward(random_sequence<double>(3, 5, 24, rng), &state); },
                       {"TransformerBlock.forward", "(8, 24)", "B=3"});
    Matrix<double> y;
    expect_shape_error([&] { blk.step(Matrix<double>::Zero(2, 20), state, y); },
                       {"TransformerBlock.step", "(2, 20)", "24"});
    for (int t = 0; t < 4; ++t) blk.step(Matrix<double>::Zero(2, 24), state, y);
    expect_shape_error([&] { blk.step(Matrix<double>::Zero(2, 24), state, y); },
                       {"SelfAttention.step", "KV cache is full", "4 of 4", "(8, 24)", "max_cache_length"});
    Context<double> ctx;
    blk.forward(random_sequence<double>(3, 5, 24, rng), nullptr, &ctx);
    expect_shape_error([&] { blk.backward(random_sequence<double>(3, 4, 24, rng), ctx); },
                       {"TransformerBlock.backward", "(B=3, T=4, D=24)", "T=5"});
    Context<double> empty;
    expect_shape_error([&] { blk.backward(random_sequence<double>(3, 5, 24, rng), empty); }, {"Context", "forward"});
    TransformerBlock<double> full(options(false, false), rng);
    expect_shape_error([&] { full.step(Matrix<double>::Zero(2, 24), state, y); }, {"SelfAttention.step", "non-causal"});
}

// ---- position embeddings ----

TEST(Positional, SinusoidalMatchesTheFormula) {
    const SinusoidalPositionalEncoding<double> pe(7);  // odd D: the last column is a sine
    Rng rng(60);
    const Sequence<double> x = random_sequence<double>(3, 37, 7, rng);
    const Sequence<double> y = pe.forward(x);
    double worst = 0;
    for (Index b = 0; b < 3; ++b)
        for (Index t = 0; t < 37; ++t)
            for (Index j = 0; j < 7; ++j) {
                const double angle = double(t) / std::pow(10000.0, double(2 * (j / 2)) / 7.0);
                const double p = j % 2 == 0 ? std::sin(angle) : std::cos(angle);
                worst = std::max(worst, std::abs(y.data(b * 37 + t, j) - x.data(b * 37 + t, j) - p));
            }
    EXPECT_LT(worst, 1e-14);
}

template <typename MakeLayer>
void check_streaming(MakeLayer make) {
    Rng rng(61);
    auto layer = make(rng);
    const Sequence<double> x = random_sequence<double>(3, 30, 6, rng);
    const Sequence<double> whole = layer.forward(x);
    State<double> state;
    Index start = 0;
    for (Index len : {1, 12, 7}) {
        EXPECT_EQ(layer.forward(chunk_of(x, start, len), &state).data, chunk_of(whole, start, len).data);
        start += len;
    }
    Matrix<double> y;
    for (Index t = start; t < 30; ++t) {
        layer.step(Matrix<double>(x.at_step(t)), state, y);
        EXPECT_LT(relative_error(y, Matrix<double>(whole.at_step(t))), 1e-15) << "t=" << t;
    }
}

TEST(Positional, ChunkedAndStepEqualWhole) {
    check_streaming([](Rng&) { return SinusoidalPositionalEncoding<double>(6); });
    check_streaming([](Rng& rng) { return LearnedPositionalEmbedding<double>(30, 6, rng); });
}

TEST(Positional, GradientsMatchFiniteDifferences) {
    Rng rng(62);
    LearnedPositionalEmbedding<double> learned(9, 5, rng);
    EXPECT_EQ(learned.parameters()[0].name, "weight");
    const Sequence<double> x = random_sequence<double>(3, 4, 5, rng);
    State<double> offset;
    offset.position = 2;  // rows 2..5 of the table take gradient, the others none
    seqnn::testing::GradientChecker checker(learned);
    seqnn::testing::expect_gradients_match(checker.check(x, offset, 100), 1e-6);
    SinusoidalPositionalEncoding<double> sinusoidal(5);
    seqnn::testing::GradientChecker checker2(sinusoidal);
    seqnn::testing::expect_gradients_match(checker2.check(x, offset, 100), 1e-6);
}

TEST(Positional, PositionsPastTheTableRaiseShapeError) {
    using seqnn::testing::expect_shape_error;
    Rng rng(63);
    const LearnedPositionalEmbedding<double> learned(8, 5, rng);
    State<double> state;
    learned.forward(random_sequence<double>(2, 6, 5, rng), &state);
    expect_shape_error([&] { learned.forward(random_sequence<double>(2, 3, 5, rng), &state); },
                       {"LearnedPositionalEmbedding.forward", "[6, 9)", "max_length 8", "(8, 5)"});
    Matrix<double> y;
    learned.step(Matrix<double>::Zero(2, 5), state, y);
    learned.step(Matrix<double>::Zero(2, 5), state, y);
    expect_shape_error([&] { learned.step(Matrix<double>::Zero(2, 5), state, y); },
                       {"LearnedPositionalEmbedding.step", "[8, 9)"});
    expect_shape_error([&] { learned.forward(random_sequence<double>(2, 3, 4, rng)); },
                       {"LearnedPositionalEmbedding.forward", "D=4", "D=5"});
}
