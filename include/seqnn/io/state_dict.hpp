// Parameters <-> named tensors, by their PyTorch state_dict names, in memory and in
// safetensors files:
//
//   seqnn::io::save_parameters("gru.safetensors", gru.parameters(), {{"epoch", "3"}});
//   seqnn::io::load_parameters("gru.safetensors", gru.parameters());          // strict
//   auto report = seqnn::io::load_parameters(path, params, /*strict=*/false);  // what matched
//
// Loading is strict by default, like PyTorch's load_state_dict: if the file lacks a
// parameter (missing), holds a tensor no parameter asks for (unexpected) or holds one of
// another shape (mismatched), nothing is loaded and one state_dict_error lists every such
// problem. Non-strict loading sets the parameters that match by name and shape and returns
// the rest in the report; unlike PyTorch, a shape mismatch is then reported, not thrown.
// Any dtype loads into float or double parameters (F16 and BF16 exactly, F64 into float
// rounded to nearest). A Parameter's shape is its PyTorch shape: {out, in} for a weight,
// {n} for a bias stored as a (1, n) row.
//
// To read one sub-module's tensors out of a larger model's file, load with a prefix, as
// PyTorch's load_state_dict of a submodule does (`model.encoder.load_state_dict(...)`):
//
//   io::load_parameters("model.safetensors", encoder, {.prefix = "encoder"});   // strict
//
// The tensor "encoder.<name>" sets the parameter "<name>"; tensors outside the prefix are
// ignored; strictness applies within it (a parameter without its "encoder.<name>" tensor
// is missing, an "encoder.<other>" tensor no parameter asks for is unexpected). "encoder"
// and "encoder." are the same prefix. sub_state_dict(tensors, "encoder") extracts those
// tensors under their short names; with_prefix puts them back under the long ones. (Or name
// the parameters as the file does: `layer.collect_parameters("encoder.", params)`.)
//
// Inputs, outputs and recurrent states in PyTorch's layouts, (B, T, D), nn.RNN/GRU/LSTM's
// (L, B, H) and lucidrains minGRU's (B, 1, E), convert to and from seqnn's matrices with the
// functions of seqnn/io/layouts.hpp (included here), which documents the layouts.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/layer.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/io/layouts.hpp"
#include "seqnn/io/safetensors.hpp"

#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace seqnn::io {

/// What a load did: the parameters it set, and every name that did not fit.
struct LoadReport {
    std::vector<std::string> loaded;      ///< parameters set from the tensors
    std::vector<std::string> missing;     ///< parameters with no tensor of their name
    std::vector<std::string> unexpected;  ///< tensors that no parameter is named after
    std::vector<std::string> mismatched;  ///< "name: file has F32 [3, 4], parameter is [4, 4]"

    /// True when every parameter was loaded and every tensor used.
    bool complete() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }

    /// One message listing every problem, e.g.
    ///   3 problem(s) loading 'gru.safetensors':
    ///     missing keys: bias_hh_l0
    ///     unexpected keys: decoder.weight
    ///     size mismatch for weight_ih_l0: file has F32 [48, 8], parameter is [48, 7]
    std::string message(const std::string& source) const {
        std::string out = std::to_string(missing.size() + unexpected.size() + mismatched.size()) +
                          " problem(s) loading " + source + ":";
        const auto list = [&](const char* label, const std::vector<std::string>& names) {
            if (names.empty()) return;
            out += std::string("\n  ") + label + ": ";
            for (std::size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
        };
        list("missing keys", missing);
        list("unexpected keys", unexpected);
        for (const auto& m : mismatched) out += "\n  size mismatch for " + m;
        return out;
    }
};

/// Strict loading found problems; report() lists them all. A format_error, so one catch
/// covers unreadable files and files that do not fit the model.
class state_dict_error : public format_error {
public:
    /// The error for a strict load that found problems, listing them all.
    state_dict_error(LoadReport report, const std::string& source)
        : format_error(report.message(source)), report_(std::move(report)) {}
    /// What the load found: missing, unexpected and mis-shaped tensors.
    const LoadReport& report() const { return report_; }

private:
    LoadReport report_;
};

namespace detail {

template <typename Scalar>
void check_parameter(const NamedParameter<Scalar>& p) {
    Index n = 1;
    for (Index d : p.param->shape) n *= d;
    if (n != p.param->value.size())
        throw shape_error("Parameter '" + p.name + "': shape " + shape_text(p.param->shape) + " does not describe its " +
                          seqnn::shape_string(p.param->value) + " matrix");
}

// The prefix as it starts a key: "" stays "", "encoder" and "encoder." become "encoder.".
inline std::string key_prefix(std::string_view prefix) {
    std::string out(prefix);
    if (!out.empty() && out.back() != '.') out += '.';
    return out;
}

inline bool starts_with(std::string_view text, std::string_view prefix) {
    return text.substr(0, prefix.size()) == prefix;
}

}  // namespace detail

/// How load_state_dict and load_parameters match tensors to parameters.
struct LoadOptions {
    /// All or nothing: any missing, unexpected or mis-shaped tensor (within the prefix) is a
    /// state_dict_error and nothing is loaded. Non-strict: load what fits, report the rest.
    bool strict = true;
    /// Load only the tensors "<prefix>.<name>", into the parameters "<name>"; other tensors
    /// are ignored. "" (the default) takes every tensor; "encoder" and "encoder." are the same.
    std::string prefix;
};

/// The tensors whose names start with "<prefix>.", under their names without it, e.g. "weight"
/// for "encoder.weight" with prefix "encoder" (or "encoder."), and the metadata; the empty
/// prefix gives every tensor. PyTorch: {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}.
inline TensorMap sub_state_dict(const TensorMap& tensors, std::string_view prefix) {
    const std::string p = detail::key_prefix(prefix);
    TensorMap out;
    out.metadata = tensors.metadata;
    for (const auto& [name, tensor] : tensors)
        if (detail::starts_with(name, p)) out.set(name.substr(p.size()), tensor);
    return out;
}

/// Every tensor renamed "<prefix>.<name>" (the inverse of sub_state_dict), and the metadata:
/// how one layer's state_dict takes its place in a larger model's file.
inline TensorMap with_prefix(const TensorMap& tensors, std::string_view prefix) {
    const std::string p = detail::key_prefix(prefix);
    TensorMap out;
    out.metadata = tensors.metadata;
    for (const auto& [name, tensor] : tensors) out.set(p + name, tensor);
    return out;
}

/// The parameters as named tensors of `dtype` (by default the parameters' own: F32 for float,
/// F64 for double; F16 and BF16 round to nearest even). Two different parameters under one
/// name are a shape_error; one parameter under two names (tied weights) gives both.
template <typename Scalar>
TensorMap state_dict(const ParameterList<Scalar>& params, DType dtype = dtype_of<Scalar>()) {
    if (!is_floating(dtype))
        throw shape_error("state_dict: parameters are saved as F64, F32, F16 or BF16, not " +
                          std::string(dtype_name(dtype)));
    TensorMap out;
    std::map<std::string, const Parameter<Scalar>*> seen;
    for (const auto& p : params) {
        detail::check_parameter(p);
        const auto [it, fresh] = seen.emplace(p.name, p.param);
        if (!fresh && it->second != p.param)
            throw shape_error("state_dict: two different parameters are named '" + p.name + "'");
        const auto& v = p.param->value;
        out.set(p.name, Tensor::from_values(std::span<const Scalar>(v.data(), static_cast<std::size_t>(v.size())),
                                            p.param->shape, dtype));
    }
    return out;
}

/// Sets `params` from `tensors` by name, the tensor "<prefix>.<name>" into the parameter
/// "<name>" when options.prefix is set (tensors outside the prefix are ignored). Strict: all
/// or nothing, and state_dict_error (naming `source` and the prefix) listing every problem
/// within the prefix. Non-strict: sets what matches, reports the rest. The report names
/// tensors by their keys in `tensors`, the prefix included.
template <typename Scalar>
LoadReport load_state_dict(const TensorMap& tensors, const ParameterList<Scalar>& params, const LoadOptions& options,
                           const std::string& source = "state_dict") {
    const std::string prefix = detail::key_prefix(options.prefix);
    LoadReport report;
    std::set<std::string> asked;  // the keys the parameters ask for, to find the unexpected tensors
    std::vector<std::pair<const Tensor*, Parameter<Scalar>*>> plan;
    for (const auto& p : params) {
        detail::check_parameter(p);
        const std::string key = prefix + p.name;
        asked.insert(key);
        if (!tensors.contains(key)) {
            report.missing.push_back(key);
            continue;
        }
        const Tensor& t = tensors.at(key);
        if (t.shape() != p.param->shape) {
            report.mismatched.push_back(key + ": file has " + std::string(dtype_name(t.dtype())) + " " +
                                        detail::shape_text(t.shape()) + ", parameter is " +
                                        detail::shape_text(p.param->shape));
            continue;
        }
        plan.emplace_back(&t, p.param);
        report.loaded.push_back(key);
    }
    for (const auto& [name, tensor] : tensors)
        if (detail::starts_with(name, prefix) && !asked.count(name)) report.unexpected.push_back(name);
    if (options.strict && !report.complete())
        throw state_dict_error(std::move(report), prefix.empty() ? source : source + " under prefix '" + prefix + "'");

    for (const auto& [t, param] : plan)
        t->copy_to(std::span<Scalar>(param->value.data(), static_cast<std::size_t>(param->value.size())));
    return report;
}

/// Sets `params` from `tensors` by name. Strict: all or nothing, and state_dict_error
/// (naming `source`) listing every problem. Non-strict: sets what matches, reports the rest.
template <typename Scalar>
LoadReport load_state_dict(const TensorMap& tensors, const ParameterList<Scalar>& params, bool strict = true,
                           const std::string& source = "state_dict") {
    return load_state_dict(tensors, params, LoadOptions{.strict = strict, .prefix = {}}, source);
}

/// Saves `params` to a safetensors file, with `metadata` in its header. Unless the metadata
/// says otherwise, "format" is "pt", which Hugging Face's loaders look for.
template <typename Scalar>
void save_parameters(const std::filesystem::path& path, const ParameterList<Scalar>& params,
                     std::map<std::string, std::string> metadata = {}, DType dtype = dtype_of<Scalar>()) {
    TensorMap tensors = state_dict(params, dtype);
    metadata.emplace("format", "pt");
    tensors.metadata = std::move(metadata);
    save_safetensors(path, tensors);
}

/// Loads `params` from a safetensors file (see load_state_dict for strict and non-strict).
template <typename Scalar>
LoadReport load_parameters(const std::filesystem::path& path, const ParameterList<Scalar>& params,
                           bool strict = true) {
    return load_state_dict(load_safetensors(path), params, strict, path.string());
}

/// Loads `params` from a safetensors file with `options`: strict or not, and the prefix of
/// the tensors to read (see load_state_dict).
template <typename Scalar>
LoadReport load_parameters(const std::filesystem::path& path, const ParameterList<Scalar>& params,
                           const LoadOptions& options) {
    return load_state_dict(load_safetensors(path), params, options, path.string());
}

/// The same for a whole layer or model.
template <typename Scalar>
void save_parameters(const std::filesystem::path& path, Layer<Scalar>& layer,
                     std::map<std::string, std::string> metadata = {}, DType dtype = dtype_of<Scalar>()) {
    save_parameters(path, layer.parameters(), std::move(metadata), dtype);
}

/// Loads a layer's parameters from a safetensors file by state_dict name.
template <typename Scalar>
LoadReport load_parameters(const std::filesystem::path& path, Layer<Scalar>& layer, bool strict = true) {
    return load_parameters(path, layer.parameters(), strict);
}

/// Loads a layer's parameters from a safetensors file with `options`, e.g. {.prefix =
/// "encoder"} for one layer of a larger model's file.
template <typename Scalar>
LoadReport load_parameters(const std::filesystem::path& path, Layer<Scalar>& layer, const LoadOptions& options) {
    return load_parameters(path, layer.parameters(), options);
}

}  // namespace seqnn::io
