// Training checkpoints in one safetensors file: the weights, the optimizer's state and
// step count, and the random streams, so that a run resumed from a checkpoint takes
// exactly the steps the uninterrupted run would have taken (bitwise, in double).
//
// The file holds
//   <parameter name>                          the weights, as io::state_dict writes them, so
//                                             io::load_parameters(path, params, /*strict=*/false)
//                                             reads a checkpoint as a weight file
//   optimizer.<key>.<parameter name>          the optimizer's state (optimizer.hpp), e.g.
//                                             optimizer.exp_avg.layers.0.1.weight, as (rows, cols)
//   optimizer.step                            I64 scalar: the optimizer's step count
//   rng.dropout_calls                         I64 [n]: each Dropout's counter (its whole state)
// and in the header's metadata
//   rng.<name>                                each std::mt19937_64 stream, in its standard text form
//   seqnn.checkpoint = "3", plus any metadata the caller adds
//   seqnn.checksum                            a 64-bit checksum (16 hex digits) of every tensor
//                                             (name, dtype, shape, bytes) and every other
//                                             metadata entry, checked on load: a flipped bit
//                                             anywhere in the data is a format_error
// Plain weight files (io::save_parameters) carry no checksum: they stay standard safetensors.
// Checkpoints of format "1" (written before the checksum existed) load unverified; a file
// with neither a checksum nor seqnn.checkpoint = "1" is refused. Format "3" differs from "2"
// only in what a Transformer language model saves: "2" held the embedding's dropout counter
// alone, "3" every block's too; a "2" checkpoint of such a model is refused with that reason.
//
// Everything restored is validated before anything changes: shapes, the step count (>= 0),
// the optimizer's state (finite; AdamW's exp_avg_sq >= 0), the dropout counters (>= 0).
// The learning-rate schedule needs nothing: it is a function of the step count.
//
//   seqnn::TrainingState<double> ts{lm.parameters(), &optimizer, {{"data", &data_rng}}, lm.dropouts()};
//   seqnn::save_checkpoint("run.safetensors", ts);
//   ...
//   seqnn::load_checkpoint("run.safetensors", ts);  // into freshly made objects of the same shapes
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/io/safetensors.hpp"
#include "seqnn/io/state_dict.hpp"
#include "seqnn/layers/dropout.hpp"
#include "seqnn/train/optimizer.hpp"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace seqnn {

namespace checkpoint_detail {

inline constexpr const char* checksum_key = "seqnn.checksum";

// A 64-bit checksum of a byte string, 8 bytes at a time (a multiply-rotate round per word,
// SplitMix64's finaliser at the end): any flipped bit changes it, with 2^-64 odds of a miss.
class Checksum {
public:
    void add(std::span<const std::byte> bytes) {
        std::size_t i = 0;
        for (; i + 8 <= bytes.size(); i += 8) {
            std::uint64_t word;
            std::memcpy(&word, bytes.data() + i, 8);
            mix(word);
        }
        std::uint64_t tail = 0;
        if (i < bytes.size()) std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
        mix(tail ^ (static_cast<std::uint64_t>(bytes.size()) << 3));
    }
    void add(std::string_view text) { add(std::as_bytes(std::span<const char>(text.data(), text.size()))); }
    void add(std::uint64_t value) { mix(value); }
    std::string hex() const {
        char digits[17];
        std::snprintf(digits, sizeof digits, "%016llx", static_cast<unsigned long long>(dropout_detail::mix64(h_)));
        return digits;
    }

private:
    void mix(std::uint64_t word) {
        h_ ^= word * 0x9e3779b97f4a7c15ULL;
        h_ = ((h_ << 31) | (h_ >> 33)) * 0xbf58476d1ce4e5b9ULL;
    }
    std::uint64_t h_ = 0x243f6a8885a308d3ULL;
};

// The checksum of everything in `tensors` but the checksum entry itself.
inline std::string checksum_of(const io::TensorMap& tensors) {
    Checksum sum;
    for (const auto& [name, t] : tensors) {
        sum.add(std::string_view(name));
        sum.add(io::dtype_name(t.dtype()));
        sum.add(static_cast<std::uint64_t>(t.shape().size()));
        for (Index d : t.shape()) sum.add(static_cast<std::uint64_t>(d));
        sum.add(t.bytes());
    }
    for (const auto& [key, value] : tensors.metadata) {
        if (key == checksum_key) continue;
        sum.add(std::string_view(key));
        sum.add(std::string_view(value));
    }
    return sum.hex();
}

}  // namespace checkpoint_detail

/// (Re)writes the checksum of `tensors` into its metadata ("seqnn.checksum"), e.g. after
/// editing a checkpoint's tensors on purpose. checkpoint_tensors calls it.
inline void seal_checkpoint(io::TensorMap& tensors) {
    tensors.metadata.erase(checkpoint_detail::checksum_key);
    tensors.metadata[checkpoint_detail::checksum_key] = checkpoint_detail::checksum_of(tensors);
}

/// Throws format_error unless `tensors` carries a checksum that matches its contents, or is a
/// checkpoint of format "1", which predates checksums (loaded unverified).
inline void verify_checkpoint(const io::TensorMap& tensors, const std::string& where) {
    const auto it = tensors.metadata.find(checkpoint_detail::checksum_key);
    if (it == tensors.metadata.end()) {
        const auto format = tensors.metadata.find("seqnn.checkpoint");
        if (format != tensors.metadata.end() && format->second == "1") return;  // written before checksums
        throw format_error(where + ": the file has no 'seqnn.checksum' in its metadata: it is not a seqnn "
                                   "checkpoint, or one whose metadata was stripped (a plain weight file loads "
                                   "with io::load_parameters)");
    }
    const std::string expected = checkpoint_detail::checksum_of(tensors);
    if (it->second != expected)
        throw format_error(where + ": checksum mismatch (the file says " + io::detail::quote_name(it->second) +
                           ", its contents give '" + expected + "'): the checkpoint is corrupt or was altered");
}

/// What a checkpoint saves and restores; the pointers are not owned.
template <typename Scalar>
struct TrainingState {
    /// The parameters to save and restore.
    ParameterList<Scalar> parameters;
    Optimizer<Scalar>* optimizer = nullptr;  ///< optional
    std::map<std::string, Rng*> rngs;        ///< e.g. {{"data", &data_rng}}
    std::vector<Dropout<Scalar>*> dropouts;  ///< e.g. LanguageModel::dropouts()
};

/// Everything in `state` as named tensors and metadata.
template <typename Scalar>
io::TensorMap checkpoint_tensors(const TrainingState<Scalar>& state, std::map<std::string, std::string> metadata = {}) {
    io::TensorMap out = io::state_dict(state.parameters);
    if (state.optimizer) {
        NamedTensors<Scalar> opt;
        state.optimizer->save_state(opt, "optimizer.");
        for (const auto& [name, m] : opt) out.set(name, io::Tensor::from_matrix(m));
        const std::vector<std::int64_t> step{static_cast<std::int64_t>(state.optimizer->steps())};
        out.set("optimizer.step", io::Tensor::from_values(step, {}));
    }
    if (!state.dropouts.empty()) {
        std::vector<std::int64_t> calls;
        for (const Dropout<Scalar>* d : state.dropouts) calls.push_back(static_cast<std::int64_t>(d->calls()));
        out.set("rng.dropout_calls", io::Tensor::from_values(calls, {static_cast<Index>(calls.size())}));
    }
    for (const auto& [name, rng] : state.rngs) {
        std::ostringstream text;
        text << *rng;
        metadata["rng." + name] = text.str();
    }
    metadata["seqnn.checkpoint"] = "3";
    metadata.emplace("format", "pt");
    out.metadata = std::move(metadata);
    seal_checkpoint(out);
    return out;
}

/// Restores `state` from checkpoint_tensors' output. Strict: every weight, optimizer
/// tensor and random stream `state` names must be there with its shape, and no other
/// weight; otherwise format_error (io::state_dict_error for the weights) and nothing
/// of the optimizer or the streams is changed.
template <typename Scalar>
void restore_checkpoint(const io::TensorMap& tensors, TrainingState<Scalar>& state,
                        const std::string& source = "checkpoint") {
    const std::string where = "load_checkpoint(" + source + ")";
    verify_checkpoint(tensors, where);
    // Check and read everything before changing anything.
    NamedTensors<Scalar> opt;
    std::int64_t step = 0;
    if (state.optimizer) {
        NamedTensors<Scalar> shapes;
        state.optimizer->save_state(shapes, "optimizer.");
        for (const auto& [name, m] : shapes) {
            if (!tensors.contains(name)) throw format_error(where + ": optimizer state '" + name + "' is missing");
            const io::Tensor& t = tensors.at(name);
            if (t.shape() != std::vector<Index>{m.rows(), m.cols()})
                throw format_error(where + ": optimizer state '" + name + "' has shape " +
                                   io::detail::shape_text(t.shape()) + ", expected " + shape_string(m));
            opt[name] = t.template to_matrix<Scalar>();
        }
        state.optimizer->check_state(opt, "optimizer.", where);
        if (!tensors.contains("optimizer.step")) throw format_error(where + ": 'optimizer.step' is missing");
        const io::Tensor& step_tensor = tensors.at("optimizer.step");
        if (step_tensor.numel() != 1)
            throw format_error(where + ": 'optimizer.step' holds " + std::to_string(step_tensor.numel()) +
                               " values, expected one integer");
        step = step_tensor.template values<std::int64_t>()[0];
        if (step < 0 || step > std::numeric_limits<long>::max())
            throw format_error(where + ": 'optimizer.step' is " + std::to_string(step) + ", expected a count >= 0");
    }
    std::vector<std::int64_t> calls;
    if (!state.dropouts.empty()) {
        if (!tensors.contains("rng.dropout_calls")) throw format_error(where + ": 'rng.dropout_calls' is missing");
        calls = tensors.at("rng.dropout_calls").template values<std::int64_t>();
        if (calls.size() != state.dropouts.size()) {
            std::string message = where + ": 'rng.dropout_calls' holds " + std::to_string(calls.size()) +
                                  " counters for " + std::to_string(state.dropouts.size()) + " dropouts";
            const auto format = tensors.metadata.find("seqnn.checkpoint");
            if (format != tensors.metadata.end() && (format->second == "1" || format->second == "2"))
                message += ": the checkpoint is of format \"" + format->second +
                           "\", written before a Transformer language model saved its blocks' dropout "
                           "counters, so its training cannot resume exactly; its weights load with "
                           "io::load_parameters(path, parameters, /*strict=*/false)";
            throw format_error(message);
        }
        for (std::size_t i = 0; i < calls.size(); ++i)
            if (calls[i] < 0)
                throw format_error(where + ": 'rng.dropout_calls' counter " + std::to_string(i) + " is " +
                                   std::to_string(calls[i]) + ", expected a count >= 0");
    }
    std::map<std::string, Rng> rngs;
    for (const auto& [name, rng] : state.rngs) {
        const auto it = tensors.metadata.find("rng." + name);
        if (it == tensors.metadata.end()) throw format_error(where + ": random stream 'rng." + name + "' is missing");
        std::istringstream text(it->second);
        Rng restored;
        text >> restored;
        if (!text) throw format_error(where + ": random stream 'rng." + name + "' is not a std::mt19937_64 state");
        rngs.emplace(name, restored);
    }
    // The weights: everything that is not optimizer or generator state, strictly.
    io::TensorMap weights;
    for (const auto& [name, t] : tensors)
        if (name.rfind("optimizer.", 0) != 0 && name.rfind("rng.", 0) != 0) weights.set(name, t);
    io::load_state_dict(weights, state.parameters, /*strict=*/true, source);

    if (state.optimizer) {
        state.optimizer->load_state(opt, "optimizer.");
        state.optimizer->set_steps(static_cast<long>(step));
    }
    for (std::size_t i = 0; i < calls.size(); ++i) state.dropouts[i]->set_calls(static_cast<std::uint64_t>(calls[i]));
    for (const auto& [name, rng] : state.rngs) *rng = rngs.at(name);
}

/// Writes the training state to a safetensors file.
template <typename Scalar>
void save_checkpoint(const std::filesystem::path& path, const TrainingState<Scalar>& state,
                     std::map<std::string, std::string> metadata = {}) {
    io::save_safetensors(path, checkpoint_tensors(state, std::move(metadata)));
}

/// Restores the training state from a file save_checkpoint wrote.
template <typename Scalar>
void load_checkpoint(const std::filesystem::path& path, TrainingState<Scalar>& state) {
    restore_checkpoint(io::load_safetensors(path), state, path.string());
}

}  // namespace seqnn
