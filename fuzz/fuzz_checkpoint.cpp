// libFuzzer target for the checkpoint restore path (include/seqnn/train/checkpoint.hpp):
// bytes -> parse_safetensors -> restore_checkpoint into a small training state (weights,
// AdamW state and step count, a random stream, dropout counters).
// Property: any input is restored or refused with a seqnn::format_error; never a crash,
// an out-of-bounds read or undefined behaviour (ASan + UBSan watch); what is restored can
// resume (a step count >= 0, finite optimizer state, exp_avg_sq >= 0, counters >= 0); and
// a refused input changes nothing.
// Mutated bytes rarely keep a valid checksum, so when the input's first byte is odd the
// parsed file is sealed again (seal_checkpoint) before the restore: the fuzzer then reaches
// the value checks behind the checksum as well as the checksum itself.
// Build and run as fuzz_safetensors (README.md, "Fuzzing the safetensors reader"), with
// fuzz/corpus_checkpoint/ as the seed corpus.
#include <seqnn/layers/dropout.hpp>
#include <seqnn/train/checkpoint.hpp>
#include <seqnn/train/optimizer.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

namespace {

// The state every input is restored into. The seed fuzz/corpus_checkpoint/valid_checkpoint.safetensors
// is this state saved by save_checkpoint after one AdamW step (every gradient 1) and two
// dropout calls; valid_checkpoint_format1.safetensors is the same without its checksum, as
// format "1".
struct Target {
    seqnn::Parameter<double> weight{2, 3}, bias{3};
    seqnn::ParameterList<double> params{{"weight", &weight}, {"bias", &bias}};
    seqnn::AdamW<double> optimizer{params, {}};
    seqnn::Rng data{5};
    seqnn::Dropout<double> dropout{3, 0.5, 7};
    seqnn::TrainingState<double> state{params, &optimizer, {{"data", &data}}, {&dropout}};
};

bool resumable(const Target& t) {
    seqnn::NamedTensors<double> opt;
    t.optimizer.save_state(opt, "optimizer.");
    for (const auto& [name, m] : opt) {
        if (!m.allFinite()) return false;
        if (name.rfind("optimizer.exp_avg_sq.", 0) == 0 && (m.array() < 0).any()) return false;
    }
    return t.optimizer.steps() >= 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    seqnn::io::TensorMap tensors;
    try {
        tensors = seqnn::io::parse_safetensors(std::as_bytes(std::span<const std::uint8_t>(data, size)), "fuzz input");
    } catch (const seqnn::format_error&) {
        return 0;
    }
    if (size > 0 && (data[0] & 1u)) seqnn::seal_checkpoint(tensors);

    Target target;
    const seqnn::Matrix<double> weight_before = target.weight.value;
    try {
        seqnn::restore_checkpoint(tensors, target.state, "fuzz input");
    } catch (const seqnn::format_error&) {
        // Refused: nothing may have changed.
        if (target.weight.value != weight_before || target.optimizer.steps() != 0 || target.dropout.calls() != 0)
            __builtin_trap();
        return 0;
    }
    if (!resumable(target)) __builtin_trap();
    return 0;
}
