// classify: which of two texts did a line come from? A byte-level sequence classifier,
//   Embedding(256 -> dim) -> bidirectional minGRU / minLSTM / GRU / LSTM / RNN (hidden)
//   -> mean over each line's own bytes -> Linear(-> 2),
// trained on batches of lines of different lengths: one padded batch with
// Sequence::lengths, so no line sees another's padding and the mean counts real bytes only.
//
//   classify                                   GPL-3 against Apache-2.0, bidirectional minGRU
//   classify --a A.txt --b B.txt --arch gru    any two texts
//
// The defaults read two licences that every Debian system has (/usr/share/common-licenses).
// Lines are split 80/20 into training and test (every fifth line tests); empty lines and
// lines longer than --max-length are left out, and counted. Each training batch holds
// as many lines of each text, so the two classes weigh the same; the test accuracy is the
// mean of the two per-class accuracies (balanced accuracy), printed with each.
#include "common/cli.hpp"

#include <seqnn/layers/gru.hpp>
#include <seqnn/layers/lstm.hpp>
#include <seqnn/layers/mingru.hpp>
#include <seqnn/layers/minlstm.hpp>
#include <seqnn/layers/rnn.hpp>
#include <seqnn/nn/embedding.hpp>
#include <seqnn/nn/linear.hpp>
#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>
#include <seqnn/train/schedule.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using seqnn::Index;
using Matrix = seqnn::Matrix<float>;
using Sequence = seqnn::Sequence<float>;

struct Options {
    std::string a = "/usr/share/common-licenses/GPL-3", b = "/usr/share/common-licenses/Apache-2.0";
    std::string arch = "mingru";
    std::string a_text, b_text;  // the two files' contents
    int dim = 32, hidden = 64, max_length = 100, batch = 32, seed = 1, threads = 0;
    long steps = 600, eval_every = 100;
    double lr = 3e-3;
};

Options parse(int argc, char** argv) {
    Options o;
    examples::Flags flags("classify", "trains a bidirectional byte-level classifier of which text a line came from");
    flags.add("--a", o.a, "the first text (class 0)", "PATH");
    flags.add("--b", o.b, "the second text (class 1)", "PATH");
    flags.add("--arch", o.arch, "mingru | minlstm | gru | lstm | rnn", "NAME");
    flags.add("--dim", o.dim, "byte embedding width");
    flags.add("--hidden", o.hidden, "recurrent width of each direction");
    flags.add("--max-length", o.max_length, "longest line used, in bytes (longer lines are left out)");
    flags.add("--batch", o.batch, "lines per step, half from each text");
    flags.add("--steps", o.steps, "training steps");
    flags.add("--eval-every", o.eval_every, "steps between test accuracies");
    flags.add("--lr", o.lr, "peak learning rate of AdamW (warmup, then cosine to lr/10)");
    flags.add("--seed", o.seed, "seed of the weights and the batches");
    flags.add("--threads", o.threads, "threads (default: OpenMP's default)");
    flags.parse(argc, argv);
    if (o.arch != "mingru" && o.arch != "minlstm" && o.arch != "gru" && o.arch != "lstm" && o.arch != "rnn")
        flags.fail("--arch", "expected mingru, minlstm, gru, lstm or rnn, got '" + o.arch + "'");
    if (o.dim < 1) flags.fail("--dim", "must be at least 1");
    if (o.hidden < 1) flags.fail("--hidden", "must be at least 1");
    if (o.max_length < 1) flags.fail("--max-length", "must be at least 1");
    if (o.batch < 2 || o.batch % 2 != 0) flags.fail("--batch", "must be an even number of at least 2");
    if (o.steps < 0) flags.fail("--steps", "must be >= 0");
    if (o.eval_every < 1) flags.fail("--eval-every", "must be at least 1");
    if (o.lr <= 0) flags.fail("--lr", "must be positive");
    if (o.threads < 0) flags.fail("--threads", "must be >= 0");
    o.a_text = examples::read_file(flags, "--a", o.a);
    o.b_text = examples::read_file(flags, "--b", o.b);
    return o;
}

// One text's lines, split into training and test lines (every fifth tests).
struct Lines {
    std::vector<std::string> train, test;
    long empty = 0, too_long = 0;
};

Lines split_lines(const std::string& text, int max_length) {
    Lines out;
    std::istringstream in(text);
    std::string line;
    long kept = 0;
    while (std::getline(in, line)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
            ++out.empty;
            continue;
        }
        if (static_cast<int>(line.size()) > max_length) {
            ++out.too_long;
            continue;
        }
        (kept++ % 5 == 4 ? out.test : out.train).push_back(line);
    }
    return out;
}

// The lines as one padded batch: ids (B*T) with T the longest line, zeros past each end.
struct Batch {
    std::vector<int> ids;
    std::vector<Index> lengths;
    Index steps = 0;
};

Batch make_batch(const std::vector<const std::string*>& lines) {
    Batch batch;
    for (const std::string* line : lines) batch.steps = std::max<Index>(batch.steps, static_cast<Index>(line->size()));
    batch.ids.assign(lines.size() * static_cast<std::size_t>(batch.steps), 0);
    for (std::size_t b = 0; b < lines.size(); ++b) {
        const std::string& line = *lines[b];
        for (std::size_t t = 0; t < line.size(); ++t)
            batch.ids[b * static_cast<std::size_t>(batch.steps) + t] = static_cast<unsigned char>(line[t]);
        batch.lengths.push_back(static_cast<Index>(line.size()));
    }
    return batch;
}

// The classifier: embedding, a bidirectional sequence layer, the mean over each line's real
// steps, a linear head.
class Classifier {
public:
    Classifier(const Options& o, seqnn::Rng& rng)
        : embedding_(256, o.dim, rng), layer_(make_layer(o, rng)), head_(layer_->output_size(), 2, true, rng) {}

    /// Logits (B, 2) of a batch; training mode keeps what backward needs.
    Matrix forward(const Batch& batch, bool training) {
        const Index B = static_cast<Index>(batch.lengths.size()), T = batch.steps;
        Sequence x(Matrix(B * T, embedding_.embedding_dim()), B, T);
        embedding_.forward(batch.ids, x.data);  // (B*T, dim)
        x.lengths = batch.lengths;
        const Sequence y = layer_->forward(x, nullptr, training ? &ctx_ : nullptr);  // (B*T, H'), zero past each end
        pooled_.resize(B, y.features());
        for (Index b = 0; b < B; ++b)  // the padding rows are zero: sum all T, divide by the length
            pooled_.row(b) = y.sequence(b).colwise().sum() / static_cast<float>(batch.lengths[static_cast<std::size_t>(b)]);
        Matrix logits(B, 2);
        head_.forward(pooled_, logits);  // (B, H') x (H', 2)
        return logits;
    }

    /// Backward from dL/dlogits (B, 2) of the last training forward.
    void backward(const Batch& batch, const Matrix& dlogits) {
        const Index B = static_cast<Index>(batch.lengths.size()), T = batch.steps;
        Matrix d_pooled(B, pooled_.cols());
        head_.backward(pooled_, dlogits, d_pooled);  // (B, 2) x (2, H')
        Sequence dy(Matrix(B * T, pooled_.cols()), B, T);
        for (Index b = 0; b < B; ++b)  // the mean spreads dL/dpooled over the real steps; padding gets zero
            dy.sequence(b) = d_pooled.row(b).replicate(T, 1) / static_cast<float>(batch.lengths[static_cast<std::size_t>(b)]);
        const Sequence dx = layer_->backward(dy, ctx_);  // zero past each end
        embedding_.backward(batch.ids, dx.data);
    }

    seqnn::ParameterList<float> parameters() {
        seqnn::ParameterList<float> out;
        embedding_.collect_parameters("embedding.", out);
        layer_->collect_parameters("layer.", out);
        head_.collect_parameters("head.", out);
        return out;
    }
    std::string describe() const { return layer_->signature(); }

private:
    static std::unique_ptr<seqnn::Layer<float>> make_layer(const Options& o, seqnn::Rng& rng) {
        const seqnn::RecurrentOptions recurrent{.input_size = o.dim, .hidden_size = o.hidden, .bidirectional = true};
        const seqnn::MinRNNOptions min_rnn{.input_size = o.dim, .hidden_size = o.hidden, .bidirectional = true};
        if (o.arch == "gru") return std::make_unique<seqnn::GRU<float>>(recurrent, rng);
        if (o.arch == "lstm") return std::make_unique<seqnn::LSTM<float>>(recurrent, rng);
        if (o.arch == "rnn") return std::make_unique<seqnn::RNN<float>>(recurrent, rng);
        if (o.arch == "minlstm") return std::make_unique<seqnn::MinLSTM<float>>(min_rnn, rng);
        return std::make_unique<seqnn::MinGRU<float>>(min_rnn, rng);
    }

    seqnn::Embedding<float> embedding_;
    std::unique_ptr<seqnn::Layer<float>> layer_;
    seqnn::Linear<float> head_;
    seqnn::Context<float> ctx_;  // reused from step to step
    Matrix pooled_;              // (B, H'): the last forward's means
};

// Per-class and balanced accuracy over every test line, in batches.
std::array<double, 3> test_accuracy(Classifier& model, const std::array<const Lines*, 2>& texts, int batch_size) {
    std::array<double, 2> correct{}, total{};
    for (int c = 0; c < 2; ++c) {
        const std::vector<std::string>& lines = texts[static_cast<std::size_t>(c)]->test;
        for (std::size_t i = 0; i < lines.size(); i += static_cast<std::size_t>(batch_size)) {
            std::vector<const std::string*> chunk;
            for (std::size_t j = i; j < std::min(lines.size(), i + static_cast<std::size_t>(batch_size)); ++j)
                chunk.push_back(&lines[j]);
            const Matrix logits = model.forward(make_batch(chunk), /*training=*/false);
            for (Index b = 0; b < logits.rows(); ++b) correct[static_cast<std::size_t>(c)] += (logits(b, c) > logits(b, 1 - c));
            total[static_cast<std::size_t>(c)] += static_cast<double>(logits.rows());
        }
    }
    const double a = correct[0] / total[0], b = correct[1] / total[1];
    return {a, b, (a + b) / 2};
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    if (o.threads > 0) seqnn::set_num_threads(o.threads);
    const Lines a = split_lines(o.a_text, o.max_length), b = split_lines(o.b_text, o.max_length);
    const std::array<const Lines*, 2> texts{&a, &b};
    for (int c = 0; c < 2; ++c) {
        const Lines& l = *texts[static_cast<std::size_t>(c)];
        std::printf("class %d: %s: %zu training and %zu test lines (%ld empty and %ld longer than %d bytes left out)\n",
                    c, (c == 0 ? o.a : o.b).c_str(), l.train.size(), l.test.size(), l.empty, l.too_long, o.max_length);
        if (l.train.empty() || l.test.empty()) examples::usage_error("classify", "each text needs at least 5 usable lines");
    }

    seqnn::Rng rng(static_cast<std::uint64_t>(o.seed));
    Classifier model(o, rng);
    seqnn::AdamW<float> optimizer(model.parameters(), {.weight_decay = 0.01});
    const seqnn::WarmupCosineSchedule schedule{.peak_lr = o.lr, .min_lr = o.lr / 10, .warmup_steps = o.steps / 20,
                                               .total_steps = std::max(1L, o.steps)};
    std::printf("model: Embedding(256 -> %d), %s, mean over each line, Linear(-> 2): %ld parameters\n", o.dim,
                model.describe().c_str(), static_cast<long>(seqnn::count_parameters(model.parameters())));

    const auto t0 = examples::Clock::now();
    double loss_sum = 0;
    long loss_count = 0;
    for (long step = 1; step <= o.steps; ++step) {
        // Half the batch from each text, drawn uniformly.
        std::vector<const std::string*> lines;
        std::vector<int> labels;
        for (int i = 0; i < o.batch; ++i) {
            const int c = i % 2;
            const std::vector<std::string>& pool = texts[static_cast<std::size_t>(c)]->train;
            lines.push_back(&pool[std::uniform_int_distribution<std::size_t>(0, pool.size() - 1)(rng)]);
            labels.push_back(c);
        }
        const Batch batch = make_batch(lines);
        const Matrix logits = model.forward(batch, /*training=*/true);
        Matrix dlogits;
        loss_sum += seqnn::cross_entropy_loss<float>(logits, labels, dlogits);
        ++loss_count;
        optimizer.zero_grad();
        model.backward(batch, dlogits);
        seqnn::clip_grad_norm(optimizer.parameters(), 1.0f);
        optimizer.set_lr(schedule(optimizer.steps()));
        optimizer.step();
        if (step % o.eval_every == 0 || step == o.steps) {
            const std::array<double, 3> acc = test_accuracy(model, texts, o.batch);
            std::printf("step %5ld  train loss %.4f  test accuracy %.3f (class 0: %.3f, class 1: %.3f)  %.1f s\n", step,
                        loss_sum / static_cast<double>(loss_count), acc[2], acc[0], acc[1], examples::seconds_since(t0));
            loss_sum = 0;
            loss_count = 0;
        }
    }
    if (o.steps == 0) {
        const std::array<double, 3> acc = test_accuracy(model, texts, o.batch);
        std::printf("untrained test accuracy %.3f\n", acc[2]);
    }
    return 0;
}
