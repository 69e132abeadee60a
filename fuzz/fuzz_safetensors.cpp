// libFuzzer target for the safetensors reader (include/seqnn/io/safetensors.hpp).
// Property: any input gives a TensorMap or a seqnn::format_error; never a crash, a leak, an
// out-of-bounds read or undefined behaviour (ASan + UBSan watch). What parses must also
// convert to double, write back out and read back identical, and load into parameters.
// Build and run: see "Fuzzing the safetensors reader" in README.md.
#include <seqnn/io/safetensors.hpp>
#include <seqnn/io/state_dict.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace seqnn::io;
    TensorMap tensors;
    try {
        tensors = parse_safetensors(std::as_bytes(std::span<const std::uint8_t>(data, size)), "fuzz input");
    } catch (const seqnn::format_error&) {
        return 0;  // rejected, as it should be for most inputs
    }

    // Every element converts; integer tensors also read as int64 (a U64 above its range may not).
    for (const auto& [name, tensor] : tensors) {
        (void)tensor.values<double>();
        if (!is_floating(tensor.dtype())) {
            try {
                (void)tensor.values<std::int64_t>();
            } catch (const seqnn::format_error&) {
            }
        }
    }

    // Written out and read back, it is the same tensors and metadata.
    const auto bytes = serialize_safetensors(tensors);
    if (!(parse_safetensors(bytes) == tensors)) __builtin_trap();

    // Loading into a small model, strict (all or nothing) and not.
    static seqnn::Parameter<float> weight(2, 3), bias(3);
    const seqnn::ParameterList<float> params = {{"weight", &weight}, {"bias", &bias}};
    try {
        load_state_dict(tensors, params, /*strict=*/true);
    } catch (const state_dict_error&) {
    }
    (void)load_state_dict(tensors, params, /*strict=*/false);
    return 0;
}
