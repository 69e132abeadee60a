// selective_copy: the selective copying task of the minGRU paper (from Mamba, Gu & Dao
// 2023). A sequence of --length tokens is mostly blanks, with 16 data tokens at random
// places; 16 marker tokens follow, and at each marker the model must output the next
// data token, in order. It has to pick out what matters and remember it, ignoring the
// blanks: a time-invariant model (a convolution, a plain linear recurrence) cannot.
//
//   selective_copy                                  minGRU, 2 layers, length 64 (minutes)
//   selective_copy --arch minlstm --layers 3
//   selective_copy --length 4096 --steps 100000     the paper's length (days on 2 cores)
//
// Vocabulary 16: 0 is the blank, 15 the marker, 1..14 data. The loss and the accuracy
// count only the 16 answers; the accuracy is measured on fresh sequences.
#include "common/char_model.hpp"
#include "common/cli.hpp"

#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>
#include <seqnn/train/schedule.hpp>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using seqnn::Index;

constexpr int kVocab = 16, kBlank = 0, kMarker = 15, kDataTokens = 16;

struct Options {
    std::string arch = "mingru";
    int layers = 2, dim = 64, heads = 4, conv = 0, length = 64, batch = 32, eval_sequences = 512, seed = 1, threads = 0;
    long steps = 3000, eval_every = 500;
    double expansion = 2.0, lr = 3e-3;
};

Options parse(int argc, char** argv) {
    Options o;
    examples::Flags flags("selective_copy", "trains a model on the selective copying task and reports its accuracy");
    flags.add("--arch", o.arch, "mingru | minlstm | gru | lstm | rnn | transformer", "NAME");
    flags.add("--layers", o.layers, "blocks (the paper: 1, 2 or 3)");
    flags.add("--dim", o.dim, "model width");
    flags.add("--expansion", o.expansion, "min-RNN inner width dim * expansion");
    flags.add("--heads", o.heads, "attention heads of the Transformer");
    flags.add("--conv", o.conv, "causal depthwise conv width in the recurrent blocks, 0 for none");
    flags.add("--length", o.length, "tokens before the markers (the paper: 4096)");
    flags.add("--batch", o.batch, "sequences per step");
    flags.add("--steps", o.steps, "training steps");
    flags.add("--lr", o.lr, "peak learning rate of AdamW (warmup, then cosine to lr/10)");
    flags.add("--eval-every", o.eval_every, "steps between accuracy reports");
    flags.add("--eval-sequences", o.eval_sequences, "fresh sequences per accuracy report");
    flags.add("--seed", o.seed, "seed of the weights and the data");
    flags.add("--threads", o.threads, "threads (default: OpenMP's default)");
    flags.parse(argc, argv);
    seqnn::MixerKind kind;
    if (!examples::parse_arch(o.arch, kind))
        flags.fail("--arch", "expected mingru, minlstm, gru, lstm, rnn or transformer, got '" + o.arch + "'");
    if (o.layers < 1) flags.fail("--layers", "must be at least 1");
    if (o.dim < 1) flags.fail("--dim", "must be at least 1");
    if (kind == seqnn::MixerKind::Transformer && (o.heads < 1 || o.dim % o.heads != 0))
        flags.fail("--heads", std::to_string(o.heads) + " heads do not divide --dim " + std::to_string(o.dim));
    if (o.length < kDataTokens) flags.fail("--length", "must be at least 16 (it holds the 16 data tokens)");
    if (o.batch < 1) flags.fail("--batch", "must be at least 1");
    if (o.steps < 0) flags.fail("--steps", "must be >= 0");
    if (o.lr <= 0) flags.fail("--lr", "must be positive");
    if (o.eval_every < 1) flags.fail("--eval-every", "must be at least 1");
    if (o.eval_sequences < 1) flags.fail("--eval-sequences", "must be at least 1");
    if (o.expansion <= 0) flags.fail("--expansion", "must be positive");
    if (o.conv < 0) flags.fail("--conv", "must be 0 (none) or a width");
    if (o.threads < 0) flags.fail("--threads", "must be >= 0");
    return o;
}

// B task sequences of length + 16 tokens, and targets: the data tokens at the marker
// positions, ignored (kIgnoreIndex) everywhere else.
void make_batch(Index B, int length, seqnn::Rng& rng, seqnn::TokenBatch& inputs, std::vector<int>& targets) {
    const Index T = length + kDataTokens;
    std::vector<int> x(static_cast<std::size_t>(B * T), kBlank);
    targets.assign(static_cast<std::size_t>(B * T), seqnn::kIgnoreIndex);
    std::uniform_int_distribution<int> data_token(1, kMarker - 1);
    std::vector<int> positions(static_cast<std::size_t>(length));
    for (Index b = 0; b < B; ++b) {
        int* seq = x.data() + b * T;
        for (int i = 0; i < length; ++i) positions[static_cast<std::size_t>(i)] = i;
        // 16 distinct positions, in order.
        for (int i = 0; i < kDataTokens; ++i) {
            std::uniform_int_distribution<int> pick(i, length - 1);
            std::swap(positions[static_cast<std::size_t>(i)], positions[static_cast<std::size_t>(pick(rng))]);
        }
        std::sort(positions.begin(), positions.begin() + kDataTokens);
        for (int i = 0; i < kDataTokens; ++i) {
            const int token = data_token(rng);
            seq[positions[static_cast<std::size_t>(i)]] = token;
            seq[length + i] = kMarker;
            targets[static_cast<std::size_t>(b * T + length + i)] = token;
        }
    }
    inputs = seqnn::TokenBatch(std::move(x), B, T);
}

struct Accuracy {
    double tokens = 0;     // answers right / answers
    double sequences = 0;  // sequences with all 16 right / sequences
};

// Greedy answers on `n` fresh sequences.
Accuracy evaluate(const seqnn::LanguageModel<float>& model, const Options& o, seqnn::Rng& rng) {
    long right = 0, all_right = 0, done = 0;
    seqnn::TokenBatch x;
    std::vector<int> y;
    while (done < o.eval_sequences) {
        const Index B = std::min<Index>(o.batch, o.eval_sequences - done);
        make_batch(B, o.length, rng, x, y);
        const seqnn::Sequence<float> logits = model.forward(x);  // (B*T, 16)
        for (Index b = 0; b < B; ++b) {
            int correct = 0;
            for (int i = 0; i < kDataTokens; ++i) {
                const Index row = b * x.steps + o.length + i;
                Index best;
                logits.data.row(row).maxCoeff(&best);
                correct += best == y[static_cast<std::size_t>(row)];
            }
            right += correct;
            all_right += correct == kDataTokens;
        }
        done += B;
    }
    return {static_cast<double>(right) / static_cast<double>(done * kDataTokens),
            static_cast<double>(all_right) / static_cast<double>(done)};
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    if (o.threads > 0) seqnn::set_num_threads(o.threads);
    examples::keep_freed_memory();

    examples::CharModelConfig config;
    config.arch = o.arch;
    config.layers = o.layers;
    config.dim = o.dim;
    config.expansion = o.expansion;
    config.heads = o.heads;
    config.conv = o.conv;
    config.ctx = o.length + kDataTokens;
    std::vector<unsigned char> symbols(kVocab);
    for (int i = 0; i < kVocab; ++i) symbols[static_cast<std::size_t>(i)] = static_cast<unsigned char>(i);
    config.vocab = examples::Vocabulary::from_bytes(symbols);

    seqnn::Rng rng(static_cast<std::uint64_t>(o.seed));
    seqnn::LanguageModel<float> model(examples::model_options(config, 0.0, 0), rng);
    seqnn::ParameterList<float> params = model.parameters();
    std::printf("selective copying: 16 data tokens among %d, then 16 markers; vocabulary %d\n", o.length, kVocab);
    std::printf("model: %s, %.3fM parameters; batch %d, %ld steps, AdamW lr %g; threads %d\n",
                examples::describe(config).c_str(), static_cast<double>(seqnn::count_parameters(params)) / 1e6,
                o.batch, o.steps, o.lr, seqnn::num_threads());
    std::printf("chance: %.3f token accuracy\n", 1.0 / (kMarker - 1));
    std::fflush(stdout);

    seqnn::AdamW<float> optimizer(params, {.lr = o.lr, .beta1 = 0.9, .beta2 = 0.99, .weight_decay = 0.0});
    const long warmup = std::min(100L, o.steps / 10);
    const seqnn::WarmupCosineSchedule schedule{.peak_lr = o.lr, .min_lr = o.lr / 10, .warmup_steps = warmup,
                                               .total_steps = std::max(o.steps, 1L)};
    seqnn::Rng data_rng(static_cast<std::uint64_t>(o.seed) + 1), eval_rng(static_cast<std::uint64_t>(o.seed) + 2);
    seqnn::TokenBatch x;
    std::vector<int> y;
    seqnn::Matrix<float> dlogits;
    seqnn::Context<float> ctx;
    double loss_sum = 0;
    long loss_count = 0;
    examples::Progress progress(o.steps, "steps");
    const auto t0 = examples::Clock::now();
    for (long step = 1; step <= o.steps; ++step) {
        optimizer.set_lr(schedule(step - 1));
        make_batch(o.batch, o.length, data_rng, x, y);
        const seqnn::Sequence<float> logits = model.forward(x, nullptr, &ctx);  // (B*T, 16)
        const float loss = seqnn::cross_entropy_loss<float>(logits.data, y, dlogits);
        optimizer.zero_grad();
        model.backward(seqnn::Sequence<float>(std::move(dlogits), x.batch, x.steps), ctx);
        seqnn::clip_grad_norm(params, 1.0f);
        optimizer.step();
        loss_sum += loss;
        ++loss_count;
        char note[48];
        std::snprintf(note, sizeof note, "loss %.3f", static_cast<double>(loss));
        progress.update(step, note);
        if (step % o.eval_every == 0 || step == o.steps) {
            const Accuracy a = evaluate(model, o, eval_rng);
            progress.clear_line();
            std::printf("step %5ld  loss %.4f  token accuracy %.3f  sequences all right %.3f  %s\n", step,
                        loss_sum / static_cast<double>(loss_count), a.tokens, a.sequences,
                        examples::Progress::duration(examples::seconds_since(t0)).c_str());
            std::fflush(stdout);
            loss_sum = 0;
            loss_count = 0;
        }
    }
    progress.finish();
    const Accuracy final_accuracy = evaluate(model, o, eval_rng);
    std::printf("trained %ld steps in %.1f s\n", o.steps, examples::seconds_since(t0));
    std::printf("accuracy: %.4f of tokens, %.4f of whole sequences, on %d fresh sequences (%s, %d layer%s, length %d)\n",
                final_accuracy.tokens, final_accuracy.sequences, o.eval_sequences, o.arch.c_str(), o.layers,
                o.layers == 1 ? "" : "s", o.length);
    return 0;
}
