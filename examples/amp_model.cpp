// amp_model: a neural guitar-amp model, trained and run with one library. The model is
//   y = x + Linear(H -> 1)(GRU | LSTM(H)(Linear(1 -> H)(x)))
// (a skip connection around a small recurrent network, the usual amp-model structure).
// It trains with seqnn's general layers and optimizer on a pair of (dry, processed) WAV
// files, and runs with their real-time twins (seqnn::realtime) one sample or one block at a
// time, as an audio plug-in would.
//
//   amp_model                                   the whole demo in a temporary folder (under a minute)
//   amp_model --make-demo DIR                   DIR/dry.wav and DIR/wet.wav, a synthetic pair
//   amp_model --train --dry DIR/dry.wav --wet DIR/wet.wav --save amp.safetensors [--arch lstm --hidden 40]
//   amp_model --run --in DIR/dry.wav --out out.wav --load amp.safetensors [--block 256 --target DIR/wet.wav]
//
// The synthetic pair: sweeps, plucked notes and chords at 48 kHz, and the same through a
// tone filter and an asymmetric tanh soft clipper (common/amp.hpp). Training uses truncated
// backpropagation through time on random segments, each after a warm-up that only sets the
// state, with AdamW and the error-to-signal ratio (ESR) as the loss; the last 20% of the
// files is held out and scored. --run checks that per-sample and per-block processing give
// the same output, and prints the real-time factor (processing time / audio duration) and
// the latency of every process_sample call.
//
// WAV files are read and written with libsndfile (Debian: libsndfile1-dev).
#include "common/amp.hpp"
#include "common/cli.hpp"

#include <sndfile.h>

#include <cstdlib>
#include <filesystem>

namespace {

using seqnn::Index;
namespace amp = examples::amp;

struct Options {
    std::string make_demo, dry, wet, save, in, out, load, target, loss = "esr";
    bool train = false, run = false;
    amp::AmpConfig model;
    int hidden = 16;
    double seconds = 20, lr = 5e-3;
    long steps = 1000;
    int batch = 16, segment = 1024, warmup = 256, eval_every = 200, block = 256, seed = 1, threads = 1;
};

Options parse(int argc, char** argv) {
    Options o;
    examples::Flags flags("amp_model", "trains a recurrent amp model on a WAV pair and runs it in real time");
    flags.add("--make-demo", o.make_demo, "write a synthetic pair DIR/dry.wav and DIR/wet.wav", "DIR");
    flags.add("--seconds", o.seconds, "--make-demo: length of the pair in seconds");
    flags.add_switch("--train", o.train, "train a model on --dry and --wet, save it to --save");
    flags.add("--dry", o.dry, "--train: the input WAV (mono)", "PATH");
    flags.add("--wet", o.wet, "--train: the processed WAV the model learns to produce", "PATH");
    flags.add("--save", o.save, "--train: where to write the model (safetensors)", "PATH");
    flags.add("--arch", o.model.arch, "gru | lstm", "NAME");
    flags.add("--hidden", o.hidden, "recurrent width H");
    flags.add("--steps", o.steps, "training steps");
    flags.add("--batch", o.batch, "segments per step");
    flags.add("--segment", o.segment, "samples per segment that the loss sees (truncated BPTT length)");
    flags.add("--warmup", o.warmup, "samples before each segment that only set the state");
    flags.add("--lr", o.lr, "peak learning rate of AdamW (warmup, then cosine to lr/10)");
    flags.add("--loss", o.loss, "esr (error-to-signal ratio) | mse", "NAME");
    flags.add("--eval-every", o.eval_every, "steps between held-out ESR reports");
    flags.add_switch("--run", o.run, "process --in with the model in --load into --out, timed");
    flags.add("--in", o.in, "--run: the input WAV (mono)", "PATH");
    flags.add("--out", o.out, "--run: where to write the processed WAV", "PATH");
    flags.add("--load", o.load, "--run: a model saved by --train", "PATH");
    flags.add("--target", o.target, "--run: score the output against this WAV (ESR)", "PATH");
    flags.add("--block", o.block, "--run: samples per process_block call");
    flags.add("--seed", o.seed, "seed of the weights, the segments and the demo signal");
    flags.add("--threads", o.threads, "training threads, 0 for OpenMP's choice");
    flags.parse(argc, argv);
    o.model.hidden = o.hidden;
    if ((o.train ? 1 : 0) + (o.run ? 1 : 0) + (o.make_demo.empty() ? 0 : 1) > 1)
        flags.fail("--train", "--make-demo, --train and --run are separate commands: give one of them");
    if (o.model.arch != "gru" && o.model.arch != "lstm") flags.fail("--arch", "expected gru or lstm, got '" + o.model.arch + "'");
    if (o.hidden < 1) flags.fail("--hidden", "must be at least 1");
    if (o.seconds < 1 || o.seconds > 3600) flags.fail("--seconds", "must be between 1 and 3600");
    if (o.steps < 0) flags.fail("--steps", "must be >= 0");
    if (o.batch < 1) flags.fail("--batch", "must be at least 1");
    if (o.segment < 1) flags.fail("--segment", "must be at least 1");
    if (o.warmup < 0) flags.fail("--warmup", "must be >= 0");
    if (o.lr <= 0) flags.fail("--lr", "must be positive");
    if (o.loss != "esr" && o.loss != "mse") flags.fail("--loss", "expected esr or mse, got '" + o.loss + "'");
    if (o.eval_every < 1) flags.fail("--eval-every", "must be at least 1");
    if (o.block < 1) flags.fail("--block", "must be at least 1");
    if (o.threads < 0) flags.fail("--threads", "must be >= 0");
    const std::pair<const char*, const std::string*> inputs[] = {
        {"--dry", &o.dry}, {"--wet", &o.wet}, {"--in", &o.in}, {"--load", &o.load}, {"--target", &o.target}};
    for (const auto& [flag, path] : inputs)
        if (!path->empty() && !std::filesystem::exists(*path)) flags.fail(flag, "no such file '" + *path + "'");
    const auto only = [&](const std::string& flag, bool mode, const std::string& command) {
        if (flags.given(flag) && !mode) flags.fail(flag, "only with " + command);
    };
    for (const char* flag : {"--dry", "--wet", "--save"}) only(flag, o.train, "--train");
    for (const char* flag : {"--in", "--out", "--load", "--target"}) only(flag, o.run, "--run");
    only("--seconds", !o.train && !o.run, "--make-demo and the demo");
    const auto need = [&](const std::string& value, const std::string& flag, const std::string& command) {
        if (value.empty()) flags.fail(flag, command + " needs " + flag);
    };
    if (o.train) {
        need(o.dry, "--dry", "--train");
        need(o.wet, "--wet", "--train");
        need(o.save, "--save", "--train");
    }
    if (o.run) {
        need(o.in, "--in", "--run");
        need(o.out, "--out", "--run");
        need(o.load, "--load", "--run");
    }
    return o;
}

// ---------------------------------------------------------------------------
// WAV files through libsndfile

struct Audio {
    std::vector<float> samples;  // mono
    int rate = 0;
};

// A sound file's samples (any format libsndfile reads), mixed down to mono; exits 2 naming
// `flag` if it cannot be read.
Audio read_audio(const std::string& flag, const std::string& path) {
    SF_INFO info{};
    SNDFILE* file = sf_open(path.c_str(), SFM_READ, &info);
    if (!file) examples::usage_error("amp_model", flag + ": cannot read '" + path + "': " + sf_strerror(nullptr));
    std::vector<float> interleaved(static_cast<std::size_t>(info.frames * info.channels));
    const sf_count_t frames = sf_readf_float(file, interleaved.data(), info.frames);
    sf_close(file);
    if (frames <= 0) examples::usage_error("amp_model", flag + ": '" + path + "' holds no samples");
    Audio audio;
    audio.rate = info.samplerate;
    audio.samples.resize(static_cast<std::size_t>(frames));
    for (std::size_t i = 0; i < audio.samples.size(); ++i) {
        float sum = 0;
        for (int c = 0; c < info.channels; ++c) sum += interleaved[i * static_cast<std::size_t>(info.channels) + static_cast<std::size_t>(c)];
        audio.samples[i] = sum / static_cast<float>(info.channels);
    }
    if (info.channels > 1) std::printf("%s: %d channels, mixed down to mono\n", path.c_str(), info.channels);
    return audio;
}

// Writes a mono 32-bit float WAV (no clipping, no quantisation); exits 2 naming `flag` if it cannot.
void write_audio(const std::string& flag, const std::string& path, std::span<const float> samples, int rate) {
    SF_INFO info{};
    info.samplerate = rate;
    info.channels = 1;
    info.format = SF_FORMAT_WAV | SF_FORMAT_FLOAT;
    SNDFILE* file = sf_open(path.c_str(), SFM_WRITE, &info);
    if (!file) examples::usage_error("amp_model", flag + ": cannot write '" + path + "': " + sf_strerror(nullptr));
    const auto n = static_cast<sf_count_t>(samples.size());
    const sf_count_t written = sf_writef_float(file, samples.data(), n);
    sf_close(file);
    if (written != n) examples::usage_error("amp_model", flag + ": writing '" + path + "' stopped early");
}

double db(double ratio) { return 10 * std::log10(std::max(ratio, 1e-30)); }

// ---------------------------------------------------------------------------
// --make-demo

int make_demo(const Options& o) {
    std::filesystem::create_directories(o.make_demo);
    const int rate = 48000;
    const std::vector<float> dry = amp::dry_signal(o.seconds, rate, static_cast<std::uint64_t>(o.seed));
    const std::vector<float> wet = amp::distort(dry, rate);
    const std::string dry_path = o.make_demo + "/dry.wav", wet_path = o.make_demo + "/wet.wav";
    write_audio("--make-demo", dry_path, dry, rate);
    write_audio("--make-demo", wet_path, wet, rate);
    std::printf("wrote %s: %.1f s at %d Hz of sweeps, plucked notes and chords (mono, 32-bit float)\n", dry_path.c_str(),
                o.seconds, rate);
    std::printf("wrote %s: the same through a one-pole low-pass at 3 kHz and tanh(8 (x + 0.1)) soft clipping\n",
                wet_path.c_str());
    return 0;
}

// ---------------------------------------------------------------------------
// --train

int train(const Options& o) {
    if (o.threads > 0) seqnn::set_num_threads(o.threads);
    examples::keep_freed_memory();
    Audio dry = read_audio("--dry", o.dry), wet = read_audio("--wet", o.wet);
    if (dry.rate != wet.rate)
        examples::usage_error("amp_model", "--wet: '" + o.wet + "' is at " + std::to_string(wet.rate) + " Hz, '" + o.dry +
                                               "' at " + std::to_string(dry.rate) + " Hz");
    const std::size_t n = std::min(dry.samples.size(), wet.samples.size());
    if (dry.samples.size() != wet.samples.size())
        std::printf("the files differ in length (%zu and %zu samples): using the first %zu\n", dry.samples.size(),
                    wet.samples.size(), n);
    const std::size_t n_train = n * 8 / 10, span = static_cast<std::size_t>(o.warmup + o.segment);
    if (n_train < span + 1)
        examples::usage_error("amp_model", "--dry: " + std::to_string(n) + " samples: too short for --warmup " +
                                               std::to_string(o.warmup) + " + --segment " + std::to_string(o.segment) +
                                               " in its first 80%");
    std::printf("data: %s -> %s, %zu samples at %d Hz (%.2f s); train on the first %zu, hold out the last %zu\n",
                o.dry.c_str(), o.wet.c_str(), n, dry.rate, static_cast<double>(n) / dry.rate, n_train, n - n_train);

    amp::AmpConfig config = o.model;
    config.sample_rate = dry.rate;
    seqnn::Rng rng(static_cast<std::uint64_t>(o.seed));
    amp::AmpModel model(config, rng);
    seqnn::ParameterList<float> params = model.parameters();
    std::printf("model: %s, %ld parameters\n", model.describe().c_str(),
                static_cast<long>(seqnn::count_parameters(params)));
    std::printf("training: %ld steps of %d segments of %d samples after %d warm-up samples, AdamW lr %g, %s loss, %d thread(s)\n",
                o.steps, o.batch, o.segment, o.warmup, o.lr, o.loss.c_str(), seqnn::num_threads());

    // Held out: the last 20%, processed from a little before it so that the state has settled.
    const std::size_t lead = std::min<std::size_t>(n_train, static_cast<std::size_t>(dry.rate / 10));
    const std::span<const float> held_dry(dry.samples.data() + n_train - lead, n - n_train + lead);
    const std::span<const float> held_wet(wet.samples.data() + n_train, n - n_train);
    const auto held_out_esr = [&] {
        const std::vector<float> y = model.process(held_dry);
        return amp::esr(std::span<const float>(y).subspan(lead), held_wet);
    };
    const double pass_through = amp::esr(held_dry.subspan(lead), held_wet);

    seqnn::AdamW<float> optimizer(params, {.lr = o.lr, .weight_decay = 0.0});
    const seqnn::WarmupCosineSchedule schedule{.peak_lr = o.lr, .min_lr = o.lr / 10,
                                               .warmup_steps = std::min(20L, o.steps / 10),
                                               .total_steps = std::max(o.steps, 1L)};
    const Index B = o.batch, W = o.warmup, T = o.segment;
    seqnn::Sequence<float> warm(B, std::max<Index>(W, 1), 1), x(B, T, 1);
    seqnn::Matrix<float> target(B * T, 1), prediction, d_prediction;
    seqnn::Context<float> ctx;
    std::uniform_int_distribution<std::size_t> pick(0, n_train - span);
    examples::Progress progress(o.steps, "steps");
    const auto t0 = examples::Clock::now();
    double loss_sum = 0;
    for (long step = 1; step <= o.steps; ++step) {
        optimizer.set_lr(schedule(step - 1));
        for (Index b = 0; b < B; ++b) {
            const std::size_t start = pick(rng);
            for (Index t = 0; t < W; ++t) warm.data(b * W + t, 0) = dry.samples[start + static_cast<std::size_t>(t)];
            for (Index t = 0; t < T; ++t) {
                const std::size_t i = start + static_cast<std::size_t>(W + t);
                x.data(b * T + t, 0) = dry.samples[i];
                target(b * T + t, 0) = wet.samples[i];
            }
        }
        // Truncated BPTT: the warm-up runs without a context (no gradient) and hands its
        // final state to the segment, whose forward keeps what backward needs.
        seqnn::State<float> state;
        if (W > 0) model.body().forward(warm, &state);
        const seqnn::Sequence<float> correction = model.body().forward(x, &state, &ctx);  // (B*T, 1)
        prediction = x.data + correction.data;                                          // the skip: y = x + f(x)
        // ESR = MSE / mean(target^2): the MSE's gradient scaled by 1 / mean(target^2).
        const double energy = std::max<double>(target.squaredNorm() / static_cast<double>(target.size()), 1e-10);
        const float scale = o.loss == "esr" ? static_cast<float>(1 / energy) : 1.0f;
        const float loss = scale * seqnn::mse_loss<float>(prediction, target, d_prediction, scale);
        model.body().zero_grad();
        model.body().backward(seqnn::Sequence<float>(std::move(d_prediction), B, T), ctx);  // dL/dy = dL/df
        seqnn::clip_grad_norm(params, 1.0f);
        optimizer.step();
        loss_sum += loss;
        if (step % o.eval_every == 0 || step == o.steps) {
            const long count = step % o.eval_every ? step % o.eval_every : o.eval_every;
            const double esr = held_out_esr();
            progress.clear_line();
            std::printf("step %5ld  train %s %.4f  held-out ESR %.4f (%.1f dB)  %.1f s\n", step, o.loss.c_str(),
                        loss_sum / static_cast<double>(count), esr, db(esr), progress.elapsed());
            std::fflush(stdout);
            loss_sum = 0;
        }
        char note[32];
        std::snprintf(note, sizeof note, "%s %.4f", o.loss.c_str(), static_cast<double>(loss));
        progress.update(step, note);
    }
    progress.finish();
    const double seconds = examples::seconds_since(t0);
    const double esr = held_out_esr();
    std::printf("trained %ld steps in %.1f s (%.0f samples/s)\n", o.steps, seconds,
                static_cast<double>(o.steps * B * (W + T)) / std::max(seconds, 1e-9));
    std::printf("held-out ESR: %.4f (%.1f dB) on the last %.2f s; passing the dry signal through scores %.4f\n", esr,
                db(esr), static_cast<double>(n - n_train) / dry.rate, pass_through);
    seqnn::io::save_parameters(o.save, params, model.metadata());
    std::printf("saved %s\n", o.save.c_str());
    return 0;
}

// ---------------------------------------------------------------------------
// --run

// The model a file holds, rebuilt from its metadata; exits 2 naming --load if it holds none.
std::unique_ptr<amp::AmpModel> load_model(const std::string& path) {
    try {
        const seqnn::io::TensorMap tensors = seqnn::io::load_safetensors(path);
        seqnn::Rng rng(0);
        auto model = std::make_unique<amp::AmpModel>(amp::AmpModel::config_from(tensors.metadata, path), rng);
        seqnn::io::load_state_dict(tensors, model->parameters(), true, path);
        return model;
    } catch (const std::exception& e) {
        examples::usage_error("amp_model", std::string("--load: ") + e.what());
    }
}

struct Percentiles {
    double p50, p99, p999, max;
};
Percentiles percentiles(std::vector<double>& values) {
    return {amp::percentile(values, 50), amp::percentile(values, 99), amp::percentile(values, 99.9),
            amp::percentile(values, 100)};
}

int run_model(const Options& o) {
    seqnn::set_num_threads(1);  // the general forward below, for the comparison; the twins use no threads
    const std::unique_ptr<amp::AmpModel> model = load_model(o.load);
    const Audio in = read_audio("--in", o.in);
    const std::vector<float>& x = in.samples;
    const std::size_t n = x.size();
    const double duration = static_cast<double>(n) / in.rate;
    std::printf("model: %s: %s, %ld parameters, trained at %d Hz\n", o.load.c_str(), model->describe().c_str(),
                static_cast<long>(seqnn::count_parameters(model->parameters())), model->config().sample_rate);
    std::printf("input: %s: %zu samples at %d Hz (%.2f s)\n", o.in.c_str(), n, in.rate, duration);
    if (in.rate != model->config().sample_rate)
        std::printf("note: the model was trained at %d Hz; at %d Hz its filters sound different\n",
                    model->config().sample_rate, in.rate);

    // The reference: the general layers' forward over the whole file (one stream, in chunks).
    auto t0 = examples::Clock::now();
    const std::vector<float> reference = model->process(x);
    const double forward_seconds = examples::seconds_since(t0);
    std::printf("seqnn forward (general layers, chunks of 16384): %.3f s, real-time factor %.4f\n", forward_seconds,
                forward_seconds / duration);

    std::vector<float> per_sample(n), per_block(n);
    std::vector<double> latency(n), block_time;
    double sample_seconds = 0, block_seconds = 0;
    amp::with_realtime(*model, o.block, [&](auto& twin) {
        // Per sample, untimed calls: the real-time factor.
        twin.reset();
        t0 = examples::Clock::now();
        for (std::size_t i = 0; i < n; ++i) per_sample[i] = twin.process_sample(x[i]);
        sample_seconds = examples::seconds_since(t0);
        // Per sample again, each call timed: the latency distribution.
        twin.reset();
        for (std::size_t i = 0; i < n; ++i) {
            const auto start = examples::Clock::now();
            per_sample[i] = twin.process_sample(x[i]);
            latency[i] = std::chrono::duration<double, std::micro>(examples::Clock::now() - start).count();
        }
        // Per block, each block timed.
        twin.reset();
        block_time.reserve(n / static_cast<std::size_t>(o.block) + 1);
        t0 = examples::Clock::now();
        for (std::size_t begin = 0; begin < n; begin += static_cast<std::size_t>(o.block)) {
            const Index length = std::min<Index>(o.block, static_cast<Index>(n - begin));
            const auto start = examples::Clock::now();
            twin.process_block(x.data() + begin, length, per_block.data() + begin);
            block_time.push_back(std::chrono::duration<double, std::micro>(examples::Clock::now() - start).count());
        }
        block_seconds = examples::seconds_since(t0);
    });

    const Percentiles ls = percentiles(latency), bs = percentiles(block_time);
    std::printf("realtime per sample: %.3f s, real-time factor %.4f (%.0fx faster than real time)\n", sample_seconds,
                sample_seconds / duration, duration / sample_seconds);
    std::printf("  latency per sample (us): p50 %.3f  p99 %.3f  p99.9 %.3f  max %.1f  (steady_clock around each call)\n",
                ls.p50, ls.p99, ls.p999, ls.max);
    std::printf("realtime per block of %d: %.3f s, real-time factor %.4f (%.0fx faster than real time)\n", o.block,
                block_seconds, block_seconds / duration, duration / block_seconds);
    std::printf("  time per block (us): p50 %.2f  p99 %.2f  p99.9 %.2f  max %.1f  (the block lasts %.0f us at %d Hz)\n",
                bs.p50, bs.p99, bs.p999, bs.max, 1e6 * o.block / in.rate, in.rate);

    float block_vs_sample = 0, realtime_vs_forward = 0;
    for (std::size_t i = 0; i < n; ++i) {
        block_vs_sample = std::max(block_vs_sample, std::abs(per_block[i] - per_sample[i]));
        realtime_vs_forward = std::max(realtime_vs_forward, std::abs(per_sample[i] - reference[i]));
    }
    std::printf("max |per sample - per block| = %.2e, max |realtime - seqnn forward| = %.2e\n",
                static_cast<double>(block_vs_sample), static_cast<double>(realtime_vs_forward));
    if (!o.target.empty()) {
        const Audio target = read_audio("--target", o.target);
        const std::size_t m = std::min(n, target.samples.size());
        const double esr = amp::esr(std::span<const float>(per_block).first(m), std::span<const float>(target.samples).first(m));
        std::printf("ESR against %s: %.4f (%.1f dB) over %zu samples\n", o.target.c_str(), esr, db(esr), m);
    }
    write_audio("--out", o.out, per_block, in.rate);
    std::printf("wrote %s\n", o.out.c_str());
    if (block_vs_sample > 1e-4f || realtime_vs_forward > 1e-3f) {
        std::fprintf(stderr, "amp_model: the real-time twin disagrees with itself or with the general layers\n");
        return 1;
    }
    return 0;
}

// ---------------------------------------------------------------------------
// The demo: --make-demo, --train and --run in a temporary folder.

int demo(Options o) {
    std::string dir = (std::filesystem::temp_directory_path() / "amp_model.XXXXXX").string();
    if (!mkdtemp(dir.data())) examples::usage_error("amp_model", "cannot make a temporary folder in " + dir);
    std::printf("amp_model demo in %s (amp_model --help shows the commands one by one)\n\n", dir.c_str());
    o.make_demo = dir;
    std::printf("== amp_model --make-demo %s --seconds %g\n", dir.c_str(), o.seconds);
    make_demo(o);
    o.dry = dir + "/dry.wav";
    o.wet = dir + "/wet.wav";
    o.save = dir + "/amp.safetensors";
    std::printf("\n== amp_model --train --dry %s --wet %s --save %s --arch %s --hidden %ld --steps %ld\n", o.dry.c_str(),
                o.wet.c_str(), o.save.c_str(), o.model.arch.c_str(), static_cast<long>(o.model.hidden), o.steps);
    std::fflush(stdout);
    if (const int status = train(o); status != 0) return status;
    o.in = o.dry;
    o.out = dir + "/out.wav";
    o.load = o.save;
    o.target = o.wet;
    std::printf("\n== amp_model --run --in %s --out %s --load %s --block %d --target %s\n", o.in.c_str(),
                o.out.c_str(), o.load.c_str(), o.block, o.target.c_str());
    std::fflush(stdout);
    return run_model(o);
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    if (!o.make_demo.empty()) return make_demo(o);
    if (o.train) return train(o);
    if (o.run) return run_model(o);
    return demo(o);
}
