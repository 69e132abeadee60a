// serial_vs_parallel: what "RNNs are sequential, Transformers are quadratic, minGRU is
// neither" costs on this machine.
//
//   serial_vs_parallel [--batch B] [--dim D] [--max-t T] [--threads N] [--budget S]
//
// For T = 64, 256, 1024, 4096 (up to --max-t) it times, at one shape (B, D):
//   GRU, LSTM          the sequential cells: T dependent steps of a (B, D) x (D, G*D) product;
//   minGRU, minLSTM    one (B*T, D) x (D, G*D) GEMM plus the linear recurrence, with the
//                      scan sequential ("seq") and parallel ("par");
//   Transformer        one pre-norm causal block, 8 heads, MLP 4D (attention is T^2);
// forward and one training step (forward + backward), and prints them beside the
// operation counts of the complexity formulas: T*D^2 for the recurrent layers,
// T*D^2 + T^2*D for attention. On the way it checks that the sequential and the
// parallel scan gave the same outputs.
#include <seqnn/seqnn.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>  // isatty: progress only on a terminal

namespace {

using namespace seqnn;
using Clock = std::chrono::steady_clock;

struct Args {
    Index batch = 16;
    Index dim = 256;
    Index max_t = 4096;
    int threads = 0;       // 0: OpenMP's default
    double budget = 0.25;  // seconds of repetitions per measurement (at least one run)
};

void usage(std::FILE* out) {
    std::fprintf(out,
                 "usage: serial_vs_parallel [--batch B] [--dim D] [--max-t T] [--threads N] [--budget S]\n"
                 "  --batch B    sequences per batch (default 16)\n"
                 "  --dim D      features and hidden size (default 256; a multiple of 8 for the Transformer)\n"
                 "  --max-t T    longest sequence: T runs over 64, 256, 1024, ... up to T (default 4096)\n"
                 "  --threads N  threads for seqnn (default: OpenMP's default)\n"
                 "  --budget S   seconds of repeated runs per measurement; the fastest counts (default 0.25)\n");
}

[[noreturn]] void bad_argument(const std::string& message) {
    std::fprintf(stderr, "serial_vs_parallel: %s (try --help)\n", message.c_str());
    std::exit(2);
}

// The integer or number after flag argv[i]; exits with a message naming the flag otherwise.
double number_after(int argc, char** argv, int& i, double min_value) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) bad_argument(flag + " needs a value");
    char* end = nullptr;
    const double v = std::strtod(argv[++i], &end);
    if (end == argv[i] || *end != '\0' || !(v >= min_value))
        bad_argument(flag + " must be a number >= " + std::to_string(min_value) + ", got '" + argv[i] + "'");
    return v;
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "-h" || flag == "--help") {
            usage(stdout);
            std::exit(0);
        } else if (flag == "--batch") {
            a.batch = static_cast<Index>(number_after(argc, argv, i, 1));
        } else if (flag == "--dim") {
            a.dim = static_cast<Index>(number_after(argc, argv, i, 8));
        } else if (flag == "--max-t") {
            a.max_t = static_cast<Index>(number_after(argc, argv, i, 1));
        } else if (flag == "--threads") {
            a.threads = static_cast<int>(number_after(argc, argv, i, 1));
        } else if (flag == "--budget") {
            a.budget = number_after(argc, argv, i, 0);
        } else {
            bad_argument("unknown argument '" + flag + "'");
        }
    }
    if (a.dim % 8 != 0) bad_argument("--dim must be a multiple of 8 (the Transformer's 8 heads), got " + std::to_string(a.dim));
    return a;
}

// The fastest of repeated runs of fn, in milliseconds: at least one run, more while
// they fit in `budget` seconds.
double fastest_ms(const std::function<void()>& fn, double budget) {
    double best = 1e300, spent = 0;
    do {
        const auto t0 = Clock::now();
        fn();
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        best = std::min(best, s);
        spent += s;
    } while (spent + best <= budget);
    return 1e3 * best;
}

// One layer to time: its forward, and one training step (forward + backward).
struct Entry {
    std::string name;
    std::unique_ptr<Layer<float>> layer;
    double forward_ms = 0, train_ms = 0;
};

void time_layer(Entry& e, const Sequence<float>& x, const Sequence<float>& dy, double budget) {
    Context<float> ctx;  // reused across steps, as a training loop does
    e.forward_ms = fastest_ms([&] { e.layer->forward(x); }, budget);
    e.train_ms = fastest_ms(
        [&] {
            e.layer->forward(x, nullptr, &ctx);
            e.layer->backward(dy, ctx);
        },
        budget);
}

std::string fmt_ms(double ms) {
    char buf[32];
    if (ms >= 1000)
        std::snprintf(buf, sizeof buf, "%.2f s", ms / 1e3);
    else if (ms >= 10)
        std::snprintf(buf, sizeof buf, "%.0f ms", ms);
    else
        std::snprintf(buf, sizeof buf, "%.2f ms", ms);
    return buf;
}

std::string fmt_count(double n) {
    char buf[32];
    if (n >= 1e9)
        std::snprintf(buf, sizeof buf, "%.1fG", n / 1e9);
    else if (n >= 1e6)
        std::snprintf(buf, sizeof buf, "%.1fM", n / 1e6);
    else
        std::snprintf(buf, sizeof buf, "%.0fk", n / 1e3);
    return buf;
}

std::string fmt_ratio(double r) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1fx", r);
    return buf;
}

struct Row {
    Index T;
    std::vector<double> forward_ms, train_ms;  // in the order of the entries
};

void print_table(const char* title, const std::vector<std::string>& names, const std::vector<Row>& rows, Index D,
                 bool train) {
    std::printf("\n%s\n", title);
    std::printf("%6s %9s %11s", "T", "T*D^2", "T*D^2+T^2*D");
    for (const auto& n : names) std::printf(" %11s", n.c_str());
    std::printf(" %10s %10s\n", "GRU/minGRU", "seq/par");
    for (const Row& r : rows) {
        const double t = static_cast<double>(r.T), d = static_cast<double>(D);
        std::printf("%6ld %9s %11s", static_cast<long>(r.T), fmt_count(t * d * d).c_str(),
                    fmt_count(t * d * d + t * t * d).c_str());
        const auto& ms = train ? r.train_ms : r.forward_ms;
        for (double v : ms) std::printf(" %11s", fmt_ms(v).c_str());
        // Columns: 0 GRU, 1 LSTM, 2 minGRU seq, 3 minGRU par, 4 minLSTM seq, 5 minLSTM par, 6 Transformer.
        std::printf(" %10s %10s\n", fmt_ratio(ms[0] / ms[3]).c_str(), fmt_ratio(ms[2] / ms[3]).c_str());
    }
}

}  // namespace

int main(int argc, char** argv) {
    const Args args = parse(argc, argv);
    if (args.threads > 0) set_num_threads(args.threads);
    const Index B = args.batch, D = args.dim;
    std::printf("serial_vs_parallel: B=%ld, D=%ld, float32, %d thread(s)%s\n", static_cast<long>(B),
                static_cast<long>(D), num_threads(), openmp_enabled() ? "" : " (built without OpenMP)");

    Rng rng(1);
    std::vector<Entry> entries;
    auto add = [&](const std::string& name, std::unique_ptr<Layer<float>> layer) {
        entries.push_back(Entry{name, std::move(layer)});
    };
    add("GRU", std::make_unique<GRU<float>>(RecurrentOptions{.input_size = D, .hidden_size = D}, rng));
    add("LSTM", std::make_unique<LSTM<float>>(RecurrentOptions{.input_size = D, .hidden_size = D}, rng));
    for (const bool lstm : {false, true}) {
        for (const MinRNNMode mode : {MinRNNMode::Sequential, MinRNNMode::Parallel}) {
            const MinRNNOptions o{.input_size = D, .mode = mode};
            Rng same(2);  // the same weights in both modes, so their outputs must agree
            const std::string name = std::string(lstm ? "minLSTM" : "minGRU") +
                                     (mode == MinRNNMode::Sequential ? " seq" : " par");
            if (lstm)
                add(name, std::make_unique<MinLSTM<float>>(o, same));
            else
                add(name, std::make_unique<MinGRU<float>>(o, same));
        }
    }
    add("Transformer",
        std::make_unique<TransformerBlock<float>>(TransformerOptions{.d_model = D, .num_heads = 8}, rng));

    std::vector<std::string> names;
    for (const auto& e : entries) names.push_back(e.name);
    std::vector<Row> rows;
    double worst_mismatch = 0;
    const bool show_progress = isatty(STDERR_FILENO) != 0;
    const auto start = Clock::now();
    for (Index T = 64; T <= args.max_t; T *= 4) {
        Rng data_rng(static_cast<std::uint64_t>(T));
        Sequence<float> x(B, T, D), dy(B, T, D);
        std::uniform_real_distribution<float> dist(-1, 1);
        for (Index i = 0; i < x.data.size(); ++i) x.data.data()[i] = dist(data_rng);
        for (Index i = 0; i < dy.data.size(); ++i) dy.data.data()[i] = dist(data_rng);

        // Sequential and parallel scans: the same function, so the same outputs (to rounding).
        for (std::size_t k : {std::size_t(2), std::size_t(4)}) {
            const Matrix<float> serial = entries[k].layer->forward(x).data;
            const Matrix<float> parallel = entries[k + 1].layer->forward(x).data;
            const double diff = (serial - parallel).cwiseAbs().maxCoeff() / std::max(1.0f, serial.cwiseAbs().maxCoeff());
            worst_mismatch = std::max(worst_mismatch, diff);
            if (diff > 1e-4) {
                std::fprintf(stderr, "serial_vs_parallel: %s and %s differ by %.3g at T=%ld\n",
                             entries[k].name.c_str(), entries[k + 1].name.c_str(), diff, static_cast<long>(T));
                return 1;
            }
        }

        Row row{T, {}, {}};
        for (Entry& e : entries) {
            if (show_progress)
                    std::fprintf(stderr, "\r  T=%-6ld %-12s (%.0f s so far)   ", static_cast<long>(T), e.name.c_str(),
                             std::chrono::duration<double>(Clock::now() - start).count());
            time_layer(e, x, dy, args.budget);
            row.forward_ms.push_back(e.forward_ms);
            row.train_ms.push_back(e.train_ms);
        }
        rows.push_back(row);
    }
    if (show_progress) std::fprintf(stderr, "\r%60s\r", "");

    print_table("Forward (fastest run; T*D^2 and T*D^2+T^2*D are the formulas' operation counts per sequence)",
                names, rows, D, false);
    print_table("One training step: forward + backward", names, rows, D, true);
    std::printf(
        "\nGRU/minGRU: the sequential cell's time over minGRU's with the parallel scan. seq/par: minGRU with\n"
        "the sequential scan over the parallel one (1.0x on one thread; the scan is a small part of the\n"
        "layer, whose GEMM runs on every thread either way). Sequential and parallel scans agreed to %.1e.\n"
        "Total %.0f s.\n",
        worst_mismatch, std::chrono::duration<double>(Clock::now() - start).count());
    return 0;
}
