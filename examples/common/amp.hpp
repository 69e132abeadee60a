// What amp_model and embedded_model share: the amp model (trained with seqnn's general
// layers), its real-time twin (seqnn::realtime, one sample or one block at a time), the
// synthetic guitar-like test signal and the distortion the model learns, and the
// error-to-signal ratio. Example code, not part of the library.
//
// The model is the usual structure of neural amp models: a small recurrent network that
// learns the difference between the processed and the dry signal,
//   y = x + Linear(H -> 1)(GRU or LSTM(H)(Linear(1 -> H)(x)))
// so an untrained model passes the signal through, and training learns the distortion.
#pragma once

#include <seqnn/seqnn.hpp>
#include <seqnn/io.hpp>
#include <seqnn/realtime/gru.hpp>
#include <seqnn/realtime/linear.hpp>
#include <seqnn/realtime/lstm.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numbers>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace examples::amp {

using seqnn::Index;
using LinearLayer = seqnn::Rowwise<float, seqnn::Linear<float>>;

/// The model's shape, stored in the safetensors metadata so that a file rebuilds its model.
struct AmpConfig {
    std::string arch = "gru";  // gru | lstm
    Index hidden = 16;         // H
    int sample_rate = 48000;   // the rate it was trained at (Hz)
};

/// The amp model on seqnn's general layers: body = Linear(1 -> H) -> GRU | LSTM(H) ->
/// Linear(H -> 1) in a Sequential (state_dict names "0.weight", "1.weight_ih_l0", ...,
/// "2.bias", as nn.Sequential's), and the output is x + body(x).
class AmpModel {
public:
    AmpModel(const AmpConfig& config, seqnn::Rng& rng) : config_(config) {
        if (config.arch != "gru" && config.arch != "lstm")
            seqnn::fail("AmpModel", "arch must be gru or lstm, got '" + config.arch + "'");
        if (config.hidden < 1) seqnn::fail("AmpModel", "hidden must be at least 1");
        const Index H = config.hidden;
        input_ = &body_.emplace<LinearLayer>("Linear", seqnn::Linear<float>(1, H, true, rng));
        const seqnn::RecurrentOptions options{.input_size = H, .hidden_size = H};
        if (config.arch == "gru")
            gru_ = &body_.emplace<seqnn::GRU<float>>(options, rng);
        else
            lstm_ = &body_.emplace<seqnn::LSTM<float>>(options, rng);
        output_ = &body_.emplace<LinearLayer>("Linear", seqnn::Linear<float>(H, 1, true, rng));
        // Start as the identity: the correction begins at zero and training grows it.
        output_->block().weight.value.setZero();
        output_->block().bias.value.setZero();
    }
    AmpModel(const AmpModel&) = delete;
    AmpModel& operator=(const AmpModel&) = delete;

    const AmpConfig& config() const { return config_; }
    /// x (B*T, 1) -> the correction (B*T, 1); the model's output is x + body(x).
    seqnn::Sequential<float>& body() { return body_; }
    const seqnn::Sequential<float>& body() const { return body_; }
    seqnn::ParameterList<float> parameters() { return body_.parameters(); }
    const seqnn::Linear<float>& input_linear() const { return input_->block(); }
    const seqnn::Linear<float>& output_linear() const { return output_->block(); }
    const seqnn::GRU<float>* gru() const { return gru_; }
    const seqnn::LSTM<float>* lstm() const { return lstm_; }

    /// "Linear(1 -> 16) -> GRU(16) -> Linear(16 -> 1), skip".
    std::string describe() const {
        const std::string H = std::to_string(config_.hidden), rnn = gru_ ? "GRU" : "LSTM";
        return "y = x + Linear(" + H + " -> 1)(" + rnn + "(" + H + ")(Linear(1 -> " + H + ")(x)))";
    }

    /// What save writes into the file's metadata.
    std::map<std::string, std::string> metadata() const {
        return {{"model", "amp"},
                {"arch", config_.arch},
                {"hidden", std::to_string(config_.hidden)},
                {"sample_rate", std::to_string(config_.sample_rate)}};
    }
    /// The configuration a file's metadata describes; seqnn::format_error naming `source` if it is
    /// not an amp model's.
    static AmpConfig config_from(const std::map<std::string, std::string>& metadata, const std::string& source) {
        const auto get = [&](const std::string& key) {
            const auto it = metadata.find(key);
            if (it == metadata.end())
                throw seqnn::format_error(source + ": no '" + key + "' in the metadata (not a model saved by amp_model)");
            return it->second;
        };
        AmpConfig c;
        c.arch = get("arch");
        try {
            c.hidden = std::stol(get("hidden"));
            c.sample_rate = std::stoi(get("sample_rate"));
        } catch (const std::logic_error&) {
            throw seqnn::format_error(source + ": the metadata's hidden or sample_rate is not a number");
        }
        if ((c.arch != "gru" && c.arch != "lstm") || c.hidden < 1 || c.sample_rate < 1)
            throw seqnn::format_error(source + ": the metadata describes no amp model (arch '" + c.arch + "', hidden " +
                                      std::to_string(c.hidden) + ")");
        return c;
    }

    /// y = x + body(x) over a whole signal with the general layers' forward, one stream fed in
    /// chunks with its state carried over: the reference the real-time twin is checked against.
    std::vector<float> process(std::span<const float> x, Index chunk = 16384) const {
        std::vector<float> y(x.size());
        seqnn::State<float> state;
        for (std::size_t begin = 0; begin < x.size(); begin += static_cast<std::size_t>(chunk)) {
            const Index T = std::min<Index>(chunk, static_cast<Index>(x.size() - begin));
            seqnn::Sequence<float> in(1, T, 1);
            for (Index t = 0; t < T; ++t) in.data(t, 0) = x[begin + static_cast<std::size_t>(t)];
            const seqnn::Sequence<float> out = body_.forward(in, &state);  // (T, 1)
            for (Index t = 0; t < T; ++t) y[begin + static_cast<std::size_t>(t)] = in.data(t, 0) + out.data(t, 0);
        }
        return y;
    }

private:
    AmpConfig config_;
    seqnn::Sequential<float> body_;
    LinearLayer* input_ = nullptr;
    seqnn::GRU<float>* gru_ = nullptr;
    seqnn::LSTM<float>* lstm_ = nullptr;
    LinearLayer* output_ = nullptr;
};

/// The amp model's real-time twin: the three seqnn::realtime twins chained by hand, with the
/// skip. Recurrent is realtime::GRU<float> or realtime::LSTM<float>. Set-up allocates; then
/// process_sample and process_block allocate nothing and make no virtual call.
template <typename Recurrent>
class RealtimeAmp {
public:
    /// Copies the weights of the model's layers (the model may go away afterwards).
    template <typename GeneralRecurrent>
    RealtimeAmp(const AmpModel& model, const GeneralRecurrent& recurrent, Index max_block)
        : input_(model.input_linear()),
          recurrent_(recurrent, max_block),
          output_(model.output_linear()),
          max_block_(max_block),
          hidden_in_(static_cast<std::size_t>(max_block * recurrent_.input_size())),
          hidden_out_(static_cast<std::size_t>(max_block * recurrent_.output_size())),
          correction_(static_cast<std::size_t>(max_block)) {}

    /// Zero state, as at the start of a stream.
    void reset() noexcept { recurrent_.reset(); }

    /// One sample in, one out.
    float process_sample(float x) noexcept {
        float correction = 0;
        input_.process_sample(&x, hidden_in_.data());                   // (1) -> (H)
        recurrent_.process_sample(hidden_in_.data(), hidden_out_.data());  // (H) -> (H)
        output_.process_sample(hidden_out_.data(), &correction);       // (H) -> (1)
        return x + correction;
    }

    /// `n` samples, in pieces of at most max_block: each twin runs over the whole piece before
    /// the next one. x and y may be the same buffer (in-place processing).
    void process_block(const float* x, Index n, float* y) noexcept {
        for (Index begin = 0; begin < n; begin += max_block_) {
            const Index T = std::min(max_block_, n - begin);
            input_.process_block(x + begin, T, hidden_in_.data());                   // (T, 1) -> (T, H)
            recurrent_.process_block(hidden_in_.data(), T, hidden_out_.data());      // (T, H) -> (T, H)
            output_.process_block(hidden_out_.data(), T, correction_.data());        // (T, H) -> (T, 1)
            for (Index t = 0; t < T; ++t) y[begin + t] = x[begin + t] + correction_[static_cast<std::size_t>(t)];
        }
    }

private:
    seqnn::realtime::Linear<float> input_;
    Recurrent recurrent_;
    seqnn::realtime::Linear<float> output_;
    Index max_block_;
    std::vector<float> hidden_in_, hidden_out_, correction_;  // (max_block, H), (max_block, H), (max_block)
};

/// Builds the real-time twin of `model` for its arch and calls f(twin).
template <typename F>
void with_realtime(const AmpModel& model, Index max_block, F&& f) {
    if (model.gru()) {
        RealtimeAmp<seqnn::realtime::GRU<float>> twin(model, *model.gru(), max_block);
        f(twin);
    } else {
        RealtimeAmp<seqnn::realtime::LSTM<float>> twin(model, *model.lstm(), max_block);
        f(twin);
    }
}

// ---------------------------------------------------------------------------
// Signals

/// A guitar-like dry test signal of `seconds` at `rate` Hz, the same for the same seed: events
/// every 0.15 to 0.6 s at random levels (0.05 to 0.7), each a sine sweep snippet (up or down
/// between 40 Hz and 8 kHz), a plucked note (82 to 660 Hz, six decaying harmonics) or a plucked
/// major chord, ringing over the next ones, on a noise floor of about -60 dB.
inline std::vector<float> dry_signal(double seconds, int rate, std::uint64_t seed) {
    const auto n = static_cast<std::size_t>(seconds * rate);
    std::vector<double> x(n, 0.0);
    seqnn::Rng rng(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::normal_distribution<double> noise(0.0, 1.0);
    const double tau = 2 * std::numbers::pi, fs = rate;
    const auto fade = [&](std::size_t i, std::size_t length) {  // 5 ms raised-cosine ends
        const double edge = 0.005 * fs, d = static_cast<double>(std::min(i, length - 1 - i));
        return d >= edge ? 1.0 : 0.5 - 0.5 * std::cos(std::numbers::pi * d / edge);
    };
    const auto pluck = [&](std::size_t start, double f0, double level) {
        const double decay = 0.15 + 0.5 * u(rng);  // seconds to 1/e
        const std::size_t length = std::min(n - start, static_cast<std::size_t>(4 * decay * fs));
        double phase[6] = {};
        for (int k = 0; k < 6; ++k) phase[k] = tau * u(rng);
        for (std::size_t i = 0; i < length; ++i) {
            const double t = static_cast<double>(i) / fs;
            const double attack = std::min(1.0, t / 0.002);
            double s = 0;
            for (int k = 1; k <= 6; ++k)
                if (k * f0 < 0.45 * fs) s += std::sin(tau * k * f0 * t + phase[k - 1]) * std::exp(-t * k / decay) / k;
            x[start + i] += level * 0.6 * attack * s * fade(i, length);
        }
    };
    for (std::size_t start = 0; start < n;) {
        const double level = 0.05 + 0.65 * u(rng) * u(rng) + 0.2 * u(rng);  // more quiet events than loud ones
        const double kind = u(rng);
        const std::size_t gap = static_cast<std::size_t>((0.15 + 0.45 * u(rng)) * fs);
        if (kind < 0.35) {  // a sweep snippet over the gap, exponential in frequency
            const std::size_t length = std::min(gap, n - start);
            double f0 = 40 * std::pow(10.0, u(rng)), f1 = 800 * std::pow(10.0, u(rng));  // 40-400 Hz, 0.8-8 kHz
            if (u(rng) < 0.5) std::swap(f0, f1);
            const double duration = static_cast<double>(length) / fs, k = std::log(f1 / f0);
            for (std::size_t i = 0; i < length; ++i) {
                const double t = static_cast<double>(i) / fs;
                const double phase = tau * f0 * duration / k * (std::exp(k * t / duration) - 1);  // integral of f
                x[start + i] += level * std::sin(phase) * fade(i, length);
            }
        } else if (kind < 0.8) {
            pluck(start, 82.4 * std::pow(2.0, 3 * u(rng)), level);
        } else {  // a strummed major chord: root, major third, fifth, 10 ms apart
            const double root = 82.4 * std::pow(2.0, 2 * u(rng));
            for (int k = 0; k < 3; ++k) {
                const std::size_t at = start + static_cast<std::size_t>(k * 0.01 * fs);
                if (at < n) pluck(at, root * std::pow(2.0, (k == 0 ? 0 : k == 1 ? 4 : 7) / 12.0), level * 0.6);
            }
        }
        start += gap;
    }
    std::vector<float> out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(x[i] + 0.001 * noise(rng));
    return out;
}

/// The "device" the model learns: a tone control (a one-pole low-pass at `cutoff` Hz), then an
/// asymmetric soft clipper, y = level * (tanh(gain * (lp + bias)) - tanh(gain * bias)), whose
/// bias adds the even harmonics of a tube stage.
inline std::vector<float> distort(std::span<const float> dry, int rate, double gain = 8.0, double cutoff = 3000.0) {
    const double a = std::exp(-2 * std::numbers::pi * cutoff / rate);  // pole of the low-pass
    const double bias = 0.1, level = 0.5;
    std::vector<float> wet(dry.size());
    double lp = 0;
    for (std::size_t i = 0; i < dry.size(); ++i) {
        lp = (1 - a) * dry[i] + a * lp;
        wet[i] = static_cast<float>(level * (std::tanh(gain * (lp + bias)) - std::tanh(gain * bias)));
    }
    return wet;
}

/// Error-to-signal ratio sum (y - target)^2 / sum target^2: 0 is perfect, 1 is as bad as
/// silence. The amp-modelling literature's measure (often in dB: 10 log10 ESR).
inline double esr(std::span<const float> y, std::span<const float> target) {
    double error = 0, energy = 0;
    for (std::size_t i = 0; i < target.size(); ++i) {
        const double d = static_cast<double>(y[i]) - target[i];
        error += d * d;
        energy += static_cast<double>(target[i]) * target[i];
    }
    return error / std::max(energy, 1e-30);
}

/// The p-th percentile (0..100) of `values` (sorted in place), nearest rank.
inline double percentile(std::vector<double>& values, double p) {
    if (values.empty()) return 0;
    std::sort(values.begin(), values.end());
    const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(values.size())));
    return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

}  // namespace examples::amp
