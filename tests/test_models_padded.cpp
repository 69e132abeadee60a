// Padded batches (Sequence::lengths) through attention, the blocks and the language model:
// a padded batch gives what each sequence run alone gives (outputs, zeros past each end,
// final state, gradients); the layers whose state is one position for all streams (a KV
// cache, a position offset) refuse a padded batch with a state; the language model's
// logits are zero past each end and padding_targets keeps them out of the loss.
#include "testing.hpp"

#include <seqnn/seqnn.hpp>
#include <seqnn/layers/attention.hpp>
#include <seqnn/layers/positional.hpp>
#include <seqnn/models/language_model.hpp>
#include <seqnn/models/lm_block.hpp>
#include <seqnn/models/transformer_block.hpp>
#include <seqnn/train/loss.hpp>
#include "layer_instances.hpp"

using namespace seqnn;
using seqnn::testing::expect_padded_batch_matches_each_alone;
using seqnn::testing::expect_shape_error;
using seqnn::testing::random_sequence;
using seqnn::testing::relative_error;
using seqnn::testing::StateRows;

namespace {

// Unsorted, one full length and one of a single step.
const std::vector<Index> kLengths{7, 1, 4, 6};

Sequence<double> padded_input(Index features, Rng& rng) {
    Sequence<double> x = random_sequence<double>(static_cast<Index>(kLengths.size()), 7, features, rng);
    x.lengths = kLengths;
    return x;
}

// Non-trivial weights everywhere (zero biases and unit norms would hide mistakes).
template <typename Scalar>
void randomize(Layer<Scalar>& layer, Rng& rng) {
    for (auto& p : layer.parameters()) p.param->init_uniform(Scalar(0.5), rng);
}

}  // namespace

TEST(PaddedAttention, CausalAndFullAttentionMatchEachSequenceAlone) {
    for (const bool causal : {true, false})
        for (const bool rotary : {false, true}) {
            SCOPED_TRACE(std::string(causal ? "causal" : "full") + (rotary ? ", rotary" : ""));
            Rng rng(1);
            SelfAttention<double> attention({.embed_dim = 12, .num_heads = 3, .causal = causal, .rotary = rotary}, rng);
            randomize(attention, rng);
            expect_padded_batch_matches_each_alone<double>(attention, padded_input(12, rng), State<double>{}, 1e-12, 3,
                                                           StateRows::Stateless);
        }
}

TEST(PaddedAttention, FullAttentionNeverLooksPastASequencesEnd) {
    Rng rng(2);
    SelfAttention<double> attention({.embed_dim = 8, .num_heads = 2, .causal = false}, rng);
    Sequence<double> x = padded_input(8, rng);
    const Matrix<double> y = attention.forward(x).data;
    for (std::size_t b = 0; b < kLengths.size(); ++b)  // whatever the padding holds
        x.sequence(static_cast<Index>(b)).bottomRows(7 - kLengths[b]).setConstant(1e3);
    EXPECT_EQ(attention.forward(x).data, y);
}

TEST(PaddedAttention, AStateIsRefusedWithAPaddedBatch) {
    Rng rng(3);
    SelfAttention<double> attention({.embed_dim = 8, .num_heads = 2}, rng);
    const Sequence<double> x = padded_input(8, rng);
    State<double> cache = attention.initial_state(x.batch);
    expect_shape_error([&] { attention.forward(x, &cache); },
                       {"SelfAttention.forward", "a padded batch (with lengths) cannot run with a state"});
    LearnedPositionalEmbedding<double> table(16, 8, rng);
    State<double> position = table.initial_state(x.batch);
    expect_shape_error([&] { table.forward(x, &position); }, {"cannot run with a state"});
    EXPECT_NO_THROW(table.forward(x));  // without a state, every sequence starts at position 0
}

TEST(PaddedBlocks, TransformerBlockMatchesEachSequenceAlone) {
    Rng rng(4);
    TransformerBlock<double> block({.d_model = 12, .num_heads = 3, .dim_feedforward = 20, .causal = false}, rng);
    randomize(block, rng);
    expect_padded_batch_matches_each_alone<double>(block, padded_input(12, rng), State<double>{}, 1e-12, 3,
                                                   StateRows::Stateless);
}

// The minLM block with its causal conv carries a state per sequence: from a random initial
// state, each sequence's final state is its own (the conv's window is laid out by stream).
TEST(PaddedBlocks, MinLMBlockWithConvMatchesEachSequenceAlone) {
    for (const MixerKind kind : {MixerKind::MinGRU, MixerKind::MinLSTM, MixerKind::GRU, MixerKind::LSTM}) {
        SCOPED_TRACE(to_string(kind));
        Rng rng(5);
        LMBlock<double> block({.dim = 6, .mixer = {.kind = kind, .expansion = 1.5}, .ff_mult = 2.0, .conv = true,
                               .conv_kernel = 3},
                              rng);
        randomize(block, rng);
        const Sequence<double> x = padded_input(6, rng);
        const State<double> initial = seqnn::testing::random_state<double>(block, x.batch, rng);
        // The conv's window (B*(K-1), D) is laid out by stream; the mixer's state has one
        // row per stream, where both layouts agree.
        expect_padded_batch_matches_each_alone<double>(block, x, State<double>{}, 1e-12, 3, StateRows::StreamMajor);
        expect_padded_batch_matches_each_alone<double>(block, x, initial, 1e-12, 3, StateRows::StreamMajor);
    }
}

TEST(PaddedLanguageModel, LogitsAndGradientsMatchEachSequenceAlone) {
    for (const MixerKind kind : {MixerKind::MinGRU, MixerKind::Transformer}) {
        SCOPED_TRACE(to_string(kind));
        Rng rng(6);
        LanguageModel<double> lm({.vocab_size = 11, .dim = 6, .depth = 2,
                                  .mixer = {.kind = kind, .num_heads = 3}, .ff_mult = 2.0,
                                  .conv = kind != MixerKind::Transformer},
                                 rng);
        std::uniform_int_distribution<int> token(0, 10);
        const Index B = static_cast<Index>(kLengths.size()), T = 7;
        std::vector<int> ids(static_cast<std::size_t>(B * T));
        for (int& id : ids) id = token(rng);
        TokenBatch tokens(ids, B, T);
        tokens.lengths = kLengths;
        std::vector<int> next(ids.size());
        for (std::size_t i = 0; i < ids.size(); ++i) next[i] = token(rng);
        const std::vector<int> targets = padding_targets(tokens, next);

        lm.zero_grad();
        Context<double> ctx;
        const Sequence<double> logits = lm.forward(tokens, nullptr, &ctx);
        ASSERT_EQ(logits.lengths, kLengths);
        Matrix<double> dlogits;
        const double loss = cross_entropy_loss<double>(logits.data, targets, dlogits);
        lm.backward(Sequence<double>(dlogits, B, T), ctx);
        std::vector<Matrix<double>> grads;
        for (const auto& p : lm.parameters()) grads.push_back(p.param->grad);

        // Each sequence alone, its loss weighted by its share of the real positions.
        lm.zero_grad();
        Index real = 0;
        for (Index n : kLengths) real += n;
        double loss_alone = 0;
        for (Index b = 0; b < B; ++b) {
            const Index n = kLengths[static_cast<std::size_t>(b)];
            const TokenBatch one(std::vector<int>(ids.begin() + b * T, ids.begin() + b * T + n), 1, n);
            Context<double> one_ctx;
            const Sequence<double> one_logits = lm.forward(one, nullptr, &one_ctx);
            EXPECT_LT(relative_error(logits.sequence(b).topRows(n), one_logits.data), 1e-12) << "sequence " << b;
            EXPECT_TRUE(logits.sequence(b).bottomRows(T - n).isZero(0)) << "padding of sequence " << b;
            Matrix<double> d_one;
            const std::vector<int> one_targets(next.begin() + b * T, next.begin() + b * T + n);
            const double share = static_cast<double>(n) / static_cast<double>(real);
            loss_alone += share * cross_entropy_loss<double>(one_logits.data, one_targets, d_one, kIgnoreIndex, share);
            lm.backward(Sequence<double>(d_one, 1, n), one_ctx);
        }
        EXPECT_NEAR(loss, loss_alone, 1e-12);
        const auto params = lm.parameters();
        for (std::size_t i = 0; i < params.size(); ++i)
            EXPECT_LT(relative_error(grads[i], params[i].param->grad), 1e-11) << params[i].name;
    }
}

TEST(PaddedLanguageModel, BadLengthsAreRefusedNamingTheModel) {
    Rng rng(7);
    LanguageModel<double> lm({.vocab_size = 5, .dim = 4, .depth = 1, .mixer = {}}, rng);
    TokenBatch tokens(std::vector<int>(6, 1), 2, 3);
    tokens.lengths = {3, 0};
    expect_shape_error([&] { lm.forward(tokens); }, {"LanguageModel", "lengths[1] is 0"});
    tokens.lengths = {3};
    expect_shape_error([&] { lm.forward(tokens); }, {"got 1 lengths for B=2"});
    tokens.lengths = {4, 1};
    expect_shape_error([&] { lm.forward(tokens); }, {"lengths[0] is 4", "T=3"});
    tokens.lengths = {2, -1};
    expect_shape_error([&] { lm.forward(tokens); }, {"lengths[1] is -1"});
    tokens.lengths = {2, 2};
    expect_shape_error([&] { tokens.slice(0, 1); }, {"TokenBatch.slice", "padded"});
}
