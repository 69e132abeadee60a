// Streaming is real-time safe: once a state exists, step() allocates nothing.
// This file counts both kinds of heap allocation: operator new (replaced below)
// and Eigen's own, which go through malloc. For the latter Eigen's runtime check
// is switched on and its failed assertions are counted instead of aborting.
#include "eigen_malloc_counter.hpp"

#include "testing.hpp"

#include <seqnn/seqnn.hpp>
#include <seqnn/models/transformer_block.hpp>
#include <seqnn/models/language_model.hpp>
#include <seqnn/models/residual.hpp>
#include <seqnn/layers/positional.hpp>
#include "layer_instances.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

#include "allocation_counter.hpp"

using namespace seqnn;

namespace {

// Counts the heap allocations made by `steps` calls of layer.step after the state exists.
template <typename Scalar>
long allocations_per_stream(const Layer<Scalar>& layer, Index batch, Index steps) {
    Rng rng(3);
    const Matrix<Scalar> x = seqnn::testing::random_matrix<Scalar>(batch, layer.input_size(), rng);
    State<Scalar> state = layer.initial_state(batch);
    Matrix<Scalar> y(batch, layer.output_size());
    layer.step(x, state, y);  // warm-up outside the counted region
    start_counting();
    for (Index t = 0; t < steps; ++t) layer.step(x, state, y);
    return stop_counting();
}

}  // namespace

TEST(StepAllocation, CounterSeesAllocations) {
    // The counter itself works: a std::vector and an Eigen matrix are both seen.
    start_counting();
    auto* v = new std::vector<int>(100);
    EXPECT_EQ(stop_counting(), 2);
    delete v;
    start_counting();
    Matrix<float> m(40, 40);
    EXPECT_EQ(stop_counting(), 1);
}

TEST(StepAllocation, RecurrentLayersStepWithoutAllocating) {
    Rng rng(1);
    const GRU<float> gru({.input_size = 5, .hidden_size = 7, .num_layers = 2}, rng);
    const LSTM<float> lstm({.input_size = 5, .hidden_size = 7, .num_layers = 2}, rng);
    const RNN<double> rnn({.input_size = 5, .hidden_size = 7, .num_layers = 3, .nonlinearity = Activation::ReLU}, rng);
    EXPECT_EQ(allocations_per_stream(gru, 3, 50), 0);
    EXPECT_EQ(allocations_per_stream(lstm, 3, 50), 0);
    EXPECT_EQ(allocations_per_stream(rnn, 3, 50), 0);
}

TEST(StepAllocation, MinRnnLayersStepWithoutAllocating) {
    Rng rng(5);
    const MinGRU<float> mingru({.input_size = 5, .expansion = 1.6}, rng);
    const MinLSTM<double> minlstm({.input_size = 5, .hidden_size = 7, .mode = MinRNNMode::LogSpace}, rng);
    EXPECT_EQ(allocations_per_stream(mingru, 3, 50), 0);
    EXPECT_EQ(allocations_per_stream(minlstm, 3, 50), 0);
}

TEST(StepAllocation, OneLargeStreamStepsWithoutAllocating) {
    Rng rng(2);
    const GRU<float> gru({.input_size = 256, .hidden_size = 256}, rng);
    const LSTM<float> lstm({.input_size = 256, .hidden_size = 256}, rng);
    EXPECT_EQ(allocations_per_stream(gru, 1, 20), 0);
    EXPECT_EQ(allocations_per_stream(lstm, 1, 20), 0);
    const MinGRU<float> mingru({.input_size = 256, .expansion = 2.0}, rng);
    EXPECT_EQ(allocations_per_stream(mingru, 1, 20), 0);
}

TEST(StepAllocation, StateFromForwardStepsWithoutAllocatingAfterFirstStep) {
    Rng rng(4);
    const GRU<float> gru({.input_size = 5, .hidden_size = 7}, rng);
    const Sequence<float> x = seqnn::testing::random_sequence<float>(3, 10, 5, rng);
    State<float> state;
    gru.forward(x, &state);
    Matrix<float> xt = seqnn::testing::random_matrix<float>(3, 5, rng), y(3, 7);
    gru.step(xt, state, y);  // the first step makes the workspace the forward state lacks
    start_counting();
    for (int t = 0; t < 20; ++t) gru.step(xt, state, y);
    EXPECT_EQ(stop_counting(), 0);
}

// A Transformer block appends to its preallocated KV cache: no allocation per step, also
// once the cache is long enough for the attention kernel to split heads across threads
// (its scratch is part of the state's workspace), and from a cache that forward filled.
TEST(StepAllocation, TransformerBlockStepsWithoutAllocating) {
    Rng rng(6);
    const TransformerBlock<float> small({.d_model = 24, .num_heads = 3, .rotary = true, .max_cache_length = 64}, rng);
    EXPECT_EQ(allocations_per_stream(small, 3, 50), 0);
    const TransformerBlock<double> plain({.d_model = 24, .num_heads = 3, .max_cache_length = 64}, rng);
    EXPECT_EQ(allocations_per_stream(plain, 2, 50), 0);

    const TransformerBlock<float> block({.d_model = 64, .num_heads = 8, .rotary = true, .max_cache_length = 2100},
                                        rng);
    State<float> state;
    block.forward(seqnn::testing::random_sequence<float>(1, 2000, 64, rng), &state);  // 2000 positions cached
    Matrix<float> x = seqnn::testing::random_matrix<float>(1, 64, rng), y(1, 64);
    block.step(x, state, y);  // the first step makes the workspace forward's state lacks
    start_counting();
    for (int t = 0; t < 20; ++t) block.step(x, state, y);
    EXPECT_EQ(stop_counting(), 0);
    EXPECT_EQ(state.position, 2021);
}

TEST(StepAllocation, PositionEmbeddingsStepWithoutAllocating) {
    Rng rng(7);
    const LearnedPositionalEmbedding<float> learned(60, 5, rng);
    const SinusoidalPositionalEncoding<double> sinusoidal(5);
    EXPECT_EQ(allocations_per_stream(learned, 3, 50), 0);
    EXPECT_EQ(allocations_per_stream(sinusoidal, 3, 50), 0);
}

// The language model streams one token per stream through embedding, blocks (conv,
// norms, mixer, MLP), norm and head without allocating, for every mixer kind; so do
// the generic composites.
TEST(StepAllocation, LanguageModelStepsWithoutAllocating) {
    for (MixerKind kind : {MixerKind::RNN, MixerKind::LSTM, MixerKind::GRU, MixerKind::MinGRU, MixerKind::MinLSTM,
                           MixerKind::Transformer}) {
        Rng rng(6);
        const LanguageModel<float> lm({.vocab_size = 17, .dim = 8, .depth = 2,
                                       .mixer = {.kind = kind, .max_cache_length = 64},
                                       .conv = kind != MixerKind::Transformer},
                                      rng);
        State<float> state = lm.initial_state(3);
        const std::vector<int> tokens{1, 5, 16};
        Matrix<float> logits(3, 17);
        lm.step(tokens, state, logits);
        start_counting();
        for (int t = 0; t < 30; ++t) lm.step(tokens, state, logits);
        EXPECT_EQ(stop_counting(), 0) << to_string(kind);
    }
}

TEST(StepAllocation, CompositesStepWithoutAllocating) {
    Rng rng(7);
    Sequential<float> stack;
    stack.emplace<GRU<float>>(RecurrentOptions{.input_size = 5, .hidden_size = 6}, rng);
    stack.add(make_linear_layer<float>(6, 6, true, rng));
    stack.emplace<Residual<float>>(std::make_unique<MinGRU<float>>(MinRNNOptions{.input_size = 6, .expansion = 2.0}, rng),
                                   RMSNorm<float>(6));
    stack.emplace<FeedForward<float>>(6, 2.0, rng);
    EXPECT_EQ(allocations_per_stream(stack, 3, 50), 0);
}
