// char_lm: character-level language modelling, the minGRU paper's Shakespeare task,
// with any of seqnn's sequence mixers. Modelled on nanoGPT's train.py: read a text,
// split it 90/10, train on random windows, evaluate now and then, keep the best.
//
//   char_lm --data input.txt                        quick preset, minGRU
//   char_lm --data input.txt --preset paper --arch transformer
//   char_lm --data input.txt --save lm.safetensors  then: char_lm --load lm.safetensors --steps 0 --generate 500
//
// Long runs: --checkpoint PATH writes the whole training state at every evaluation
// (weights, AdamW's moments, the random streams, the best loss so far), and the same
// command with --resume PATH takes exactly the steps the uninterrupted run would have
// taken. --time-limit stops a run (checkpointed) after a wall-clock budget; --patience
// stops it once the validation loss has not improved for that many evaluations.
//
// Without --data it trains on the licence texts in /usr/share/common-licenses (present
// on every Debian system), or on generated sentences if those are missing.
//
// Built with SEQNN_USE_MPI=ON, `mpirun -np N char_lm ...` trains on N ranks: each takes
// a shard of every batch (--batch is the global batch), the ranks sum their gradients and
// take the same step, and rank 0 prints, evaluates with the others and writes the files
// (docs/distributed.md). The reduction of each layer's gradients starts as soon as the
// last shard's backward has finished them (--overlap off: after backward).
#include "common/char_model.hpp"
#include "common/cli.hpp"
#include "common/data_parallel.hpp"

#include <seqnn/models/generate.hpp>
#include <seqnn/train/checkpoint.hpp>
#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>
#include <seqnn/train/schedule.hpp>

#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using examples::CharModelConfig;
using seqnn::Index;

struct Options {
    std::string data, preset = "quick", save, load, checkpoint, resume;
    std::string text;  // the contents of --data
    CharModelConfig model;
    examples::DataParallelFlags parallel;
    long steps = 0, eval_every = 0, generate = 300, warmup = -1, patience = 0;
    int batch = 0, eval_batches = 8, threads = 0, seed = 1337;
    double lr = 0, min_lr = -1, clip = 0, dropout = 0, weight_decay = 0.1, temperature = 0.8, time_limit = 0;
};

struct Preset {
    int layers, dim, ctx, batch, conv, heads;
    double expansion, lr, clip, dropout;
    long steps, eval_every;
};
// paper: Feng et al. 2024, Appendix (3 layers, dim 384, context 256, batch 64,
//        AdamW 1e-3, clip 0.25, dropout 0.2, expansion 2, 6 heads, 5000 steps).
// quick: small enough to finish within 10 minutes on 2 cores.
constexpr Preset kPaper{3, 384, 256, 64, 4, 6, 2.0, 1e-3, 0.25, 0.2, 5000, 25};
constexpr Preset kQuick{2, 128, 128, 32, 4, 4, 2.0, 3e-3, 0.25, 0.0, 600, 100};

// Calls f(flag, field of Options, field of Preset) for every flag a preset sets.
template <typename F>
void for_each_preset_flag(Options& o, const Preset& p, F f) {
    f("--layers", o.model.layers, p.layers);
    f("--dim", o.model.dim, p.dim);
    f("--ctx", o.model.ctx, p.ctx);
    f("--batch", o.batch, p.batch);
    f("--conv", o.model.conv, p.conv);
    f("--heads", o.model.heads, p.heads);
    f("--expansion", o.model.expansion, p.expansion);
    f("--lr", o.lr, p.lr);
    f("--clip", o.clip, p.clip);
    f("--dropout", o.dropout, p.dropout);
    f("--steps", o.steps, p.steps);
    f("--eval-every", o.eval_every, p.eval_every);
}

// The presets fill every flag the user did not give.
void apply_preset(const examples::Flags& flags, Options& o) {
    if (o.preset != "paper" && o.preset != "quick") flags.fail("--preset", "expected paper or quick, got '" + o.preset + "'");
    for_each_preset_flag(o, o.preset == "paper" ? kPaper : kQuick, [&](const char* flag, auto& field, auto value) {
        if (!flags.given(flag)) field = value;
    });
}

// --help shows both presets' values as the defaults.
void describe_presets(examples::Flags& flags) {
    Options unused;
    std::map<std::string, std::string> text;
    for (const Preset* p : {&kQuick, &kPaper})
        for_each_preset_flag(unused, *p, [&](const char* flag, auto&, auto value) {
            std::ostringstream s;
            s << value;
            text[flag] += (text[flag].empty() ? "quick " : ", paper ") + s.str();
        });
    for (const auto& [flag, t] : text) flags.set_default_text(flag, t);
}

Options parse(int argc, char** argv) {
    Options o;
    examples::Flags flags("char_lm", "trains a character-level language model on a text file");
    flags.add("--data", o.data, "text file to train on (default: the licence texts of /usr/share/common-licenses)", "PATH");
    flags.add("--preset", o.preset, "paper | quick: the values of every flag not given", "NAME");
    flags.add("--arch", o.model.arch, "mingru | minlstm | gru | lstm | rnn | transformer", "NAME");
    flags.add("--layers", o.model.layers, "blocks");
    flags.add("--dim", o.model.dim, "model width D");
    flags.add("--expansion", o.model.expansion, "min-RNN inner width D * expansion");
    flags.add("--heads", o.model.heads, "attention heads of the Transformer");
    flags.add("--conv", o.model.conv, "causal depthwise conv width in the recurrent blocks, 0 for none");
    flags.add("--ctx", o.model.ctx, "context: tokens per training window");
    flags.add("--batch", o.batch, "windows per step");
    flags.add("--steps", o.steps, "training steps");
    flags.add("--lr", o.lr, "peak learning rate of AdamW (warmup, then cosine to lr/10)");
    flags.add("--warmup", o.warmup, "warmup steps (default: steps/20, at most 100)");
    flags.add("--weight-decay", o.weight_decay, "AdamW weight decay");
    flags.add("--clip", o.clip, "gradient norm clip");
    flags.add("--dropout", o.dropout, "dropout");
    flags.add("--eval-every", o.eval_every, "steps between evaluations");
    flags.add("--eval-batches", o.eval_batches, "validation batches per evaluation (the same ones each time)");
    flags.add("--seed", o.seed, "seed of the initial weights, the batches and the sampling");
    flags.add("--threads", o.threads, "threads (default: OpenMP's default)");
    flags.add("--save", o.save, "write the best model (by validation loss) here, as safetensors", "PATH");
    flags.add("--load", o.load, "start from a model saved with --save (its configuration comes from the file)", "PATH");
    flags.add("--checkpoint", o.checkpoint, "write the whole training state here at every evaluation", "PATH");
    flags.add("--resume", o.resume, "continue the run that wrote this --checkpoint (give the same flags)", "PATH");
    flags.add("--time-limit", o.time_limit, "stop after this many seconds (and at least one step), 0 for none; with --checkpoint: resumable");
    flags.add("--patience", o.patience, "stop after this many evaluations without a new best, 0 for never");
    flags.add("--generate", o.generate, "bytes to generate at the end, 0 for none");
    flags.add("--temperature", o.temperature, "sampling temperature, 0 for greedy");
    examples::add_data_parallel_flags(flags, o.parallel);
    describe_presets(flags);
    flags.parse(argc, argv);
    apply_preset(flags, o);

    seqnn::MixerKind kind;
    if (!examples::parse_arch(o.model.arch, kind))
        flags.fail("--arch", "expected mingru, minlstm, gru, lstm, rnn or transformer, got '" + o.model.arch + "'");
    if (o.model.layers < 1) flags.fail("--layers", "must be at least 1");
    if (o.model.dim < 1) flags.fail("--dim", "must be at least 1");
    if (o.model.expansion <= 0) flags.fail("--expansion", "must be positive");
    if (o.model.conv < 0) flags.fail("--conv", "must be 0 (none) or a width");
    if (kind == seqnn::MixerKind::Transformer && (o.model.heads < 1 || o.model.dim % o.model.heads != 0))
        flags.fail("--heads", std::to_string(o.model.heads) + " heads do not divide --dim " + std::to_string(o.model.dim));
    if (o.model.ctx < 2) flags.fail("--ctx", "must be at least 2");
    if (o.batch < 1) flags.fail("--batch", "must be at least 1");
    examples::check_data_parallel_flags(flags, o.parallel, o.batch);
    if (o.steps < 0) flags.fail("--steps", "must be >= 0");
    if (o.lr <= 0) flags.fail("--lr", "must be positive");
    if (o.clip < 0) flags.fail("--clip", "must be >= 0 (0: no clipping)");
    if (o.dropout < 0 || o.dropout >= 1) flags.fail("--dropout", "must be in [0, 1)");
    if (o.eval_every < 1) flags.fail("--eval-every", "must be at least 1");
    if (o.eval_batches < 1) flags.fail("--eval-batches", "must be at least 1");
    if (o.generate < 0) flags.fail("--generate", "must be >= 0");
    if (o.temperature < 0) flags.fail("--temperature", "must be >= 0");
    if (o.threads < 0) flags.fail("--threads", "must be >= 0");
    if (!o.load.empty() && !std::filesystem::exists(o.load)) flags.fail("--load", "no such file '" + o.load + "'");
    if (!o.resume.empty() && !std::filesystem::exists(o.resume)) flags.fail("--resume", "no such file '" + o.resume + "'");
    if (!o.resume.empty() && !o.load.empty()) flags.fail("--resume", "takes its weights from the checkpoint; drop --load");
    if (o.time_limit < 0) flags.fail("--time-limit", "must be >= 0 (0: none)");
    if (o.patience < 0) flags.fail("--patience", "must be >= 0 (0: never stop early)");
    if (!o.data.empty()) o.text = examples::read_file(flags, "--data", o.data);
    if (o.warmup < 0) o.warmup = std::min(100L, o.steps / 20);
    if (o.warmup > o.steps) flags.fail("--warmup", "must not exceed --steps");
    if (o.min_lr < 0) o.min_lr = o.lr / 10;
    return o;
}

// The windows of `starts` whose indices are in `rows`.
std::vector<std::size_t> rows_of(const std::vector<std::size_t>& starts, Index begin, Index end) {
    return std::vector<std::size_t>(starts.begin() + begin, starts.begin() + end);
}

// Mean loss over fixed validation windows (forward only, no dropout). Each rank takes its
// shards of every batch; a batch's loss is the sum of its shards' losses times their share.
double evaluate(const seqnn::LanguageModel<float>& model, const std::vector<int>& tokens,
                const std::vector<std::vector<std::size_t>>& batches, Index T, const examples::Ranks<float>& ranks) {
    double total = 0;
    seqnn::TokenBatch x;
    std::vector<int> y;
    seqnn::Matrix<float> unused_grad;
    std::vector<double> parts;
    for (const auto& starts : batches) {
        const auto B = static_cast<Index>(starts.size());
        parts.clear();
        for (Index s = ranks.first_local_shard(); s < ranks.end_local_shard(); ++s) {
            const auto rows = ranks.shard_rows(B, s);
            examples::make_windows(tokens, rows_of(starts, rows.begin, rows.end), T, x, y);
            const seqnn::Sequence<float> logits = model.forward(x);  // (b*T, V)
            const double share = static_cast<double>(rows.size()) / static_cast<double>(B);
            parts.push_back(share * seqnn::cross_entropy_loss<float>(logits.data, y, unused_grad));
        }
        total += ranks.sum(parts);
    }
    return total / static_cast<double>(batches.size());
}

// Where a run stands: saved in its checkpoints, so that --resume continues it exactly.
struct RunProgress {
    long step = 0;  // the next training step
    double best_val = std::numeric_limits<double>::infinity();
    long best_step = 0;
};

std::string exact(double v) {  // round-trips through std::stod
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

// Everything that shapes the training trajectory: a checkpoint resumes only under the same.
std::map<std::string, std::string> run_settings(const Options& o, const CharModelConfig& c, std::size_t tokens) {
    std::map<std::string, std::string> m = examples::to_metadata(c);
    m["data_tokens"] = std::to_string(tokens);
    m["batch"] = std::to_string(o.batch);
    m["steps"] = std::to_string(o.steps);
    m["lr"] = exact(o.lr);
    m["min_lr"] = exact(o.min_lr);
    m["warmup"] = std::to_string(o.warmup);
    m["weight_decay"] = exact(o.weight_decay);
    m["clip"] = exact(o.clip);
    m["dropout"] = exact(o.dropout);
    m["eval_every"] = std::to_string(o.eval_every);
    m["eval_batches"] = std::to_string(o.eval_batches);
    m["seed"] = std::to_string(o.seed);
    return m;
}

std::map<std::string, std::string> checkpoint_metadata(std::map<std::string, std::string> settings, const RunProgress& run) {
    settings["progress.step"] = std::to_string(run.step);
    settings["progress.best_val"] = exact(run.best_val);
    settings["progress.best_step"] = std::to_string(run.best_step);
    return settings;
}

// Restores `state` from a checkpoint that this run's `settings` wrote; throws naming the
// first setting that differs.
RunProgress resume(const std::string& path, const std::map<std::string, std::string>& settings, long steps,
                   seqnn::TrainingState<float>& state, const examples::Ranks<float>& ranks) {
    const seqnn::io::TensorMap file = ranks.load_file(path);  // rank 0 reads it for all
    for (const auto& [key, value] : settings) {
        const auto it = file.metadata.find(key);
        if (it == file.metadata.end())
            throw std::runtime_error(path + " lacks '" + key + "' (was it written by char_lm --checkpoint?)");
        if (it->second != value)
            throw std::runtime_error(path + " was written with " + key + " = " + it->second + ", this run has " + value +
                                     "; resume with the flags and data of that run");
    }
    const auto number = [&](const std::string& key) {
        const auto it = file.metadata.find(key);
        if (it == file.metadata.end()) throw std::runtime_error(path + " lacks '" + key + "'");
        try {
            return std::stod(it->second);
        } catch (const std::logic_error&) {
            throw std::runtime_error(path + ": '" + key + "' is not a number: " + it->second);
        }
    };
    RunProgress run;
    run.step = static_cast<long>(number("progress.step"));
    run.best_val = number("progress.best_val");
    run.best_step = static_cast<long>(number("progress.best_step"));
    if (run.step < 0 || run.step > steps)
        throw std::runtime_error(path + ": progress.step " + std::to_string(run.step) + " is outside [0, --steps]");
    seqnn::restore_checkpoint(file, state, path);
    ranks.check_in_sync("after --resume");
    return run;
}

// Samples `n` bytes after a newline. Recurrent models step on for ever; the Transformer's
// cache holds ctx tokens, so when it is full the model re-reads the last ctx/2 tokens.
std::string sample(const seqnn::LanguageModel<float>& model, const CharModelConfig& c, long n, double temperature,
                   seqnn::Rng& rng) {
    const bool transformer = c.arch == "transformer";
    std::vector<int> tokens{std::max(c.vocab.ids['\n'], 0)};
    seqnn::State<float> state = model.initial_state(1);
    seqnn::Matrix<float> logits = model.forward(seqnn::TokenBatch(tokens, 1, 1), &state).data;  // (1, V)
    const seqnn::SamplingOptions options{.temperature = temperature};
    std::vector<double> scratch;
    for (long i = 0; i < n; ++i) {
        const int next = seqnn::sample_token(logits.row(0), options, rng, scratch);
        tokens.push_back(next);
        if (transformer && state.position >= c.ctx) {
            const Index keep = c.ctx / 2;
            std::vector<int> window(tokens.end() - keep, tokens.end());
            state = model.initial_state(1);
            const seqnn::Sequence<float> out = model.forward(seqnn::TokenBatch(window, 1, keep), &state);
            logits = out.at_step(keep - 1);
        } else {
            model.step(std::span<const int>(&next, 1), state, logits);
        }
    }
    return c.vocab.decode(std::vector<int>(tokens.begin() + 1, tokens.end()));
}

}  // namespace

int train(int argc, char** argv) {
    Options o = parse(argc, argv);
    if (o.threads > 0) seqnn::set_num_threads(o.threads);
    examples::keep_freed_memory();

    // --- data: bytes -> token ids, 90% train, 10% validation
    std::string text = std::move(o.text), source = "--data " + o.data;
    if (text.empty()) {
        text = examples::builtin_corpus(source);
        std::printf("no --data given: training on %s\n", source.c_str());
    }

    // --- model: new, or rebuilt from a saved file (its configuration wins over the flags)
    seqnn::Rng init_rng(static_cast<std::uint64_t>(o.seed));
    std::unique_ptr<seqnn::LanguageModel<float>> model;
    CharModelConfig& config = o.model;
    if (!o.load.empty()) {
        try {
            model = examples::load_char_model(o.load, config);
        } catch (const std::exception& e) {
            examples::usage_error("char_lm", std::string("--load: ") + e.what());
        }
        // Rebuild with dropout for training, then copy the loaded weights over.
        auto trainable = std::make_unique<seqnn::LanguageModel<float>>(
            examples::model_options(config, o.dropout, static_cast<std::uint64_t>(o.seed)), init_rng);
        seqnn::io::load_state_dict(seqnn::io::state_dict(model->parameters()), trainable->parameters());
        model = std::move(trainable);
        std::printf("loaded %s (its configuration overrides the model flags)\n", o.load.c_str());
    } else {
        config.vocab = examples::Vocabulary::of_text(text);
        model = std::make_unique<seqnn::LanguageModel<float>>(
            examples::model_options(config, o.dropout, static_cast<std::uint64_t>(o.seed)), init_rng);
    }
    const Index T = config.ctx, B = o.batch;
    const std::vector<int> tokens = config.vocab.encode(text);
    const std::size_t n_train = tokens.size() * 9 / 10;
    const std::vector<int> train(tokens.begin(), tokens.begin() + static_cast<long>(n_train));
    const std::vector<int> val(tokens.begin() + static_cast<long>(n_train), tokens.end());
    if (val.size() < static_cast<std::size_t>(T) + 2)
        examples::usage_error("char_lm", source + ": " + std::to_string(text.size()) +
                                             " bytes is too short for --ctx " + std::to_string(T) +
                                             " (the 10% validation split needs more than ctx + 1 bytes)");

    seqnn::ParameterList<float> params = model->parameters();
    std::printf("model: %s, %.2fM parameters, vocabulary %d bytes\n", examples::describe(config).c_str(),
                static_cast<double>(seqnn::count_parameters(params)) / 1e6, config.vocab.size());
    std::printf("data: %zu train / %zu validation tokens; context %ld, batch %ld, %ld steps, AdamW lr %g (warmup %ld, cosine to %g), clip %g, dropout %g\n",
                train.size(), val.size(), static_cast<long>(T), static_cast<long>(B), o.steps, o.lr, o.warmup,
                o.min_lr, o.clip, o.dropout);
    std::printf("threads: %d (OpenMP %s)\n", seqnn::num_threads(), seqnn::openmp_enabled() ? "on" : "off");
    // Every rank starts from rank 0's weights; each step, each rank takes its shards of the batch.
    const auto ranks = examples::make_ranks(params, model->dropouts(), o.parallel);
    const bool overlap = o.parallel.overlap == "on";  // reduce during the last shard's backward
    if (const std::string text = examples::describe_ranks(*ranks, seqnn::num_threads(), overlap); !text.empty())
        std::printf("%s\n", text.c_str());
    std::fflush(stdout);

    // --- training
    seqnn::Rng data_rng(static_cast<std::uint64_t>(o.seed) + 1);
    std::vector<std::vector<std::size_t>> val_batches;  // fixed, so evaluations compare like with like
    for (int i = 0; i < o.eval_batches; ++i) val_batches.push_back(examples::random_starts(val.size(), B, T, data_rng));

    seqnn::AdamW<float> optimizer(params, {.lr = o.lr, .beta1 = 0.9, .beta2 = 0.99, .weight_decay = o.weight_decay});
    const seqnn::WarmupCosineSchedule schedule{.peak_lr = o.lr, .min_lr = o.min_lr, .warmup_steps = o.warmup,
                                               .total_steps = std::max(o.steps, 1L)};
    seqnn::TrainingState<float> training_state{params, &optimizer, {{"data", &data_rng}}, model->dropouts()};
    const std::map<std::string, std::string> settings = run_settings(o, config, tokens.size());
    RunProgress run;
    if (!o.resume.empty()) {
        try {
            run = resume(o.resume, settings, o.steps, training_state, *ranks);
        } catch (const std::exception& e) {
            examples::usage_error("char_lm", std::string("--resume: ") + e.what());
        }
        std::printf("resumed %s at step %ld (best validation loss %.4f at step %ld)\n", o.resume.c_str(), run.step,
                    run.best_val, run.best_step);
    }
    const long first_step = run.step;
    double train_sum = 0;  // training losses since the last evaluation
    long train_count = 0;
    seqnn::TokenBatch x;
    std::vector<int> y;
    seqnn::Matrix<float> dlogits;
    seqnn::Context<float> ctx;
    std::vector<double> shard_losses;
    examples::Progress progress(o.steps, "steps");
    progress.resume_from(first_step);
    if (ranks->rank() != 0) progress.silence();
    const auto t0 = examples::Clock::now();
    long checkpointed_step = -1;
    const auto write_checkpoint = [&] {
        if (o.checkpoint.empty() || checkpointed_step == run.step) return;
        ranks->save_checkpoint(o.checkpoint, training_state, checkpoint_metadata(settings, run));
        checkpointed_step = run.step;
    };
    std::string stopped;  // why the run ended before --steps, if it did

    for (long& step = run.step;; ++step) {  // step is run.step, so checkpoints record it
        // A resumed run has already evaluated (or skipped) its first step.
        const bool resumed_here = !o.resume.empty() && step == first_step;
        if ((step % o.eval_every == 0 || step == o.steps) && !resumed_here) {
            const double val_loss = evaluate(*model, val, val_batches, T, *ranks);
            ranks->check_in_sync("at step " + std::to_string(step));
            progress.clear_line();
            if (train_count > 0)
                std::printf("step %5ld  train %.4f  val %.4f  lr %.2e  %s\n", step, train_sum / train_count, val_loss,
                            optimizer.lr(), examples::Progress::duration(examples::seconds_since(t0)).c_str());
            else
                std::printf("step %5ld  val %.4f\n", step, val_loss);
            std::fflush(stdout);
            train_sum = 0;
            train_count = 0;
            if (val_loss < run.best_val) {
                run.best_val = val_loss;
                run.best_step = step;
                if (!o.save.empty()) {
                    auto metadata = examples::to_metadata(config);
                    metadata["step"] = std::to_string(step);
                    metadata["val_loss"] = std::to_string(val_loss);
                    examples::on_root(*ranks, "--save " + o.save,
                                      [&] { seqnn::io::save_parameters(o.save, params, metadata); });
                }
            }
            write_checkpoint();
            // Evaluations come every eval_every steps, so this counts those since the best.
            if (o.patience > 0 && step < o.steps && (step - run.best_step) / o.eval_every >= o.patience) {
                stopped = "stopped early at step " + std::to_string(step) + ": no new best in " +
                          std::to_string(o.patience) + " evaluations (--patience)";
                break;
            }
        }
        if (step == o.steps) break;
        // Every rank stops at the same step: when any of them has run out of time.
        if (o.time_limit > 0 && step > first_step && ranks->any(examples::seconds_since(t0) >= o.time_limit)) {
            write_checkpoint();
            stopped = "stopped at step " + std::to_string(step) + " of " + std::to_string(o.steps) + ": --time-limit " +
                      examples::Progress::duration(o.time_limit) +
                      (o.checkpoint.empty() ? "" : " (continue with --resume " + o.checkpoint + ")");
            break;
        }

        optimizer.set_lr(schedule(step));
        // Every rank draws the whole batch from the same stream and trains on its shards.
        const std::vector<std::size_t> starts = examples::random_starts(train.size(), B, T, data_rng);
        shard_losses.clear();
        for (Index s = ranks->first_local_shard(); s < ranks->end_local_shard(); ++s) {
            const auto rows = ranks->shard_rows(B, s);
            ranks->begin_shard(s);  // zeroes the gradients
            examples::make_windows(train, rows_of(starts, rows.begin, rows.end), T, x, y);
            const seqnn::Sequence<float> logits = model->forward(x, nullptr, &ctx);  // (b*T, V)
            const float shard_loss = seqnn::cross_entropy_loss<float>(logits.data, y, dlogits);
            const double share = static_cast<double>(rows.size()) / static_cast<double>(B);
            examples::backward_shard(*ranks, s, share, overlap, [&](const seqnn::GradientReadyHook& ready) {
                model->backward(seqnn::Sequence<float>(std::move(dlogits), rows.size(), T), ctx, nullptr, nullptr,
                                ready);
            });
            shard_losses.push_back(share * shard_loss);
        }
        // Every rank: the whole batch's gradient (reduced after, or during, the last shard's backward).
        const auto loss = static_cast<float>(ranks->sum(shard_losses));
        if (!std::isfinite(loss)) {
            progress.clear_line();
            std::fprintf(stderr, "char_lm: the loss is %f at step %ld; try a smaller --lr\n", static_cast<double>(loss), step);
            return 1;
        }
        if (o.clip > 0) seqnn::clip_grad_norm(params, static_cast<float>(o.clip));
        optimizer.step();
        train_sum += loss;
        ++train_count;
        char note[64];
        std::snprintf(note, sizeof note, "loss %.3f  %.0f tok/s", static_cast<double>(loss),
                      static_cast<double>((step + 1 - first_step) * B * T) / std::max(progress.elapsed(), 1e-9));
        progress.update(step + 1, note);
    }
    progress.finish();
    const double seconds = examples::seconds_since(t0);
    const long trained = run.step - first_step;
    std::printf("trained %ld steps in %.1f s (%.0f tokens/s)\n", trained, seconds,
                static_cast<double>(trained * B * T) / std::max(seconds, 1e-9));
    if (!stopped.empty()) std::printf("%s\n", stopped.c_str());
    std::printf("best_val_loss: %.4f at step %ld\n", run.best_val, run.best_step);
    if (!o.save.empty()) std::printf("saved the step-%ld model to %s\n", run.best_step, o.save.c_str());
    if (!o.checkpoint.empty()) std::printf("training state at step %ld in %s\n", run.step, o.checkpoint.c_str());
    if (const std::string text = examples::communication_summary(*ranks, seconds); !text.empty())
        std::printf("%s\n", text.c_str());

    // --- a sample from the final model
    if (o.generate > 0 && ranks->rank() == 0) {
        seqnn::Rng sample_rng(static_cast<std::uint64_t>(o.seed) + 2);
        const auto g0 = examples::Clock::now();
        const std::string text_out = sample(*model, config, o.generate, o.temperature, sample_rng);
        std::printf("sample (%ld bytes, temperature %g, %.0f bytes/s):\n%s\n", o.generate, o.temperature,
                    static_cast<double>(o.generate) / std::max(examples::seconds_since(g0), 1e-9), text_out.c_str());
    }
    return 0;
}

int main(int argc, char** argv) {
    return examples::run_ranks("char_lm", argc, argv, [&] { return train(argc, argv); });
}
