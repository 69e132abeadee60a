// The language model: minLM's names and shapes, the composition it computes, forward
// with state (chunked == whole), step == forward, gradients, thread-safe inference,
// dropout, gradient accumulation, the gradient-ready hook of backward, and that every
// mixer kind learns a small task.
#include "testing.hpp"

#include <seqnn/models/language_model.hpp>
#include <seqnn/seqnn.hpp>
#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>
#include "layer_instances.hpp"

#include <thread>
#include <utility>

using namespace seqnn;
using seqnn::testing::relative_error;

namespace {

TokenBatch random_tokens(Index B, Index T, int vocab, Rng& rng) {
    std::uniform_int_distribution<int> dist(0, vocab - 1);
    std::vector<int> ids(static_cast<std::size_t>(B * T));
    for (auto& id : ids) id = dist(rng);
    return TokenBatch(std::move(ids), B, T);
}

// conv is ignored for the Transformer, which has none.
LanguageModelOptions small(MixerKind kind, bool conv = false) {
    return {.vocab_size = 11, .dim = 6, .depth = 2, .mixer = {.kind = kind, .num_heads = 3}, .ff_mult = 2.0,
            .conv = conv && kind != MixerKind::Transformer};
}

// Positive states for the min RNNs' log-space mode; any state for the rest.
State<double> random_lm_state(const LanguageModel<double>& lm, Index B, Rng& rng) {
    State<double> s = lm.initial_state(B);
    for (Matrix<double>* t : state_tensors(s))
        *t = seqnn::testing::random_matrix<double>(t->rows(), t->cols(), rng, 0.5).cwiseAbs();
    return s;
}

const MixerKind kAllKinds[] = {MixerKind::RNN,    MixerKind::LSTM,    MixerKind::GRU,
                               MixerKind::MinGRU, MixerKind::MinLSTM, MixerKind::Transformer};

}  // namespace

TEST(LanguageModel, NamesAndShapesFollowLucidrainsMinLM) {
    // minLM(num_tokens=11, dim=6, depth=2, ff_mult=4, expansion=1.5, conv_kernel_size=3, enable_conv=True)
    Rng rng(1);
    LanguageModel<double> lm({.vocab_size = 11, .dim = 6, .depth = 2, .mixer = {.kind = MixerKind::MinGRU},
                              .conv = true, .conv_kernel = 3},
                             rng);
    std::vector<std::pair<std::string, std::vector<Index>>> got;
    for (const auto& p : lm.parameters()) got.emplace_back(p.name, p.param->shape);
    std::vector<std::pair<std::string, std::vector<Index>>> expected{{"token_emb.weight", {11, 6}}};
    for (int i = 0; i < 2; ++i) {
        const std::string l = "layers." + std::to_string(i) + ".";
        const std::vector<std::pair<std::string, std::vector<Index>>> block{
            {l + "0.net.0.weight", {6, 1, 3}}, {l + "0.net.0.bias", {6}},
            {l + "0.net.1.weight", {6, 6, 1}}, {l + "0.net.1.bias", {6}},
            {l + "1.weight", {6}},             {l + "2.to_hidden_and_gate.weight", {18, 6}},
            {l + "2.to_out.weight", {6, 9}},   {l + "3.weight", {6}},
            {l + "4.0.weight", {24, 6}},       {l + "4.0.bias", {24}},
            {l + "4.2.weight", {6, 24}},       {l + "4.2.bias", {6}}};
        expected.insert(expected.end(), block.begin(), block.end());
    }
    expected.push_back({"norm.weight", {6}});
    expected.push_back({"to_logits.weight", {11, 6}});
    EXPECT_EQ(got, expected);

    LanguageModel<double> lstm({.vocab_size = 11, .dim = 6, .depth = 1, .mixer = {.kind = MixerKind::MinLSTM}}, rng);
    EXPECT_EQ(lstm.parameters()[2].name, "layers.0.2.to_hidden_and_f_i_gate.weight");
    EXPECT_EQ(lstm.parameters()[2].param->shape, (std::vector<Index>{27, 6}));

    // The Transformer kind: nn.TransformerEncoder's names under layers.{i}.
    LanguageModel<double> gpt({.vocab_size = 11, .dim = 6, .depth = 2, .mixer = {.kind = MixerKind::Transformer, .num_heads = 3}},
                              rng);
    EXPECT_EQ(gpt.parameters()[1].name, "layers.0.self_attn.in_proj_weight");
    EXPECT_EQ(gpt.parameters()[1].param->shape, (std::vector<Index>{18, 6}));
    EXPECT_EQ(gpt.parameters().back().name, "to_logits.weight");
}

TEST(LanguageModel, ComputesEmbeddingBlocksNormHead) {
    Rng rng(2);
    LanguageModel<double> lm(small(MixerKind::GRU, true), rng);
    const TokenBatch tokens = random_tokens(3, 7, 11, rng);
    Sequence<double> h(lm.token_emb().forward(tokens.ids), 3, 7);
    for (Index i = 0; i < 2; ++i) h = lm.block(i).forward(h);
    const Matrix<double> expected = lm.to_logits().forward(RMSNorm<double>(6).forward(h.data));
    const Sequence<double> logits = lm.forward(tokens);
    EXPECT_EQ(logits.batch, 3);
    EXPECT_EQ(logits.steps, 7);
    EXPECT_LT(relative_error(logits.data, expected), 1e-15);
}

TEST(LanguageModel, ChunkedEqualsWholeAndStepEqualsForward) {
    for (MixerKind kind : kAllKinds)
        for (bool conv : {false, true}) {
            if (conv && kind == MixerKind::Transformer) continue;
            SCOPED_TRACE(to_string(kind) + (conv ? " with conv" : ""));
            Rng rng(3);
            const LanguageModel<double> lm(small(kind, conv), rng);
            const TokenBatch tokens = random_tokens(3, 9, 11, rng);
            const State<double> s0 = random_lm_state(lm, 3, rng);
            State<double> s_whole = s0;
            const Sequence<double> whole = lm.forward(tokens, &s_whole);

            State<double> s_chunk = s0;
            const Sequence<double> a = lm.forward(tokens.slice(0, 4), &s_chunk);
            const Sequence<double> b = lm.forward(tokens.slice(4, 5), &s_chunk);
            State<double> s_step = s0;
            Matrix<double> logits;
            std::vector<int> column(3);
            for (Index t = 0; t < 9; ++t) {
                for (Index bb = 0; bb < 3; ++bb) column[static_cast<std::size_t>(bb)] = tokens.at(bb, t);
                lm.step(column, s_step, logits);
                EXPECT_LT(relative_error(logits, Matrix<double>(whole.at_step(t))), 1e-12) << "step " << t;
                const Matrix<double> chunked = t < 4 ? Matrix<double>(a.at_step(t)) : Matrix<double>(b.at_step(t - 4));
                EXPECT_LT(relative_error(chunked, Matrix<double>(whole.at_step(t))), 1e-12) << "step " << t;
            }
            const auto whole_state = state_tensors(s_whole), chunk_state = state_tensors(s_chunk),
                       step_state = state_tensors(s_step);
            ASSERT_EQ(chunk_state.size(), whole_state.size());
            ASSERT_EQ(step_state.size(), whole_state.size());
            for (std::size_t k = 0; k < whole_state.size(); ++k) {
                EXPECT_LT(relative_error(*chunk_state[k], *whole_state[k]), 1e-12);
                EXPECT_LT(relative_error(*step_state[k], *whole_state[k]), 1e-12);
            }
        }
}

// L = cross_entropy(logits, targets) + sum(final state .* W); every parameter, and the
// initial state, against central differences.
TEST(LanguageModel, GradientsMatchFiniteDifferences) {
    for (MixerKind kind : kAllKinds) {
        SCOPED_TRACE(to_string(kind));
        Rng rng(4);
        LanguageModel<double> lm(small(kind, true), rng);
        const TokenBatch tokens = random_tokens(2, 5, 11, rng);
        std::vector<int> targets = random_tokens(2, 5, 11, rng).ids;
        targets[3] = kIgnoreIndex;
        State<double> s0 = random_lm_state(lm, 2, rng);
        State<double> d_final = s0;  // a state tree of s0's shape: W
        for (Matrix<double>* t : state_tensors(d_final)) *t = seqnn::testing::random_matrix<double>(t->rows(), t->cols(), rng);
        const std::vector<const Matrix<double>*> w_state = state_tensors(std::as_const(d_final));

        const auto loss = [&] {
            State<double> s = s0;
            Matrix<double> g;
            double l = cross_entropy_loss<double>(lm.forward(tokens, &s).data, targets, g);
            const auto final_state = state_tensors(s);
            for (std::size_t k = 0; k < final_state.size(); ++k) l += (final_state[k]->array() * w_state[k]->array()).sum();
            return l;
        };
        lm.zero_grad();
        Context<double> ctx;
        State<double> s = s0;
        const Sequence<double> logits = lm.forward(tokens, &s, &ctx);
        Matrix<double> dlogits;
        cross_entropy_loss<double>(logits.data, targets, dlogits);
        State<double> d_initial;
        lm.backward(Sequence<double>(dlogits, 2, 5), ctx, &d_final, &d_initial);

        for (auto& p : lm.parameters()) {
            const Matrix<double> analytic = p.param->grad;
            EXPECT_LT(seqnn::testing::finite_difference_error(p.param->value, analytic, loss, 10), 1e-6) << p.name;
        }
        const auto initial = state_tensors(s0), d_initial_tensors = state_tensors(d_initial);
        ASSERT_EQ(d_initial_tensors.size(), initial.size());
        for (std::size_t k = 0; k < initial.size(); ++k)
            EXPECT_LT(seqnn::testing::finite_difference_error(*initial[k], *d_initial_tensors[k], loss, 10), 1e-6)
                << "initial state " << k;
    }
}

TEST(LanguageModel, InferenceFromFourThreadsIsSafeAndIdentical) {
    for (MixerKind kind : {MixerKind::MinGRU, MixerKind::Transformer}) {
        SCOPED_TRACE(to_string(kind));
        Rng rng(5);
        const LanguageModel<float> lm({.vocab_size = 50, .dim = 32, .depth = 2, .mixer = {.kind = kind},
                                       .conv = kind != MixerKind::Transformer},
                                      rng);
        const TokenBatch tokens = random_tokens(4, 33, 50, rng);
        const Matrix<float> expected = lm.forward(tokens).data;
        Matrix<float> expected_step;
        {
            State<float> s = lm.initial_state(1);
            for (Index t = 0; t < 20; ++t) lm.step(std::vector<int>{tokens.at(0, t)}, s, expected_step);
        }
        std::vector<Matrix<float>> got(4), got_step(4);
        std::vector<std::thread> threads;
        for (int i = 0; i < 4; ++i)
            threads.emplace_back([&, i] {
                for (int repeat = 0; repeat < 3; ++repeat) got[static_cast<std::size_t>(i)] = lm.forward(tokens).data;
                State<float> s = lm.initial_state(1);
                for (Index t = 0; t < 20; ++t)
                    lm.step(std::vector<int>{tokens.at(0, t)}, s, got_step[static_cast<std::size_t>(i)]);
            });
        for (auto& t : threads) t.join();
        for (int i = 0; i < 4; ++i) {
            if (kind == MixerKind::Transformer) {
                // TransformerBlock's float forward is not bitwise repeatable even on one
                // thread (differences of ~2e-7 between two calls at -O2 -march=native), so
                // for it: the same results to rounding.
                EXPECT_LT(relative_error(got[static_cast<std::size_t>(i)], expected), 1e-5) << "thread " << i;
                EXPECT_LT(relative_error(got_step[static_cast<std::size_t>(i)], expected_step), 1e-5) << "thread " << i;
                continue;
            }
            EXPECT_EQ(got[static_cast<std::size_t>(i)], expected) << "thread " << i;
            EXPECT_EQ(got_step[static_cast<std::size_t>(i)], expected_step) << "thread " << i;
        }
    }
}

TEST(LanguageModel, DropoutActsOnlyInTraining) {
    Rng rng(6);
    LanguageModelOptions o = small(MixerKind::MinGRU);
    o.dropout = 0.25;
    o.dropout_seed = 17;
    LanguageModel<double> lm(o, rng);
    const TokenBatch tokens = random_tokens(2, 6, 11, rng);
    const Matrix<double> eval = lm.forward(tokens).data;
    EXPECT_EQ(lm.forward(tokens).data, eval);  // inference: deterministic, no dropout
    Context<double> c1, c2;
    const Matrix<double> train1 = lm.forward(tokens, nullptr, &c1).data;
    const Matrix<double> train2 = lm.forward(tokens, nullptr, &c2).data;
    EXPECT_GT((train1 - eval).cwiseAbs().maxCoeff(), 1e-3);
    EXPECT_GT((train1 - train2).cwiseAbs().maxCoeff(), 1e-3);  // a new mask each call
    for (auto* d : lm.dropouts()) EXPECT_EQ(d->calls(), 2u);
    // The same seed replays the masks.
    Rng rng_again(6);
    LanguageModel<double> twin(o, rng_again);
    Context<double> c3;
    EXPECT_EQ(twin.forward(tokens, nullptr, &c3).data, train1);
}

TEST(LanguageModel, GradientAccumulationEqualsOneBigBatch) {
    Rng rng(7);
    LanguageModel<double> lm(small(MixerKind::MinLSTM, true), rng);
    const TokenBatch tokens = random_tokens(4, 6, 11, rng);
    const std::vector<int> targets = random_tokens(4, 6, 11, rng).ids;
    const auto grads = [&](Index micro) {
        lm.zero_grad();
        const Index per = 4 / micro;
        for (Index m = 0; m < micro; ++m) {
            const auto first = tokens.ids.begin() + m * per * 6;
            const TokenBatch part(std::vector<int>(first, first + per * 6), per, 6);
            const std::vector<int> part_targets(targets.begin() + m * per * 6, targets.begin() + (m + 1) * per * 6);
            Context<double> ctx;
            const Sequence<double> logits = lm.forward(part, nullptr, &ctx);
            Matrix<double> dlogits;
            cross_entropy_loss<double>(logits.data, part_targets, dlogits, kIgnoreIndex, 1.0 / static_cast<double>(micro));
            lm.backward(Sequence<double>(dlogits, per, 6), ctx);
        }
        std::vector<Matrix<double>> out;
        for (auto& p : lm.parameters()) out.push_back(p.param->grad);
        return out;
    };
    const auto whole = grads(1), accumulated = grads(2);
    for (std::size_t i = 0; i < whole.size(); ++i) EXPECT_LT(relative_error(accumulated[i], whole[i]), 1e-13);
}

// backward with a GradientReadyHook: the hook's runs cover every parameter exactly once,
// contiguously from the last to the first (head, norm, each block from the last,
// embedding), each gradient is final when it is reported, and the gradients and
// d_initial are bitwise those of the plain backward from the same context; also for a
// padded batch whose dlogits are not zero in the padding (backward zeroes a copy first).
TEST(LanguageModel, GradientHookReportsEveryParameterOnceAndChangesNothing) {
    for (MixerKind kind : kAllKinds)
        for (bool padded : {false, true}) {
            SCOPED_TRACE(to_string(kind) + (padded ? ", padded" : ""));
            Rng rng(12);
            LanguageModel<double> lm(small(kind, true), rng);
            TokenBatch tokens = random_tokens(3, 5, 11, rng);
            State<double> s0, d_final;
            if (padded) {
                tokens.lengths = {5, 2, 4};
            } else {
                s0 = random_lm_state(lm, 3, rng);
                d_final = s0;
                for (Matrix<double>* t : state_tensors(d_final))
                    *t = seqnn::testing::random_matrix<double>(t->rows(), t->cols(), rng);
            }
            Context<double> ctx;
            State<double> s = s0;
            lm.forward(tokens, padded ? nullptr : &s, &ctx);
            const Sequence<double> dlogits(seqnn::testing::random_matrix<double>(15, 11, rng), 3, 5);  // padding too

            const ParameterList<double> params = lm.parameters();
            const auto gradients = [&] {
                std::vector<Matrix<double>> out;
                for (const auto& p : params) out.push_back(p.param->grad);
                return out;
            };
            lm.zero_grad();
            State<double> plain_initial;
            lm.backward(dlogits, ctx, padded ? nullptr : &d_final, padded ? nullptr : &plain_initial);
            const std::vector<Matrix<double>> plain = gradients();

            lm.zero_grad();
            std::vector<std::pair<std::size_t, std::size_t>> runs;
            std::vector<Matrix<double>> at_report(params.size());
            std::vector<int> reported(params.size(), 0);
            State<double> hooked_initial;
            lm.backward(dlogits, ctx, padded ? nullptr : &d_final, padded ? nullptr : &hooked_initial,
                        [&](std::size_t first, std::size_t end) {
                            runs.emplace_back(first, end);
                            ASSERT_LT(first, end);
                            ASSERT_LE(end, params.size());
                            for (std::size_t i = first; i < end; ++i) {
                                ++reported[i];
                                at_report[i] = params[i].param->grad;
                            }
                        });
            const std::vector<Matrix<double>> hooked = gradients();

            ASSERT_EQ(runs.size(), static_cast<std::size_t>(lm.options().depth) + 3);  // head, norm, blocks, embedding
            EXPECT_EQ(runs.front().second, params.size());
            for (std::size_t k = 1; k < runs.size(); ++k) EXPECT_EQ(runs[k].second, runs[k - 1].first) << "run " << k;
            EXPECT_EQ(runs.back().first, 0u);
            EXPECT_EQ(runs[0], std::make_pair(params.size() - 1, params.size()));  // to_logits.weight
            EXPECT_EQ(params[runs[1].first].name, "norm.weight");
            EXPECT_EQ(params[runs[2].first].name.rfind("layers.1.", 0), 0u) << params[runs[2].first].name;
            EXPECT_EQ(runs.back(), std::make_pair(std::size_t(0), std::size_t(1)));  // token_emb.weight
            for (std::size_t i = 0; i < params.size(); ++i) {
                EXPECT_EQ(reported[i], 1) << params[i].name;
                EXPECT_EQ(at_report[i], hooked[i]) << params[i].name << " changed after it was reported";
                EXPECT_EQ(hooked[i], plain[i]) << params[i].name;
            }
            const auto a = state_tensors(plain_initial), b = state_tensors(hooked_initial);
            ASSERT_EQ(a.size(), b.size());
            for (std::size_t k = 0; k < a.size(); ++k) EXPECT_EQ(*a[k], *b[k]) << "d_initial " << k;
        }
}

TEST(LanguageModel, BadInputNamesTheProblem) {
    Rng rng(8);
    const LanguageModel<double> lm(small(MixerKind::GRU), rng);
    seqnn::testing::expect_shape_error([&] { lm.forward(TokenBatch({1, 2, 11, 3}, 2, 2)); },
                                       {"Embedding", "id 11", "vocabulary of 11"});
    seqnn::testing::expect_shape_error([&] { TokenBatch({1, 2, 3}, 2, 2); }, {"TokenBatch", "3 ids", "B=2", "T=2"});
    State<double> s = lm.initial_state(2);
    s.children[0].children.pop_back();  // the second block's state
    seqnn::testing::expect_shape_error([&] { lm.forward(TokenBatch({1, 2, 3, 4}, 2, 2), &s); },
                                       {"Sequential.forward", "1 child states", "expected 2"});
    seqnn::testing::expect_shape_error(
        [&] {
            Context<double> ctx;
            lm.forward(TokenBatch({1, 2, 3, 4}, 2, 2), nullptr, &ctx);
            const_cast<LanguageModel<double>&>(lm).backward(Sequence<double>(3, 2, 11), ctx);
        },
        {"LanguageModel(GRU).backward", "B=3", "B=2"});
}

// Every mixer kind learns to repeat the previous token (y_t = x_{t-1}), which needs
// memory of one step: chance is log(8) = 2.08 nats.
TEST(LanguageModel, EveryMixerKindLearnsToRecallThePreviousToken) {
    for (MixerKind kind : kAllKinds) {
        Rng rng(9);
        LanguageModel<float> lm({.vocab_size = 8, .dim = 16, .depth = 1, .mixer = {.kind = kind}, .ff_mult = 2.0}, rng);
        // (the Transformer kind: 2 heads of 8 with rotary positions)
        AdamW<float> opt(lm.parameters(), {.lr = 1e-2, .weight_decay = 0.0});
        Rng data(10);
        float loss = 0;
        for (int step = 0; step < 90; ++step) {
            const TokenBatch x = random_tokens(16, 12, 8, data);
            std::vector<int> y(x.ids.size());
            for (Index b = 0; b < 16; ++b)
                for (Index t = 0; t < 12; ++t)
                    y[static_cast<std::size_t>(b * 12 + t)] = t == 0 ? kIgnoreIndex : x.at(b, t - 1);
            Context<float> ctx;
            const Sequence<float> logits = lm.forward(x, nullptr, &ctx);
            Matrix<float> dlogits;
            loss = cross_entropy_loss<float>(logits.data, y, dlogits);
            opt.zero_grad();
            lm.backward(Sequence<float>(dlogits, 16, 12), ctx);
            clip_grad_norm(opt.parameters(), 1.0f);
            opt.step();
        }
        std::printf("  %-8s final loss %.4f\n", to_string(kind).c_str(), loss);
        EXPECT_LT(loss, 0.3f) << to_string(kind);
    }
}

// The state is a tree whose leaves each layer owns: a chunked forward and a step write the
// KV caches in place, where they are, with no copy between the model, the stack and the
// block (the caches keep their addresses).
TEST(LanguageModel, ChunkedForwardAndStepWriteTheKVCacheInPlace) {
    Rng rng(9);
    LanguageModelOptions o = small(MixerKind::Transformer);
    o.mixer.max_cache_length = 16;
    const LanguageModel<double> lm(o, rng);
    State<double> state = lm.initial_state(2);
    std::vector<const double*> caches;
    for (const Matrix<double>* t : state_tensors(state)) caches.push_back(t->data());
    ASSERT_EQ(caches.size(), 4u);  // K and V of each of the two blocks

    const TokenBatch tokens = random_tokens(2, 6, 11, rng);
    lm.forward(tokens.slice(0, 3), &state);
    lm.forward(tokens.slice(3, 3), &state);
    Matrix<double> logits;
    lm.step(std::vector<int>{1, 2}, state, logits);
    const auto after = state_tensors(state);
    ASSERT_EQ(after.size(), caches.size());
    for (std::size_t k = 0; k < caches.size(); ++k) EXPECT_EQ(after[k]->data(), caches[k]) << "cache " << k << " moved";
    EXPECT_EQ(state.position, 7);
    EXPECT_EQ(state.children[0].children[1].position, 7);
}
