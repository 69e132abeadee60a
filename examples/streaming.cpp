// streaming: real-time inference, one token at a time, as an embedded model would run
// (a synthesiser voice, a controller, a keyboard's next-key model). Loads a model saved
// by `char_lm --save` (its configuration is in the file's metadata), feeds it its own
// greedy predictions step by step, and reports the latency of each step and the heap
// allocations made while stepping, which must be zero for real-time use.
//
//   streaming --model lm.safetensors --steps 2000
//   streaming                                     a random minGRU model (no file needed)
//
// Allocations are counted by replacing the global operator new in this program, and by
// Eigen's runtime malloc check (EIGEN_RUNTIME_NO_MALLOC) for Eigen's own allocations.
#define EIGEN_RUNTIME_NO_MALLOC
#include <atomic>
#include <cstdlib>
namespace streaming_counters {
inline std::atomic<bool> counting{false};
inline std::atomic<long> allocations{0};
}  // namespace streaming_counters
// Eigen reports a heap allocation under the runtime check as a failed eigen_assert;
// count those while stepping. (This also turns Eigen's other checks on in this program:
// any other failure aborts, as in a debug build.)
#define eigen_assert(x)                                                                   \
    do {                                                                                  \
        if (!(x)) {                                                                       \
            if (streaming_counters::counting.load(std::memory_order_relaxed))             \
                streaming_counters::allocations.fetch_add(1, std::memory_order_relaxed);  \
            else                                                                          \
                std::abort();                                                             \
        }                                                                                 \
    } while (false)

#include "common/char_model.hpp"
#include "common/cli.hpp"

#include <seqnn/models/generate.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

namespace {
void* counted_alloc(std::size_t size) {
    if (streaming_counters::counting.load(std::memory_order_relaxed))
        streaming_counters::allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t size) { return counted_alloc(size); }
void* operator new[](std::size_t size) { return counted_alloc(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

using seqnn::Index;

struct Options {
    std::string model_path;
    examples::CharModelConfig random;  // the model made when no file is given
    long steps = 2000, warmup = 20;
    int threads = 1, seed = 1;
};

Options parse(int argc, char** argv) {
    Options o;
    o.random.layers = 2;
    o.random.dim = 128;
    o.random.ctx = 128;
    o.random.heads = 4;
    examples::Flags flags("streaming", "runs a language model one token at a time and reports per-step latency");
    flags.add("--model", o.model_path, "a model saved by char_lm --save (default: a random model)", "PATH");
    flags.add("--steps", o.steps, "timed steps");
    flags.add("--warmup", o.warmup, "untimed steps first");
    flags.add("--threads", o.threads, "threads (1 is usually fastest for one stream)");
    flags.add("--seed", o.seed, "seed of the random model");
    flags.add("--arch", o.random.arch, "random model: mingru | minlstm | gru | lstm | rnn | transformer", "NAME");
    flags.add("--layers", o.random.layers, "random model: blocks");
    flags.add("--dim", o.random.dim, "random model: width");
    flags.parse(argc, argv);
    seqnn::MixerKind kind;
    if (!examples::parse_arch(o.random.arch, kind))
        flags.fail("--arch", "expected mingru, minlstm, gru, lstm, rnn or transformer, got '" + o.random.arch + "'");
    if (o.random.layers < 1) flags.fail("--layers", "must be at least 1");
    if (o.random.dim < 1 || (kind == seqnn::MixerKind::Transformer && o.random.dim % o.random.heads != 0))
        flags.fail("--dim", "must be positive (and a multiple of 4 for the Transformer)");
    if (o.steps < 1) flags.fail("--steps", "must be at least 1");
    if (o.warmup < 0) flags.fail("--warmup", "must be >= 0");
    if (o.threads < 1) flags.fail("--threads", "must be at least 1");
    if (!o.model_path.empty() && !std::filesystem::exists(o.model_path))
        flags.fail("--model", "no such file '" + o.model_path + "'");
    return o;
}

double percentile(std::vector<double> sorted, double p) {
    const auto i = static_cast<std::size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
    return sorted[std::min(i, sorted.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    seqnn::set_num_threads(o.threads);

    // The Transformer's KV cache must hold every token of the stream.
    const Index cache = o.warmup + o.steps + 1;
    examples::CharModelConfig config;
    std::unique_ptr<seqnn::LanguageModel<float>> model;
    if (!o.model_path.empty()) {
        try {
            model = examples::load_char_model(o.model_path, config, cache);
        } catch (const std::exception& e) {
            examples::usage_error("streaming", std::string("--model: ") + e.what());
        }
        std::printf("model: %s (%s)\n", o.model_path.c_str(), examples::describe(config).c_str());
    } else {
        config = o.random;
        std::vector<unsigned char> bytes;
        for (int c = 32; c < 127; ++c) bytes.push_back(static_cast<unsigned char>(c));
        bytes.push_back('\n');
        config.vocab = examples::Vocabulary::from_bytes(bytes);
        seqnn::Rng rng(static_cast<std::uint64_t>(o.seed));
        model = std::make_unique<seqnn::LanguageModel<float>>(examples::model_options(config, 0.0, 0, cache), rng);
        std::printf("model: random weights, no --model given (%s)\n", examples::describe(config).c_str());
    }
    std::printf("%.2fM parameters, vocabulary %d; 1 stream, %d thread(s), %ld timed steps after %ld warm-up steps\n",
                static_cast<double>(seqnn::count_parameters(model->parameters())) / 1e6, config.vocab.size(), o.threads,
                o.steps, o.warmup);

    // Everything a step touches is made here, before the loop.
    seqnn::State<float> state = model->initial_state(1);
    seqnn::Matrix<float> logits(1, config.vocab.size());
    std::vector<double> latency_us(static_cast<std::size_t>(o.steps));
    std::vector<double> scratch;  // sample_token's (unused when greedy)
    std::string text(static_cast<std::size_t>(o.steps), ' ');
    const seqnn::SamplingOptions greedy{};
    seqnn::Rng rng(0);
    int token = std::max(config.vocab.ids['\n'], 0);

    for (long i = 0; i < o.warmup; ++i) {
        model->step(std::span<const int>(&token, 1), state, logits);
        token = seqnn::sample_token(logits.row(0), greedy, rng, scratch);
    }
    // The counter works: a std::vector and an Eigen matrix are two allocations.
    Eigen::internal::set_is_malloc_allowed(false);
    streaming_counters::counting = true;
    {
        std::vector<int> probe_vector(16);
        seqnn::Matrix<float> probe_matrix(4, 4);
        (void)probe_vector;
        (void)probe_matrix;
    }
    if (streaming_counters::allocations.exchange(0) != 2) {
        std::fprintf(stderr, "streaming: the allocation counter does not work in this build\n");
        return 1;
    }
    for (long i = 0; i < o.steps; ++i) {
        const auto t0 = examples::Clock::now();
        model->step(std::span<const int>(&token, 1), state, logits);  // (1) -> (1, V)
        token = seqnn::sample_token(logits.row(0), greedy, rng, scratch);
        latency_us[static_cast<std::size_t>(i)] = 1e6 * examples::seconds_since(t0);
        text[static_cast<std::size_t>(i)] = static_cast<char>(config.vocab.bytes[static_cast<std::size_t>(token)]);
    }
    streaming_counters::counting = false;
    Eigen::internal::set_is_malloc_allowed(true);
    const long allocations = streaming_counters::allocations.load();

    std::vector<double> sorted = latency_us;
    std::sort(sorted.begin(), sorted.end());
    double total = 0;
    for (double v : latency_us) total += v;
    std::printf("latency per step (us): p50 %.1f  p90 %.1f  p99 %.1f  max %.1f  mean %.1f  (%.0f steps/s)\n",
                percentile(sorted, 50), percentile(sorted, 90), percentile(sorted, 99), sorted.back(),
                total / static_cast<double>(o.steps), 1e6 * static_cast<double>(o.steps) / total);
    std::printf("greedy continuation (first 200 bytes): %s\n", text.substr(0, 200).c_str());
    if (allocations == 0) {
        std::printf("heap allocations while stepping: 0 in %ld steps (real-time safe)\n", o.steps);
        return 0;
    }
    std::printf("heap allocations while stepping: %ld in %ld steps (%.2f per step): NOT real-time safe\n", allocations,
                o.steps, static_cast<double>(allocations) / static_cast<double>(o.steps));
    return 1;
}
