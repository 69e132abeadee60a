// Autoregressive decoding with a LanguageModel: the prompt goes through forward
// once (building the recurrent state or KV cache), then each new token is one
// step(), so every token costs one step, not a forward over the whole prefix.
//
//   SamplingOptions{}                                  greedy (temperature 0)
//   SamplingOptions{.temperature = 0.8, .top_k = 40}   sampled from the top 40
//
// Sampling is reproducible: it draws from the Rng it is given, one 53-bit uniform
// per token (not std::uniform_real_distribution, whose algorithm varies between
// standard libraries), so a seed fixes the output on every platform.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/models/language_model.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace seqnn {

/// How generate() picks each token.
struct SamplingOptions {
    double temperature = 0.0;  ///< 0: greedy (argmax); otherwise softmax(logits / temperature)
    Index top_k = 0;           ///< > 0: sample among the k largest logits only
};

/// A uniform double in [0, 1) from 53 random bits.
inline double uniform_01(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

/// The next token from one row of logits (V). Greedy takes the first maximum.
/// `scratch` (V) is reused between calls, so sampling allocates nothing once it has grown.
template <typename Derived>
int sample_token(const Eigen::MatrixBase<Derived>& logits, const SamplingOptions& o, Rng& rng,
                 std::vector<double>& scratch) {
    const Index V = logits.size();
    if (V == 0) fail("sample_token", "logits are empty");
    if (!(o.temperature >= 0) || !std::isfinite(o.temperature) || o.top_k < 0)
        fail("sample_token", "temperature must be a finite number >= 0 and top_k >= 0, got " +
                                 number_text(o.temperature) + ", " + std::to_string(o.top_k));
    Index best = 0;
    for (Index j = 1; j < V; ++j)
        if (logits(j) > logits(best)) best = j;
    if (o.temperature == 0.0) return static_cast<int>(best);

    // The k-th largest logit: entries below it are excluded (ties at it are kept, as
    // PyTorch's `logits < topk(logits, k).values[-1]` mask does).
    double threshold = -std::numeric_limits<double>::infinity();
    if (o.top_k > 0 && o.top_k < V) {
        scratch.resize(static_cast<std::size_t>(V));
        for (Index j = 0; j < V; ++j) scratch[static_cast<std::size_t>(j)] = static_cast<double>(logits(j));
        std::nth_element(scratch.begin(), scratch.begin() + (o.top_k - 1), scratch.end(), std::greater<double>());
        threshold = scratch[static_cast<std::size_t>(o.top_k - 1)];
    }
    scratch.resize(static_cast<std::size_t>(V));
    const double max = static_cast<double>(logits(best));
    double sum = 0;
    for (Index j = 0; j < V; ++j) {
        const double l = static_cast<double>(logits(j));
        const double p = l >= threshold ? std::exp((l - max) / o.temperature) : 0.0;
        scratch[static_cast<std::size_t>(j)] = p;
        sum += p;
    }
    const double u = uniform_01(rng) * sum;
    double acc = 0;
    for (Index j = 0; j < V; ++j) {
        acc += scratch[static_cast<std::size_t>(j)];
        if (u < acc) return static_cast<int>(j);
    }
    return static_cast<int>(best);  // rounding left u at the very top
}

/// Continues each of the B prompts (B, P) by `new_tokens` tokens; returns them, (B, new_tokens).
template <typename Scalar>
TokenBatch generate(const LanguageModel<Scalar>& model, const TokenBatch& prompt, Index new_tokens,
                    const SamplingOptions& options, Rng& rng) {
    if (new_tokens <= 0) fail("generate", "new_tokens must be positive, got " + std::to_string(new_tokens));
    const Index B = prompt.batch;
    State<Scalar> state = model.initial_state(B);
    // Room for every position at once: the prompt and all but the last new token go through
    // the model (a Transformer's KV cache would otherwise fill up at max_cache_length).
    model.reserve(state, checked_add("generate", prompt.steps, new_tokens - 1));
    const Sequence<Scalar> prompt_logits = model.forward(prompt, &state);  // (B*P, V)
    Matrix<Scalar> logits = prompt_logits.at_step(prompt.steps - 1);      // (B, V)
    std::vector<int> out(static_cast<std::size_t>(B * new_tokens)), next(static_cast<std::size_t>(B));
    std::vector<double> scratch;
    for (Index t = 0; t < new_tokens; ++t) {
        for (Index b = 0; b < B; ++b) {
            next[static_cast<std::size_t>(b)] = sample_token(logits.row(b), options, rng, scratch);
            out[static_cast<std::size_t>(b * new_tokens + t)] = next[static_cast<std::size_t>(b)];
        }
        if (t + 1 < new_tokens) model.step(next, state, logits);  // (B) -> (B, V)
    }
    return TokenBatch(std::move(out), B, new_tokens);
}

}  // namespace seqnn
