// What a hostile or careless caller can do wrong, for every layer kind, and what seqnn
// promises in return (docs/guarantees.md):
//   - backward refuses a Context that another layer filled: another size, another kind;
//   - a state made for another number of streams is refused, not reinterpreted;
//   - a call that throws leaves the state as it was: later calls give what they would
//     have given had the bad call never happened;
//   - sizes that overflow, and hyperparameters that are NaN, infinite or out of range,
//     are refused before anything is allocated;
//   - losses give the same result when the gradient is written over their own input;
//   - a NaN or inf at a later position never reaches an earlier Transformer output;
//   - a small decoding step runs on the calling thread, with no parallel region.
// Adding a layer kind: add it to all_kinds() below.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>  // everything, train/ included
#include "layer_instances.hpp"

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#if defined(_OPENMP) && defined(__GNUC__) && !defined(__clang__)
#include <dlfcn.h>
#define SEQNN_COUNT_GOMP_REGIONS 1
#endif

using namespace seqnn;
using seqnn::testing::expect_shape_error;
using seqnn::testing::random_matrix;
using seqnn::testing::random_sequence;

namespace {

constexpr Index kInput = 4;  // every kind below reads 4 features

// A layer kind: make(rng, width) builds one whose saved tensors depend on `width` (a
// hidden size, a kernel size, an MLP's width); width 4 maps 4 features to 4 for all kinds.
struct Kind {
    std::string name;
    std::function<std::unique_ptr<Layer<double>>(Rng&, Index)> make;
};

std::vector<Kind> all_kinds() {
    return {
        {"RNN", [](Rng& r, Index w) { return std::make_unique<RNN<double>>(RNNOptions{.input_size = kInput, .hidden_size = w}, r); }},
        {"LSTM", [](Rng& r, Index w) { return std::make_unique<LSTM<double>>(RecurrentOptions{kInput, w, 2, true}, r); }},
        {"GRU", [](Rng& r, Index w) { return std::make_unique<GRU<double>>(RecurrentOptions{kInput, w, 1, true}, r); }},
        {"MinGRU", [](Rng& r, Index w) {
             return std::make_unique<MinGRU<double>>(MinRNNOptions{.input_size = kInput, .hidden_size = w}, r);
         }},
        {"MinLSTM", [](Rng& r, Index w) {
             return std::make_unique<MinLSTM<double>>(MinRNNOptions{.input_size = kInput, .hidden_size = w}, r);
         }},
        {"TransformerBlock", [](Rng& r, Index w) {
             return std::make_unique<TransformerBlock<double>>(
                 TransformerOptions{.d_model = kInput, .num_heads = 2, .dim_feedforward = w, .rotary = true,
                                    .max_cache_length = 16},
                 r);
         }},
        {"SelfAttention", [](Rng& r, Index w) {  // w picks the head count: 1, 2 or 4 heads of 4 features
             return std::make_unique<SelfAttention<double>>(
                 SelfAttentionOptions{.embed_dim = kInput, .num_heads = w % 4 + 1, .max_cache_length = 16}, r);
         }},
        {"CausalConv", [](Rng& r, Index w) {
             return std::make_unique<CausalDepthwiseConv1d<double>>(CausalConvOptions{.channels = kInput, .kernel_size = w}, r);
         }},
        {"Linear", [](Rng& r, Index w) { return make_linear_layer<double>(kInput, w, true, r); }},
        {"FeedForward", [](Rng& r, Index w) { return std::make_unique<FeedForward<double>>(kInput, double(w) / 4.0, r); }},
        {"Residual", [](Rng& r, Index w) {
             return std::make_unique<Residual<double>>(std::make_unique<FeedForward<double>>(kInput, double(w) / 4.0, r),
                                                       RMSNorm<double>(kInput));
         }},
        {"Sequential", [](Rng& r, Index w) {
             auto stack = std::make_unique<Sequential<double>>();
             stack->emplace<MinGRU<double>>(MinRNNOptions{.input_size = kInput, .hidden_size = w}, r);
             stack->add(make_linear_layer<double>(kInput, w, true, r));
             return stack;
         }},
        {"LMBlock", [](Rng& r, Index w) {
             return std::make_unique<LMBlock<double>>(
                 LMBlockOptions{.dim = kInput, .mixer = {.kind = MixerKind::GRU}, .ff_mult = double(w) / 4.0,
                                .conv = true, .conv_kernel = 3},
                 r);
         }},
        {"SinusoidalPositionalEncoding", [](Rng&, Index) {
             return std::make_unique<SinusoidalPositionalEncoding<double>>(kInput);
         }},
        {"LearnedPositionalEmbedding", [](Rng& r, Index w) {
             return std::make_unique<LearnedPositionalEmbedding<double>>(8 * w, kInput, r);
         }},
        {"Dropout", [](Rng&, Index) { return std::make_unique<Dropout<double>>(kInput, 0.25, 3); }},
    };
}

std::string kind_name(const ::testing::TestParamInfo<Kind>& info) { return info.param.name; }

class EveryKind : public ::testing::TestWithParam<Kind> {
protected:
    Rng rng{7};
};

// All of a state's value (every tensor of the tree and the position), to compare before
// and after a call.
struct Snapshot {
    std::vector<Matrix<double>> tensors;
    Index position;
    explicit Snapshot(const State<double>& s) : position(s.position) {
        for (const Matrix<double>* t : state_tensors(s)) tensors.push_back(*t);
    }
    bool operator==(const Snapshot&) const = default;
};

}  // namespace

// ---------------------------------------------------------------------------
// Contexts: backward reads what the forward that filled the Context saved, so a Context
// from another layer must be refused, never read with the wrong meaning or past its end.

TEST_P(EveryKind, BackwardRefusesAContextFilledByTheSameKindAtAnotherSize) {
    const auto small = GetParam().make(rng, 3), big = GetParam().make(rng, 9);
    Context<double> ctx;
    small->forward(random_sequence<double>(2, 5, kInput, rng), nullptr, &ctx);
    const Sequence<double> dy = random_sequence<double>(2, 5, big->output_size(), rng);
    if (small->kind() == "SinusoidalPositionalEncoding" || small->kind() == "Dropout") {
        EXPECT_NO_THROW(big->backward(dy, ctx)) << "no size of this kind changes what its context holds";
        return;
    }
    expect_shape_error([&] { big->backward(dy, ctx); }, {"context was filled by"});
}

TEST_P(EveryKind, BackwardRefusesAContextFilledByAnotherKind) {
    const std::vector<Kind> kinds = all_kinds();
    const auto layer = GetParam().make(rng, 4);
    const Sequence<double> x = random_sequence<double>(2, 5, kInput, rng);
    const Sequence<double> dy = random_sequence<double>(2, 5, layer->output_size(), rng);
    for (const Kind& other : kinds) {
        if (other.name == GetParam().name) continue;
        SCOPED_TRACE("context filled by " + other.name);
        const auto filler = other.make(rng, 4);
        Context<double> ctx;
        filler->forward(x, nullptr, &ctx);
        expect_shape_error([&] { layer->backward(dy, ctx); }, {"context was filled by"});
    }
}

TEST_P(EveryKind, BackwardRefusesAContextWithoutForward) {
    const auto layer = GetParam().make(rng, 4);
    const Context<double> empty;
    expect_shape_error([&] { layer->backward(random_sequence<double>(2, 5, layer->output_size(), rng), empty); },
                       {"no training forward"});
}

// ---------------------------------------------------------------------------
// States: a state made for B streams is refused for another stream count, by step and by
// forward, and the refusal changes nothing.

TEST_P(EveryKind, StateForAnotherStreamCountIsRefusedAndLeftUnchanged) {
    const auto layer = GetParam().make(rng, 4);
    State<double> state = layer->initial_state(4);
    if (state_tensors(state).empty()) GTEST_SKIP() << "stateless: nothing to misread";
    Matrix<double> y;
    layer->step(random_matrix<double>(4, kInput, rng), state, y);
    const Snapshot before(state);
    for (const Index streams : {Index(2), Index(1), Index(8)}) {
        SCOPED_TRACE("B=" + std::to_string(streams));
        EXPECT_THROW(layer->step(random_matrix<double>(streams, kInput, rng), state, y), shape_error);
        EXPECT_TRUE(Snapshot(state) == before);
        EXPECT_THROW(layer->forward(random_sequence<double>(streams, 3, kInput, rng), &state), shape_error);
        EXPECT_TRUE(Snapshot(state) == before);
    }
}

// A step that throws (wrong stream count, wrong width) is a no-op: the steps after it give
// bitwise what a run that never made the bad call gives. (A stateless layer takes any
// stream count, so for it only the wrong width is a mistake.)
TEST_P(EveryKind, AThrowingStepLeavesTheStateAsItWas) {
    const auto layer = GetParam().make(rng, 4);
    std::vector<Matrix<double>> xs;
    for (int t = 0; t < 6; ++t) xs.push_back(random_matrix<double>(2, kInput, rng));

    State<double> reference_state = layer->initial_state(2), state = layer->initial_state(2);
    std::vector<Matrix<double>> reference(xs.size());
    for (std::size_t t = 0; t < xs.size(); ++t) layer->step(xs[t], reference_state, reference[t]);

    Matrix<double> y;
    for (std::size_t t = 0; t < 3; ++t) layer->step(xs[t], state, y);
    const Snapshot before(state);
    if (!state_tensors(state).empty()) {
        EXPECT_THROW(layer->step(random_matrix<double>(3, kInput, rng), state, y), shape_error);  // wrong B
        EXPECT_TRUE(Snapshot(state) == before);
    }
    EXPECT_THROW(layer->step(random_matrix<double>(2, kInput + 1, rng), state, y), shape_error);  // wrong width
    EXPECT_TRUE(Snapshot(state) == before);
    for (std::size_t t = 3; t < xs.size(); ++t) {
        layer->step(xs[t], state, y);
        EXPECT_EQ(y, reference[t]) << "step " << t;
    }
}

INSTANTIATE_TEST_SUITE_P(Adversarial, EveryKind, ::testing::ValuesIn(all_kinds()), kind_name);

// A composite checks every child's state before any child steps: a step that a later child
// refuses (here a full KV cache) has not advanced the earlier ones either.
TEST(AdversarialComposite, AStepALaterChildRefusesLeavesEveryChildUnstepped) {
    Rng rng(16);
    auto stack = std::make_unique<Sequential<double>>();
    stack->emplace<MinGRU<double>>(MinRNNOptions{.input_size = 4, .hidden_size = 4}, rng);
    stack->emplace<TransformerBlock<double>>(TransformerOptions{.d_model = 4, .num_heads = 2, .max_cache_length = 3}, rng);
    Sequential<double> outer;  // and the same through a nested stack
    outer.add(make_linear_layer<double>(4, 4, true, rng));
    outer.add(std::move(stack));
    State<double> state = outer.initial_state(2);
    Matrix<double> y;
    for (int t = 0; t < 3; ++t) outer.step(random_matrix<double>(2, 4, rng), state, y);
    const Snapshot before(state);
    expect_shape_error([&] { outer.step(random_matrix<double>(2, 4, rng), state, y); }, {"KV cache is full"});
    EXPECT_TRUE(Snapshot(state) == before) << "the MinGRU stepped before the Transformer refused";
}

// The language model is not a Layer (it reads token ids): the same promises, by hand.
TEST(AdversarialLanguageModel, AThrowingStepLeavesTheStateAsItWas) {
    for (const MixerKind kind : {MixerKind::GRU, MixerKind::MinGRU, MixerKind::Transformer}) {
        SCOPED_TRACE(to_string(kind));
        Rng rng(3);
        const LanguageModel<double> lm({.vocab_size = 11, .dim = 4, .depth = 2, .mixer = {.kind = kind},
                                        .ff_mult = 2.0, .conv = kind != MixerKind::Transformer},
                                       rng);
        const std::vector<std::vector<int>> tokens{{1, 2}, {3, 4}, {5, 6}, {7, 8}, {9, 10}};
        State<double> reference_state = lm.initial_state(2), state = lm.initial_state(2);
        std::vector<Matrix<double>> reference(tokens.size());
        for (std::size_t t = 0; t < tokens.size(); ++t) lm.step(tokens[t], reference_state, reference[t]);

        Matrix<double> logits;
        for (std::size_t t = 0; t < 2; ++t) lm.step(tokens[t], state, logits);
        const Snapshot before(state);
        EXPECT_THROW(lm.step(std::vector<int>{1, 2, 3}, state, logits), shape_error);  // 3 streams, not 2
        EXPECT_TRUE(Snapshot(state) == before);
        EXPECT_THROW(lm.step(std::vector<int>{1, 11}, state, logits), shape_error);  // id out of range
        EXPECT_TRUE(Snapshot(state) == before);
        for (std::size_t t = 2; t < tokens.size(); ++t) {
            lm.step(tokens[t], state, logits);
            EXPECT_EQ(logits, reference[t]) << "step " << t;
        }
    }
}

TEST(AdversarialLanguageModel, BackwardRefusesAnotherModelsContext) {
    Rng rng(4);
    const LanguageModel<double> small({.vocab_size = 11, .dim = 4, .mixer = {.kind = MixerKind::MinGRU}}, rng);
    LanguageModel<double> big({.vocab_size = 11, .dim = 8, .mixer = {.kind = MixerKind::MinGRU}}, rng);
    Context<double> ctx;
    small.forward(TokenBatch({1, 2, 3, 4}, 2, 2), nullptr, &ctx);
    expect_shape_error([&] { big.backward(random_sequence<double>(2, 2, 11, rng), ctx); }, {"context was filled by"});
}

// Token ids stay integers from forward to backward: a float holds every id exactly only
// below 2^24, so a larger vocabulary's gradients would land on the wrong rows.
TEST(AdversarialLanguageModel, TheContextKeepsTokenIdsAsIntegers) {
    Rng rng(5);
    LanguageModel<double> lm({.vocab_size = 11, .dim = 4, .mixer = {.kind = MixerKind::MinGRU}}, rng);
    const std::vector<int> ids{1, 10, 3, 7};
    Context<double> ctx;
    lm.forward(TokenBatch(ids, 2, 2), nullptr, &ctx);
    // The model's saved struct declares them as std::vector<int>: the type says it.
    EXPECT_EQ(saved_for_backward<LanguageModel<double>::Saved>(ctx).ids, ids);
}

// ---------------------------------------------------------------------------
// The KV cache: made for B streams, it is not reinterpreted for a stream count that divides
// its rows (4 streams of 16 positions are 64 rows, like 2 streams of 32).

TEST(AdversarialTransformer, AKVCacheForFourStreamsIsRefusedForTwo) {
    Rng rng(6);
    const TransformerBlock<double> block({.d_model = 4, .num_heads = 2, .max_cache_length = 16}, rng);
    State<double> state = block.initial_state(4);
    Matrix<double> y;
    block.step(random_matrix<double>(4, 4, rng), state, y);
    expect_shape_error([&] { block.step(random_matrix<double>(2, 4, rng), state, y); }, {"was made for 4 streams", "B=2"});
    expect_shape_error([&] { block.forward(random_sequence<double>(2, 3, 4, rng), &state); }, {"was made for 4 streams"});
    EXPECT_EQ(state.position, 1);
}

// A NaN (or inf) at position t reaches no output before t: masked keys and values are left
// out of the sums, not multiplied by 0 (0 x NaN is NaN).
TEST(AdversarialTransformer, ANaNAtALaterPositionDoesNotReachEarlierOutputs) {
    Rng rng(8);
    const TransformerBlock<double> block({.d_model = 8, .num_heads = 2}, rng);
    for (const double poison : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
        Sequence<double> x = random_sequence<double>(2, 12, 8, rng);
        const Sequence<double> clean = block.forward(x);
        x.data.row(0 * 12 + 7).setConstant(poison);  // sequence 0, position 7
        const Sequence<double> y = block.forward(x);
        EXPECT_EQ(y.sequence(0).topRows(7), clean.sequence(0).topRows(7));
        EXPECT_EQ(y.sequence(1), clean.sequence(1));
    }
}

// generate() knows how many positions it needs: prompt plus new tokens may exceed
// max_cache_length.
TEST(AdversarialTransformer, GenerateSizesTheCacheForPromptAndNewTokens) {
    Rng rng(9);
    const LanguageModel<double> lm({.vocab_size = 7, .dim = 4, .mixer = {.kind = MixerKind::Transformer,
                                                                          .max_cache_length = 4}},
                                   rng);
    const TokenBatch prompt({1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6}, 2, 6);
    Rng sampling(1);
    const TokenBatch out = generate(lm, prompt, 5, SamplingOptions{}, sampling);
    EXPECT_EQ(out.batch, 2);
    EXPECT_EQ(out.steps, 5);
}

// ---------------------------------------------------------------------------
// Sizes that overflow 64 bits are refused before anything is allocated or indexed.

TEST(AdversarialSizes, OverflowingSequenceAndTokenBatchSizesAreRefused) {
    Rng rng(10);
    const Index huge = (Index(1) << 62) + 1;
    const Sequence<double> lying(Matrix<double>(4, 5), huge, 4);  // B*T wraps to 4
    const MinGRU<double> gru({.input_size = 5, .hidden_size = 3}, rng);
    expect_shape_error([&] { gru.forward(lying); }, {"overflows"});
    EXPECT_THROW(Sequence<double>(2, -3, 5), shape_error);
    EXPECT_THROW(Sequence<double>(Index(1) << 40, Index(1) << 40, 5), shape_error);
    EXPECT_THROW(TokenBatch(std::vector<int>(4), huge, 4), shape_error);
}

TEST(AdversarialSizes, HugeLayerSizesAreRefused) {
    Rng rng(11);
    const Index huge = Index(1) << 62;
    EXPECT_THROW(MinGRU<float>({.input_size = 4, .hidden_size = huge}, rng), shape_error);
    EXPECT_THROW(MinLSTM<float>({.input_size = 4, .hidden_size = huge}, rng), shape_error);
    EXPECT_THROW(TransformerBlock<float>({.d_model = huge, .num_heads = 2}, rng), shape_error);
    const TransformerBlock<float> long_cache({.d_model = 4, .num_heads = 2, .max_cache_length = huge}, rng);
    EXPECT_THROW(long_cache.initial_state(4), shape_error);
    EXPECT_THROW(Linear<float>(huge, huge, true, rng), shape_error);
}

TEST(AdversarialSizes, NonFiniteOrHugeScaleFactorsAreRefused) {
    Rng rng(12);
    for (const double factor : {std::nan(""), std::numeric_limits<double>::infinity(), 1e30, -1.0, 0.0}) {
        SCOPED_TRACE(factor);
        EXPECT_THROW(MinGRU<float>({.input_size = 4, .expansion = factor}, rng), shape_error);
        EXPECT_THROW(FeedForward<float>(4, factor, rng), shape_error);
        EXPECT_THROW(LMBlock<float>({.dim = 4, .mixer = {}, .ff_mult = factor}, rng), shape_error);
    }
}

// ---------------------------------------------------------------------------
// Hyperparameters PyTorch refuses are refused here too, with the value in the message.

TEST(AdversarialHyperparameters, BadValuesAreRefused) {
    Rng rng(13);
    for (const double base : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity()})
        EXPECT_THROW(TransformerBlock<float>({.d_model = 4, .num_heads = 2, .rotary = true, .rope_base = base}, rng),
                     shape_error)
            << base;
    expect_shape_error([&] { MinGRU<float>({.input_size = 4, .hidden_size = -3}, rng); }, {"hidden_size", "-3"});

    Linear<double> linear(2, 2, true, rng);
    ParameterList<double> params;
    linear.collect_parameters("", params);
    expect_shape_error([&] { AdamW<double>(params, {.beta1 = 1.0}); }, {"betas"});
    expect_shape_error([&] { AdamW<double>(params, {.beta2 = -0.1}); }, {"betas"});
    expect_shape_error([&] { AdamW<double>(params, {.lr = std::nan("")}); }, {"lr"});
    expect_shape_error([&] { AdamW<double>(params, {.lr = -1e-3}); }, {"lr"});
    expect_shape_error([&] { SGD<double>(params, {.lr = std::nan("")}); }, {"lr"});
    AdamW<double> adamw(params, {});
    expect_shape_error([&] { adamw.set_lr(std::numeric_limits<double>::infinity()); }, {"lr"});
    EXPECT_EQ(adamw.lr(), 1e-3);

    std::vector<double> scratch;
    const Matrix<double> logits = random_matrix<double>(1, 5, rng);
    expect_shape_error([&] { sample_token(logits.row(0), {.temperature = std::nan("")}, rng, scratch); },
                       {"temperature"});
    EXPECT_THROW(Dropout<float>(4, std::nan("")), shape_error);
}

// ---------------------------------------------------------------------------
// Aliasing: the gradient written over the loss's own input gives the same loss and gradient.

TEST(AdversarialAliasing, LossesMayWriteTheGradientOverTheirInput) {
    Rng rng(14);
    const Matrix<double> logits = random_matrix<double>(6, 5, rng, 3.0);
    const std::vector<int> targets{0, 4, kIgnoreIndex, 2, 2, 1};
    Matrix<double> grad;
    const double loss = cross_entropy_loss<double>(logits, targets, grad);
    Matrix<double> in_place = logits;
    EXPECT_EQ(cross_entropy_loss<double>(in_place, targets, in_place), loss);
    EXPECT_EQ(in_place, grad);

    const Matrix<double> prediction = random_matrix<double>(3, 4, rng), target = random_matrix<double>(3, 4, rng);
    const double mse = mse_loss<double>(prediction, target, grad);
    Matrix<double> over_prediction = prediction;
    EXPECT_EQ(mse_loss<double>(over_prediction, target, over_prediction), mse);
    EXPECT_EQ(over_prediction, grad);
    Matrix<double> over_target = target;
    EXPECT_EQ(mse_loss<double>(prediction, over_target, over_target), mse);
    EXPECT_EQ(over_target, grad);
}

// ---------------------------------------------------------------------------
// Threads: a small decoding step must not enter an OpenMP parallel region. On a busy
// machine the threads of a region may wait a whole scheduler slice for a core, which made
// a small step 14x slower on two threads than on one. Counted with libgomp, whose entry
// points this test wraps (GOMP_parallel and the dynamic loop of the attention kernel).

#ifdef SEQNN_COUNT_GOMP_REGIONS
namespace {
int gomp_regions = 0;
}

extern "C" void GOMP_parallel(void (*fn)(void*), void* data, unsigned threads, unsigned flags) {
    using Real = void (*)(void (*)(void*), void*, unsigned, unsigned);
    static const auto real = reinterpret_cast<Real>(dlsym(RTLD_NEXT, "GOMP_parallel"));
    ++gomp_regions;
    real(fn, data, threads, flags);
}

extern "C" void GOMP_parallel_loop_nonmonotonic_dynamic(void (*fn)(void*), void* data, unsigned threads, long start,
                                                         long end, long incr, long chunk, unsigned flags) {
    using Real = void (*)(void (*)(void*), void*, unsigned, long, long, long, long, unsigned);
    static const auto real = reinterpret_cast<Real>(dlsym(RTLD_NEXT, "GOMP_parallel_loop_nonmonotonic_dynamic"));
    ++gomp_regions;
    real(fn, data, threads, start, end, incr, chunk, flags);
}
#endif

TEST(AdversarialThreads, ASmallDecodingStepEntersNoParallelRegion) {
#ifndef SEQNN_COUNT_GOMP_REGIONS
    GTEST_SKIP() << "counts libgomp's parallel regions: needs g++ with OpenMP";
#else
#ifdef SEQNN_USE_BLIS
    // BLIS's OpenMP build enters a region, of one thread here, on every gemm. The default
    // kBlisMinFlops (2^27) keeps this step's products (under 2^16 flops) on Eigen; a build
    // that lowers it (-DSEQNN_BLIS_MIN_FLOPS=1) sends them to BLIS.
    if (kBlisMinFlops < double(1 << 16)) GTEST_SKIP() << "the step's products go to BLIS (SEQNN_BLIS_MIN_FLOPS)";
#endif
    const int threads = num_threads();
    set_num_threads(2);
    Rng rng(15);
    const LanguageModel<float> lm({.vocab_size = 32, .dim = 16, .depth = 2,
                                   .mixer = {.kind = MixerKind::Transformer, .max_cache_length = 512}},
                                  rng);
    // The count is live: a forward over a long sequence does enter parallel regions.
    gomp_regions = 0;
    lm.forward(TokenBatch(std::vector<int>(4 * 512, 1), 4, 512));
    EXPECT_GT(gomp_regions, 0);

    for (const Index streams : {Index(1), Index(8)}) {
        State<float> state = lm.initial_state(streams);
        std::vector<int> prompt(static_cast<std::size_t>(streams * 200), 3);
        lm.forward(TokenBatch(prompt, streams, 200), &state);  // a cache of 200 positions
        Matrix<float> logits;
        const std::vector<int> tokens(static_cast<std::size_t>(streams), 5);
        lm.step(tokens, state, logits);  // makes the step's workspace
        gomp_regions = 0;
        for (int t = 0; t < 4; ++t) lm.step(tokens, state, logits);
        EXPECT_EQ(gomp_regions, 0) << "B=" << streams;
    }
    set_num_threads(threads);
#endif
}
