// gru_demo: trains a GRU to echo its input with a delay, then streams it step
// by step and checks that streaming gives what the whole-sequence forward gives.
//
//   gru_demo [--seconds S] [--delay D] [--threads N]
//
// The task: x_t is uniform noise in [-1, 1]; the target is y_t = x_{t-D}, so the
// network must remember the last D inputs. Predicting zero scores 1/3 (the
// variance of x); a GRU that has learnt the task gets close to zero.
#include <seqnn/seqnn.hpp>
#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Args {
    double seconds = 5.0;
    int delay = 4;
    int threads = 0;
};

void usage() {
    std::printf(
        "usage: gru_demo [--seconds S] [--delay D] [--threads N]\n"
        "  --seconds S  training time budget in seconds (default 5)\n"
        "  --delay D    steps the GRU must echo its input after (default 4)\n"
        "  --threads N  threads for seqnn (default: OpenMP's default)\n");
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&](const char* name) -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "gru_demo: %s needs a value\n", name);
                std::exit(2);
            }
            return argv[++i];
        };
        if (arg == "--help" || arg == "-h") {
            usage();
            std::exit(0);
        } else if (arg == "--seconds") {
            a.seconds = std::atof(value("--seconds"));
        } else if (arg == "--delay") {
            a.delay = std::atoi(value("--delay"));
        } else if (arg == "--threads") {
            a.threads = std::atoi(value("--threads"));
        } else {
            std::fprintf(stderr, "gru_demo: unknown argument '%s'\n", arg.c_str());
            usage();
            std::exit(2);
        }
    }
    if (a.seconds <= 0 || a.delay < 0 || a.delay > 50) {
        std::fprintf(stderr, "gru_demo: need --seconds > 0 and 0 <= --delay <= 50\n");
        std::exit(2);
    }
    return a;
}

// A batch of noise sequences and their delayed echo: x, y (B*T, 1).
void make_batch(seqnn::Index B, seqnn::Index T, int delay, seqnn::Rng& rng, seqnn::Sequence<float>& x,
                seqnn::Sequence<float>& y) {
    std::uniform_real_distribution<float> noise(-1.0f, 1.0f);
    x = seqnn::Sequence<float>(B, T, 1);
    y = seqnn::Sequence<float>(B, T, 1);
    for (seqnn::Index b = 0; b < B; ++b)
        for (seqnn::Index t = 0; t < T; ++t) {
            x.data(b * T + t, 0) = noise(rng);
            y.data(b * T + t, 0) = t >= delay ? x.data(b * T + t - delay, 0) : 0.0f;
        }
}

}  // namespace

int main(int argc, char** argv) {
    const Args args = parse(argc, argv);
    if (args.threads > 0) seqnn::set_num_threads(args.threads);

    seqnn::Rng rng(1234);
    seqnn::GRU<float> gru({.input_size = 1, .hidden_size = 32, .num_layers = 1}, rng);
    seqnn::Linear<float> head(32, 1, true, rng);

    seqnn::ParameterList<float> params = gru.parameters();
    head.collect_parameters("head.", params);
    seqnn::AdamW<float> optimizer(params, {.lr = 1e-2f, .weight_decay = 0.0f});

    std::printf("seqnn gru_demo: GRU(1 -> 32) + Linear(32 -> 1) learns y_t = x_{t-%d}\n", args.delay);
    std::printf("threads: %d (OpenMP %s), parameters: %ld, budget: %.1f s\n", seqnn::num_threads(),
                seqnn::openmp_enabled() ? "on" : "off", static_cast<long>(seqnn::count_parameters(params)),
                args.seconds);

    const seqnn::Index B = 32, T = 64;
    seqnn::Sequence<float> x, target;
    const auto t0 = Clock::now();
    int step = 0;
    float loss = 0;
    while (seconds_since(t0) < args.seconds) {
        make_batch(B, T, args.delay, rng, x, target);
        // forward in training mode: the context keeps what backward needs.
        seqnn::Context<float> ctx;
        const seqnn::Sequence<float> h = gru.forward(x, nullptr, &ctx);  // (B*T, 32)
        const seqnn::Matrix<float> prediction = head.forward(h.data);     // (B*T, 1)
        seqnn::Matrix<float> d_prediction;
        loss = seqnn::mse_loss<float>(prediction, target.data, d_prediction);

        optimizer.zero_grad();
        const seqnn::Matrix<float> dh = head.backward(h.data, d_prediction);
        gru.backward(seqnn::Sequence<float>(dh, B, T), ctx);
        seqnn::clip_grad_norm(params, 1.0f);
        optimizer.step();
        if (step % 100 == 0) std::printf("step %5d  %5.1f s  train mse %.5f\n", step, seconds_since(t0), loss);
        ++step;
    }
    const double train_seconds = seconds_since(t0);
    std::printf("trained %d steps in %.1f s (%.0f sequences/s); final train mse %.5f (predicting 0 scores 0.333)\n",
                step, train_seconds, step * B / train_seconds, loss);

    // Streaming: one stream, one step at a time, with caller-owned state and no allocation per step.
    const seqnn::Index stream_length = 2000;
    make_batch(1, stream_length, args.delay, rng, x, target);
    seqnn::State<float> state = gru.initial_state(1);
    seqnn::Matrix<float> x_t(1, 1), h_t(1, 32), y_t(1, 1), streamed(stream_length, 1);
    const auto s0 = Clock::now();
    for (seqnn::Index t = 0; t < stream_length; ++t) {
        x_t(0, 0) = x.data(t, 0);
        gru.step(x_t, state, h_t);
        head.forward(h_t, y_t);
        streamed(t, 0) = y_t(0, 0);
    }
    const double stream_seconds = seconds_since(s0);

    const seqnn::Matrix<float> whole = head.forward(gru.forward(x).data);
    const float max_diff = (whole - streamed).cwiseAbs().maxCoeff();
    const float stream_mse = (streamed - target.data).squaredNorm() / static_cast<float>(stream_length);
    std::printf("streamed %ld steps: %.2f us/step, mse %.5f, max |step - forward| = %.2e\n",
                static_cast<long>(stream_length), 1e6 * stream_seconds / stream_length, stream_mse, max_diff);
    if (max_diff > 1e-4f) {
        std::fprintf(stderr, "gru_demo: streaming disagrees with forward\n");
        return 1;
    }
    return 0;
}
