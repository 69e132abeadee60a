// The character-level language model of char_lm and streaming: its configuration, how
// it is written into a safetensors file's metadata, and how it is rebuilt from them,
// so that a saved file alone gives back the model.
#pragma once

#include "cli.hpp"

#include <seqnn/io.hpp>
#include <seqnn/models/language_model.hpp>

#include <map>
#include <memory>
#include <string>

namespace examples {

struct CharModelConfig {
    std::string arch = "mingru";  // mingru | minlstm | gru | lstm | rnn | transformer
    int layers = 3;               // blocks
    int dim = 384;                // D
    double expansion = 2.0;       // min-RNNs: inner size D * expansion
    int heads = 6;                // Transformer: D must be divisible by it
    int conv = 0;                 // recurrent kinds: causal depthwise conv width, 0 for none
    double ff_mult = 4.0;         // MLP hidden size D * ff_mult
    int ctx = 256;                // training context (the Transformer's cache holds this many tokens)
    Vocabulary vocab;             // the bytes the model knows
};

inline bool parse_arch(const std::string& arch, seqnn::MixerKind& kind) {
    static const std::map<std::string, seqnn::MixerKind> kinds = {
        {"rnn", seqnn::MixerKind::RNN},         {"lstm", seqnn::MixerKind::LSTM},
        {"gru", seqnn::MixerKind::GRU},         {"mingru", seqnn::MixerKind::MinGRU},
        {"minlstm", seqnn::MixerKind::MinLSTM}, {"transformer", seqnn::MixerKind::Transformer}};
    const auto it = kinds.find(arch);
    if (it == kinds.end()) return false;
    kind = it->second;
    return true;
}

// "mingru, 3 layers, dim 384, expansion 2, conv 4, context 256"
inline std::string describe(const CharModelConfig& c) {
    char buf[160];
    std::string extra;
    if (c.arch == "transformer") extra = ", " + std::to_string(c.heads) + " heads";
    else if (c.arch.rfind("min", 0) == 0) {
        std::snprintf(buf, sizeof buf, ", expansion %g", c.expansion);
        extra = buf;
    }
    if (c.arch != "transformer" && c.conv > 0) extra += ", conv " + std::to_string(c.conv);
    std::snprintf(buf, sizeof buf, "%s, %d layer%s, dim %d%s, context %d", c.arch.c_str(), c.layers,
                  c.layers == 1 ? "" : "s", c.dim, extra.c_str(), c.ctx);
    return buf;
}

// The library's options for this configuration. `cache` is the Transformer's KV-cache
// length per stream (0: the training context).
inline seqnn::LanguageModelOptions model_options(const CharModelConfig& c, double dropout, std::uint64_t seed,
                                                 seqnn::Index cache = 0) {
    seqnn::MixerOptions mixer;
    if (!parse_arch(c.arch, mixer.kind)) throw std::invalid_argument("unknown architecture '" + c.arch + "'");
    mixer.expansion = c.expansion;
    mixer.num_heads = c.heads;
    mixer.max_cache_length = cache > 0 ? cache : c.ctx;
    const bool transformer = mixer.kind == seqnn::MixerKind::Transformer;
    return {.vocab_size = c.vocab.size(),
            .dim = c.dim,
            .depth = c.layers,
            .mixer = mixer,
            .ff_mult = c.ff_mult,
            .conv = !transformer && c.conv > 0,
            .conv_kernel = c.conv > 0 ? c.conv : 3,
            .dropout = dropout,
            .dropout_seed = seed};
}

// The configuration as safetensors metadata (strings), and back.
inline std::map<std::string, std::string> to_metadata(const CharModelConfig& c) {
    std::string vocab_hex;
    for (unsigned char b : c.vocab.bytes) {
        char buf[3];
        std::snprintf(buf, sizeof buf, "%02x", b);
        vocab_hex += buf;
    }
    return {{"seqnn.model", "char_lm"},          {"arch", c.arch},
            {"layers", std::to_string(c.layers)}, {"dim", std::to_string(c.dim)},
            {"expansion", std::to_string(c.expansion)}, {"heads", std::to_string(c.heads)},
            {"conv", std::to_string(c.conv)},     {"ff_mult", std::to_string(c.ff_mult)},
            {"ctx", std::to_string(c.ctx)},       {"vocab_bytes_hex", vocab_hex}};
}

// Throws std::runtime_error naming the missing or bad key.
inline CharModelConfig from_metadata(const std::map<std::string, std::string>& m, const std::string& source) {
    const auto get = [&](const std::string& key) -> const std::string& {
        const auto it = m.find(key);
        if (it == m.end())
            throw std::runtime_error(source + ": metadata lacks '" + key + "' (was it saved by char_lm --save?)");
        return it->second;
    };
    CharModelConfig c;
    try {
        c.arch = get("arch");
        c.layers = std::stoi(get("layers"));
        c.dim = std::stoi(get("dim"));
        c.expansion = std::stod(get("expansion"));
        c.heads = std::stoi(get("heads"));
        c.conv = std::stoi(get("conv"));
        c.ff_mult = std::stod(get("ff_mult"));
        c.ctx = std::stoi(get("ctx"));
    } catch (const std::logic_error& e) {  // std::stoi's invalid_argument / out_of_range
        throw std::runtime_error(source + ": bad number in the metadata (" + e.what() + ")");
    }
    seqnn::MixerKind kind;
    if (!parse_arch(c.arch, kind)) throw std::runtime_error(source + ": unknown arch '" + c.arch + "' in the metadata");
    const std::string& hex = get("vocab_bytes_hex");
    if (hex.empty() || hex.size() % 2 != 0 || hex.size() > 512)
        throw std::runtime_error(source + ": metadata 'vocab_bytes_hex' is not a list of bytes");
    std::vector<unsigned char> bytes;
    for (std::size_t i = 0; i < hex.size(); i += 2)
        bytes.push_back(static_cast<unsigned char>(std::stoul(hex.substr(i, 2), nullptr, 16)));
    c.vocab = Vocabulary::from_bytes(std::move(bytes));
    return c;
}

// Reads a model saved by char_lm --save: configuration from the metadata, then the
// weights by name (strict). `cache`: the Transformer's KV-cache length (0: ctx).
inline std::unique_ptr<seqnn::LanguageModel<float>> load_char_model(const std::string& path, CharModelConfig& config,
                                                                    seqnn::Index cache = 0) {
    const seqnn::io::TensorMap file = seqnn::io::load_safetensors(path);
    config = from_metadata(file.metadata, path);
    seqnn::Rng rng(0);
    auto model = std::make_unique<seqnn::LanguageModel<float>>(model_options(config, 0.0, 0, cache), rng);
    seqnn::io::load_state_dict(file, model->parameters(), /*strict=*/true, path);
    return model;
}

}  // namespace examples
