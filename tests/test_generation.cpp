// Decoding: streaming with step() gives the tokens that re-running forward on the
// growing prefix gives, greedy and sampled; sampling honours temperature and top-k
// and is fixed by its seed.
#include "testing.hpp"

#include <seqnn/models/generate.hpp>
#include <seqnn/seqnn.hpp>
#include "layer_instances.hpp"

using namespace seqnn;

namespace {

TokenBatch prompt_of(Index B, Index P, int vocab, Rng& rng) {
    std::uniform_int_distribution<int> dist(0, vocab - 1);
    std::vector<int> ids(static_cast<std::size_t>(B * P));
    for (auto& id : ids) id = dist(rng);
    return TokenBatch(std::move(ids), B, P);
}

// The slow way: forward over prompt + everything generated so far, sample from the last logits.
TokenBatch generate_by_rerunning_forward(const LanguageModel<double>& lm, const TokenBatch& prompt, Index n,
                                         const SamplingOptions& o, Rng& rng) {
    const Index B = prompt.batch;
    std::vector<std::vector<int>> seqs(static_cast<std::size_t>(B));
    for (Index b = 0; b < B; ++b) seqs[static_cast<std::size_t>(b)].assign(prompt.sequence(b).begin(), prompt.sequence(b).end());
    std::vector<int> out(static_cast<std::size_t>(B * n));
    std::vector<double> scratch;
    for (Index t = 0; t < n; ++t) {
        std::vector<int> flat;
        for (const auto& s : seqs) flat.insert(flat.end(), s.begin(), s.end());
        const Index len = static_cast<Index>(seqs[0].size());
        const Sequence<double> logits = lm.forward(TokenBatch(flat, B, len));
        for (Index b = 0; b < B; ++b) {
            const int next = sample_token(logits.data.row(b * len + len - 1), o, rng, scratch);
            out[static_cast<std::size_t>(b * n + t)] = next;
            seqs[static_cast<std::size_t>(b)].push_back(next);
        }
    }
    return TokenBatch(std::move(out), B, n);
}

}  // namespace

TEST(Generate, StreamingEqualsRerunningForwardOnTheGrowingPrefix) {
    const MixerKind kinds[] = {MixerKind::RNN,    MixerKind::LSTM,    MixerKind::GRU,
                               MixerKind::MinGRU, MixerKind::MinLSTM, MixerKind::Transformer};
    for (MixerKind kind : kinds)
        for (bool conv : {false, true}) {
            if (conv && kind == MixerKind::Transformer) continue;  // the Transformer block has no conv
            SCOPED_TRACE(to_string(kind) + (conv ? " with conv" : ""));
            Rng rng(1);
            const LanguageModel<double> lm(
                {.vocab_size = 13, .dim = 8, .depth = 2, .mixer = {.kind = kind}, .ff_mult = 2.0, .conv = conv}, rng);
            const TokenBatch prompt = prompt_of(3, 5, 13, rng);
            for (const SamplingOptions o : {SamplingOptions{}, SamplingOptions{.temperature = 1.3},
                                            SamplingOptions{.temperature = 0.7, .top_k = 4}}) {
                Rng a(99), b(99);
                const TokenBatch streamed = generate(lm, prompt, 12, o, a);
                const TokenBatch rerun = generate_by_rerunning_forward(lm, prompt, 12, o, b);
                EXPECT_EQ(streamed.ids, rerun.ids) << "temperature " << o.temperature << ", top_k " << o.top_k;
            }
        }
}

TEST(Generate, SamplingIsSeededAndTemperatureZeroIsGreedy) {
    Rng rng(2);
    const LanguageModel<double> lm({.vocab_size = 20, .dim = 8, .depth = 1, .mixer = {.kind = MixerKind::MinGRU}}, rng);
    const TokenBatch prompt = prompt_of(2, 3, 20, rng);
    Rng a(5), b(5), c(6);
    const SamplingOptions hot{.temperature = 2.0};
    EXPECT_EQ(generate(lm, prompt, 30, hot, a).ids, generate(lm, prompt, 30, hot, b).ids);
    Rng a2(5);
    EXPECT_NE(generate(lm, prompt, 30, hot, a2).ids, generate(lm, prompt, 30, hot, c).ids);
    // Greedy ignores the generator.
    Rng g1(1), g2(2);
    EXPECT_EQ(generate(lm, prompt, 10, {}, g1).ids, generate(lm, prompt, 10, {}, g2).ids);
}

TEST(SampleToken, FollowsTheSoftmaxAndTopK) {
    Matrix<double> logits(1, 4);
    logits << 1.0, 3.0, 2.0, 3.0;
    std::vector<double> scratch;
    Rng rng(3);
    EXPECT_EQ(sample_token(logits.row(0), {}, rng, scratch), 1);  // the first maximum
    // top_k = 2 keeps the two 3.0s only; equal logits, equal odds.
    std::vector<int> counts(4);
    for (int i = 0; i < 4000; ++i) ++counts[static_cast<std::size_t>(sample_token(logits.row(0), {.temperature = 1.0, .top_k = 2}, rng, scratch))];
    EXPECT_EQ(counts[0] + counts[2], 0);
    EXPECT_NEAR(counts[1] / 4000.0, 0.5, 0.05);
    // Without top-k the frequencies follow softmax(logits / T).
    std::fill(counts.begin(), counts.end(), 0);
    const double T = 2.0;
    for (int i = 0; i < 20000; ++i) ++counts[static_cast<std::size_t>(sample_token(logits.row(0), {.temperature = T}, rng, scratch))];
    const Eigen::ArrayXd p = (logits.row(0).transpose().array() / T).exp();
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(counts[static_cast<std::size_t>(j)] / 20000.0, p(j) / p.sum(), 0.015) << j;
    // Huge logits do not overflow.
    logits << 1e4, -1e4, 0.0, 9999.0;
    const int t = sample_token(logits.row(0), {.temperature = 1.0}, rng, scratch);
    EXPECT_TRUE(t == 0 || t == 3);
}
