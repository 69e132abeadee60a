// forecast: time-series forecasting with a small recurrent model,
//   Linear(1 -> hidden) -> minGRU / minLSTM / GRU / LSTM / RNN (hidden) -> Linear(hidden -> horizon),
// trained with MSE to predict the next --horizon values from the last --window values.
// It predicts changes from the last value (y[t+h] - y[t]), so that it starts out as the
// naive forecast and learns what to add to it.
//
//   forecast                                   a built-in synthetic series, minGRU
//   forecast --csv data.csv --column load --arch lstm --out predictions.csv
//
// The series is split in time: the first 80% trains, the last 20% tests. Values are
// standardised with the training part's mean and deviation. Each test forecast reads the
// --window values before it, like training, and is scored against the naive forecast
// "the next values equal the last one seen".
//
// Built with SEQNN_USE_MPI=ON, `mpirun -np N forecast ...` trains on N ranks, each on a
// shard of every batch (--batch is the global batch); rank 0 tests and prints.
#include "common/cli.hpp"
#include "common/data_parallel.hpp"

#include <seqnn/models/sequential.hpp>
#include <seqnn/layers/rowwise.hpp>
#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>
#include <seqnn/train/schedule.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <numbers>
#include <sstream>
#include <string>
#include <vector>

namespace {

using seqnn::Index;

struct Options {
    std::string csv, column, out, arch = "mingru";
    std::vector<double> csv_values;  // the --column of --csv
    examples::DataParallelFlags parallel;
    int hidden = 64, horizon = 1, window = 128, batch = 32, length = 5000, seed = 1, threads = 0;
    long steps = 600;
    double lr = 3e-3;
};

std::vector<double> read_csv_column(const examples::Flags& flags, const std::string& path, std::string& column);

Options parse(int argc, char** argv) {
    Options o;
    examples::Flags flags("forecast", "trains a recurrent forecaster and compares it with the naive last-value forecast");
    flags.add("--csv", o.csv, "a CSV file with a header row (default: a synthetic series)", "PATH");
    flags.add("--column", o.column, "the CSV column to forecast (default: the last one)", "NAME");
    flags.add("--arch", o.arch, "mingru | minlstm | gru | lstm | rnn", "NAME");
    flags.add("--hidden", o.hidden, "recurrent width");
    flags.add("--horizon", o.horizon, "values predicted at each step (t+1 .. t+horizon)");
    flags.add("--window", o.window, "steps per training window");
    flags.add("--batch", o.batch, "windows per step");
    flags.add("--steps", o.steps, "training steps");
    flags.add("--lr", o.lr, "peak learning rate of AdamW (warmup, then cosine to lr/10)");
    flags.add("--length", o.length, "length of the synthetic series");
    flags.add("--out", o.out, "write the test predictions here as CSV", "PATH");
    flags.add("--seed", o.seed, "seed of the weights, the batches and the synthetic series");
    flags.add("--threads", o.threads, "threads (default: OpenMP's default)");
    examples::add_data_parallel_flags(flags, o.parallel);
    flags.parse(argc, argv);
    if (o.arch != "mingru" && o.arch != "minlstm" && o.arch != "gru" && o.arch != "lstm" && o.arch != "rnn")
        flags.fail("--arch", "expected mingru, minlstm, gru, lstm or rnn, got '" + o.arch + "'");
    if (!o.column.empty() && o.csv.empty()) flags.fail("--column", "needs --csv");
    if (o.hidden < 1) flags.fail("--hidden", "must be at least 1");
    if (o.horizon < 1) flags.fail("--horizon", "must be at least 1");
    if (o.window < 2) flags.fail("--window", "must be at least 2");
    if (o.batch < 1) flags.fail("--batch", "must be at least 1");
    examples::check_data_parallel_flags(flags, o.parallel, o.batch);
    if (o.steps < 0) flags.fail("--steps", "must be >= 0");
    if (o.lr <= 0) flags.fail("--lr", "must be positive");
    if (o.length < 100) flags.fail("--length", "must be at least 100");
    if (o.threads < 0) flags.fail("--threads", "must be >= 0");
    if (!o.csv.empty()) o.csv_values = read_csv_column(flags, o.csv, o.column);
    return o;
}

// Hourly-looking data: a daily and a weekly cycle, a slow yearly-like wave, a trend and
// AR(1) noise.
std::vector<double> synthetic_series(int n, seqnn::Rng& rng) {
    std::normal_distribution<double> noise(0.0, 1.0);
    std::vector<double> y(static_cast<std::size_t>(n));
    double ar = 0;
    const double tau = 2 * std::numbers::pi;
    for (int t = 0; t < n; ++t) {
        ar = 0.8 * ar + 0.3 * noise(rng);
        y[static_cast<std::size_t>(t)] = 10 + 0.0005 * t + 3.0 * std::sin(tau * t / 24.0) +
                                         1.5 * std::sin(tau * t / 168.0 + 1.0) + 2.0 * std::sin(tau * t / 2000.0) + ar;
    }
    return y;
}

// One column of a CSV file with a header row (plain commas, no quoted fields).
std::vector<double> read_csv_column(const examples::Flags& flags, const std::string& path, std::string& column) {
    std::istringstream in(examples::read_file(flags, "--csv", path));
    std::string line;
    std::getline(in, line);
    const auto split = [](const std::string& s) {
        std::vector<std::string> cells;
        std::stringstream ss(s);
        std::string cell;
        while (std::getline(ss, cell, ',')) {
            while (!cell.empty() && (cell.back() == '\r' || cell.back() == ' ')) cell.pop_back();
            while (!cell.empty() && cell.front() == ' ') cell.erase(0, 1);
            cells.push_back(cell);
        }
        return cells;
    };
    const std::vector<std::string> header = split(line);
    if (header.empty()) flags.fail("--csv", "'" + path + "' has no header row");
    if (column.empty()) column = header.back();
    std::size_t index = header.size();
    for (std::size_t i = 0; i < header.size(); ++i)
        if (header[i] == column) index = i;
    if (index == header.size()) flags.fail("--column", "'" + path + "' has no column '" + column + "' (header: " + line + ")");
    std::vector<double> values;
    for (int line_no = 2; std::getline(in, line); ++line_no) {
        if (line.empty() || line == "\r") continue;
        const std::vector<std::string> cells = split(line);
        char* end = nullptr;
        const double v = index < cells.size() ? std::strtod(cells[index].c_str(), &end) : 0.0;
        if (index >= cells.size() || cells[index].empty() || *end != '\0' || !std::isfinite(v))
            flags.fail("--csv", path + ":" + std::to_string(line_no) + ": column '" + column + "' is not a number");
        values.push_back(v);
    }
    return values;
}

// x (B*T, 1) = series[s .. s+T), y (B*T, H) = series[s+t+1+h] - series[s+t], windows at `starts`.
void make_windows(const std::vector<float>& series, const std::vector<std::size_t>& starts, Index T, Index H,
                  seqnn::Sequence<float>& x, seqnn::Matrix<float>& y) {
    const auto B = static_cast<Index>(starts.size());
    x = seqnn::Sequence<float>(B, T, 1);
    y.resize(B * T, H);
    for (Index b = 0; b < B; ++b)
        for (Index t = 0; t < T; ++t) {
            const std::size_t i = starts[static_cast<std::size_t>(b)] + static_cast<std::size_t>(t);
            x.data(b * T + t, 0) = series[i];
            for (Index h = 0; h < H; ++h) y(b * T + t, h) = series[i + 1 + static_cast<std::size_t>(h)] - series[i];
        }
}

std::unique_ptr<seqnn::Layer<float>> make_recurrent(const std::string& arch, Index hidden, seqnn::Rng& rng) {
    if (arch == "mingru") return std::make_unique<seqnn::MinGRU<float>>(seqnn::MinRNNOptions{.input_size = hidden}, rng);
    if (arch == "minlstm") return std::make_unique<seqnn::MinLSTM<float>>(seqnn::MinRNNOptions{.input_size = hidden}, rng);
    if (arch == "gru") return std::make_unique<seqnn::GRU<float>>(seqnn::RecurrentOptions{.input_size = hidden, .hidden_size = hidden}, rng);
    if (arch == "lstm") return std::make_unique<seqnn::LSTM<float>>(seqnn::RecurrentOptions{.input_size = hidden, .hidden_size = hidden}, rng);
    return std::make_unique<seqnn::RNN<float>>(seqnn::RNNOptions{.input_size = hidden, .hidden_size = hidden}, rng);
}

}  // namespace

int run(int argc, char** argv) {
    Options o = parse(argc, argv);
    if (o.threads > 0) seqnn::set_num_threads(o.threads);
    examples::keep_freed_memory();

    // --- the series, standardised with the training part's statistics
    seqnn::Rng rng(static_cast<std::uint64_t>(o.seed));
    std::vector<double> raw;
    if (o.csv.empty()) {
        raw = synthetic_series(o.length, rng);
        std::printf("series: synthetic, %d hourly points (daily and weekly cycles, a slow wave, a trend, AR(1) noise)\n",
                    o.length);
    } else {
        raw = std::move(o.csv_values);
        std::printf("series: %s, column '%s', %zu values\n", o.csv.c_str(), o.column.c_str(), raw.size());
    }
    const Index T = o.window, H = o.horizon;
    const std::size_t n = raw.size(), n_train = n * 8 / 10;
    if (n_train < static_cast<std::size_t>(T + H) + 1 || n - n_train < static_cast<std::size_t>(H) + 1)
        examples::usage_error("forecast", "the series has " + std::to_string(n) + " values: too few for --window " +
                                              std::to_string(T) + " and --horizon " + std::to_string(H));
    double mean = 0, var = 0;
    for (std::size_t i = 0; i < n_train; ++i) mean += raw[i];
    mean /= static_cast<double>(n_train);
    for (std::size_t i = 0; i < n_train; ++i) var += (raw[i] - mean) * (raw[i] - mean);
    const double scale = std::sqrt(var / static_cast<double>(n_train)) + 1e-12;
    std::vector<float> series(n);
    for (std::size_t i = 0; i < n; ++i) series[i] = static_cast<float>((raw[i] - mean) / scale);
    const std::vector<float> train(series.begin(), series.begin() + static_cast<long>(n_train));

    // --- the model: Linear(1 -> hidden) -> recurrent -> Linear(hidden -> horizon)
    seqnn::Sequential<float> model;
    model.add(seqnn::make_linear_layer<float>(1, o.hidden, true, rng));
    model.add(make_recurrent(o.arch, o.hidden, rng));
    model.add(seqnn::make_linear_layer<float>(o.hidden, H, true, rng));
    seqnn::ParameterList<float> params = model.parameters();
    std::printf("model: Linear(1 -> %d) -> %s(%d) -> Linear(%d -> %ld), %ld parameters; train %zu / test %zu points\n",
                o.hidden, model[1].kind().c_str(), o.hidden, o.hidden, static_cast<long>(H),
                static_cast<long>(seqnn::count_parameters(params)), n_train, n - n_train);
    // Every rank starts from rank 0's weights and trains on its shards of each batch.
    const auto ranks = examples::make_ranks<float>(params, {}, o.parallel);
    const bool overlap = o.parallel.overlap == "on";  // reduce during the last shard's backward
    if (const std::string text = examples::describe_ranks(*ranks, seqnn::num_threads(), overlap); !text.empty())
        std::printf("%s\n", text.c_str());
    std::fflush(stdout);

    // --- training on random windows of the training part
    seqnn::AdamW<float> optimizer(params, {.lr = o.lr, .weight_decay = 0.0});
    const seqnn::WarmupCosineSchedule schedule{.peak_lr = o.lr, .min_lr = o.lr / 10,
                                               .warmup_steps = std::min(50L, o.steps / 10),
                                               .total_steps = std::max(o.steps, 1L)};
    seqnn::Sequence<float> x;
    seqnn::Matrix<float> y, dy;
    seqnn::Context<float> ctx;
    examples::Progress progress(o.steps, "steps");
    if (ranks->rank() != 0) progress.silence();
    std::vector<double> shard_losses;
    const auto t0 = examples::Clock::now();
    double loss_sum = 0;
    for (long step = 1; step <= o.steps; ++step) {
        optimizer.set_lr(schedule(step - 1));
        std::uniform_int_distribution<std::size_t> pick(0, n_train - static_cast<std::size_t>(T + H));
        std::vector<std::size_t> starts(static_cast<std::size_t>(o.batch));
        for (auto& s : starts) s = pick(rng);
        shard_losses.clear();
        for (Index s = ranks->first_local_shard(); s < ranks->end_local_shard(); ++s) {
            const auto rows = ranks->shard_rows(o.batch, s);
            ranks->begin_shard(s);  // zeroes the gradients
            make_windows(train, std::vector<std::size_t>(starts.begin() + rows.begin, starts.begin() + rows.end), T, H, x, y);
            const seqnn::Sequence<float> prediction = model.forward(x, nullptr, &ctx);  // (b*T, H)
            const float shard_loss = seqnn::mse_loss<float>(prediction.data, y, dy);
            const double share = static_cast<double>(rows.size()) / static_cast<double>(o.batch);
            examples::backward_shard(*ranks, s, share, overlap, [&](const seqnn::GradientReadyHook& ready) {
                model.backward(seqnn::Sequence<float>(std::move(dy), x.batch, x.steps), ctx, nullptr, nullptr, ready);
            });
            shard_losses.push_back(share * shard_loss);
        }
        // Every rank: the whole batch's gradient (reduced after, or during, the last shard's backward).
        const auto loss = static_cast<float>(ranks->sum(shard_losses));
        seqnn::clip_grad_norm(params, 1.0f);
        optimizer.step();
        loss_sum += loss;
        if (step % 100 == 0 || step == o.steps) {
            progress.clear_line();
            std::printf("step %5ld  train mse %.4f (standardised)\n", step, loss_sum / (step % 100 ? step % 100 : 100));
            loss_sum = 0;
        }
        char note[32];
        std::snprintf(note, sizeof note, "mse %.4f", static_cast<double>(loss));
        progress.update(step, note);
    }
    progress.finish();
    const double seconds = examples::seconds_since(t0);
    std::printf("trained %ld steps in %.1f s\n", o.steps, seconds);
    if (const std::string text = examples::communication_summary(*ranks, seconds); !text.empty())
        std::printf("%s\n", text.c_str());
    if (ranks->rank() != 0) return 0;  // rank 0 tests, prints and writes --out

    // --- test: a forecast at every test point t from the window of T values ending at t
    double mse_model = 0, mse_naive = 0;
    long count = 0;
    std::ofstream out;
    if (!o.out.empty()) {
        out.open(o.out);
        if (!out) examples::usage_error("forecast", "--out: cannot write '" + o.out + "'");
        out << "t,horizon,actual,predicted,naive\n";
    }
    std::vector<std::size_t> ends;  // forecast origins t: the last value the model sees
    for (std::size_t t = n_train - 1; t + static_cast<std::size_t>(H) < n; ++t) ends.push_back(t);
    for (std::size_t first = 0; first < ends.size(); first += 256) {
        std::vector<std::size_t> starts;
        for (std::size_t k = first; k < std::min(first + 256, ends.size()); ++k) starts.push_back(ends[k] + 1 - static_cast<std::size_t>(T));
        make_windows(series, starts, T, H, x, y);
        const seqnn::Sequence<float> delta = model.forward(x);  // (B*T, H): the last step of each window is its forecast
        for (std::size_t b = 0; b < starts.size(); ++b) {
            const std::size_t t = ends[first + b];
            for (Index h = 0; h < H; ++h) {
                const double actual = raw[t + 1 + static_cast<std::size_t>(h)];
                const double predicted = raw[t] + scale * delta.data(static_cast<Index>(b) * T + T - 1, h);
                const double naive = raw[t];
                mse_model += (predicted - actual) * (predicted - actual);
                mse_naive += (naive - actual) * (naive - actual);
                ++count;
                if (out.is_open())
                    out << t + 1 + static_cast<std::size_t>(h) << ',' << h + 1 << ',' << actual << ',' << predicted << ','
                        << naive << '\n';
            }
        }
    }
    mse_model /= static_cast<double>(count);
    mse_naive /= static_cast<double>(count);
    std::printf("test mse: %s %.4f, naive last value %.4f (ratio %.3f; below 1 beats the baseline) over %ld forecasts\n",
                o.arch.c_str(), mse_model, mse_naive, mse_model / mse_naive, count);
    if (out.is_open()) std::printf("wrote %s\n", o.out.c_str());
    return 0;
}

int main(int argc, char** argv) {
    return examples::run_ranks("forecast", argc, argv, [&] { return run(argc, argv); });
}
