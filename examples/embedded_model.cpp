// embedded_model: a model whose weights are compiled into the binary, as a plug-in or a
// firmware image carries them: no file is read at run time. The build turns
// data/amp_gru8.safetensors (a GRU amp model of hidden size 8, made by
// `amp_model --train --hidden 8`) into a header holding its bytes as an array
// (common/embed_file.cmake); this program parses those bytes with
// io::parse_safetensors(std::span<const std::byte>), loads them into seqnn's layers with
// io::load_state_dict, builds the real-time twins and processes a generated test signal.
//
//   embedded_model [--seconds S] [--block N]
//
// It prints a checksum of the output, the real-time factor, the error-to-signal ratio
// against the distortion the model was trained on, and how far the real-time twin is from
// the general layers' forward (it exits with status 1 if that is more than rounding).
//
// Outside CMake, make the header first:
//   cmake -DINPUT=examples/data/amp_gru8.safetensors -DOUTPUT=amp_gru8_safetensors.hpp
//         -DNAME=amp_gru8_safetensors -P examples/common/embed_file.cmake
#include "common/amp.hpp"
#include "common/cli.hpp"

#include "amp_gru8_safetensors.hpp"  // generated: amp_gru8_safetensors[], amp_gru8_safetensors_size

#include <cstddef>
#include <span>

namespace {

using seqnn::Index;
namespace amp = examples::amp;

struct Options {
    double seconds = 10;
    int block = 64, seed = 7;
};

Options parse(int argc, char** argv) {
    Options o;
    examples::Flags flags("embedded_model", "runs an amp model whose weights are compiled into the program");
    flags.add("--seconds", o.seconds, "length of the test signal in seconds");
    flags.add("--block", o.block, "samples per process_block call");
    flags.add("--seed", o.seed, "seed of the test signal");
    flags.parse(argc, argv);
    if (o.seconds <= 0 || o.seconds > 3600) flags.fail("--seconds", "must be in (0, 3600]");
    if (o.block < 1) flags.fail("--block", "must be at least 1");
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    seqnn::set_num_threads(1);  // for the general forward of the check; the twins use no threads

    // The weights: bytes inside this binary, parsed and checked like a file.
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(amp_gru8_safetensors),
                                           amp_gru8_safetensors_size);
    const std::string source = "embedded amp_gru8.safetensors";
    std::unique_ptr<amp::AmpModel> model;
    try {
        const seqnn::io::TensorMap tensors = seqnn::io::parse_safetensors(bytes, source);
        seqnn::Rng rng(0);
        model = std::make_unique<amp::AmpModel>(amp::AmpModel::config_from(tensors.metadata, source), rng);
        seqnn::io::load_state_dict(tensors, model->parameters(), true, source);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "embedded_model: %s\n", e.what());
        return 1;
    }
    const int rate = model->config().sample_rate;
    std::printf("model: %s (%zu bytes in the binary): %s, %ld parameters, trained at %d Hz\n", source.c_str(),
                bytes.size(), model->describe().c_str(), static_cast<long>(seqnn::count_parameters(model->parameters())),
                rate);

    // The test signal: the guitar-like signal amp_model --make-demo writes, with another seed.
    const std::vector<float> x = amp::dry_signal(o.seconds, rate, static_cast<std::uint64_t>(o.seed));
    const std::size_t n = x.size();
    const double duration = static_cast<double>(n) / rate;
    std::vector<float> y(n);
    double seconds = 0;
    amp::with_realtime(*model, o.block, [&](auto& twin) {
        const auto t0 = examples::Clock::now();
        for (std::size_t begin = 0; begin < n; begin += static_cast<std::size_t>(o.block))
            twin.process_block(x.data() + begin, std::min<Index>(o.block, static_cast<Index>(n - begin)), y.data() + begin);
        seconds = examples::seconds_since(t0);
    });

    double sum = 0, sum_abs = 0;
    for (float v : y) {
        sum += v;
        sum_abs += std::abs(v);
    }
    const std::vector<float> reference = model->process(x);  // the general layers
    float difference = 0;
    for (std::size_t i = 0; i < n; ++i) difference = std::max(difference, std::abs(y[i] - reference[i]));
    const double esr = amp::esr(y, amp::distort(x, rate));
    std::printf("processed %zu samples (%.2f s at %d Hz) in blocks of %d: %.4f s, real-time factor %.5f\n", n, duration,
                rate, o.block, seconds, seconds / duration);
    std::printf("checksum: sum %.6f, sum |y| %.6f\n", sum, sum_abs);
    std::printf("ESR against the distortion it learnt: %.4f (%.1f dB)\n", esr, 10 * std::log10(std::max(esr, 1e-30)));
    std::printf("max |realtime - seqnn forward| = %.2e\n", static_cast<double>(difference));
    if (difference > 1e-3f) {
        std::fprintf(stderr, "embedded_model: the real-time twin disagrees with the general layers\n");
        return 1;
    }
    return 0;
}
