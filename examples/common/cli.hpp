// What the example programs share: command-line flags, a progress bar, and a byte-level
// text corpus with random training windows. Example code, not part of the library.
#pragma once

#include <seqnn/seqnn.hpp>
#include <seqnn/models/language_model.hpp>

#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace examples {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Prints "<program>: <message>" to stderr and exits with status 2 (a usage error).
[[noreturn]] inline void usage_error(const std::string& program, const std::string& message) {
    std::fprintf(stderr, "%s: %s (see --help)\n", program.c_str(), message.c_str());
    std::exit(2);
}

// ---------------------------------------------------------------------------
// Flags: `--name value` or `--name=value`, registered with a variable to fill.
//
//   examples::Flags flags("char_lm", "trains a character-level language model");
//   flags.add("--steps", steps, "training steps");
//   flags.parse(argc, argv);             // --help prints the list and exits 0
//   if (!flags.given("--steps")) ...     // a preset may fill what the user left out
class Flags {
public:
    Flags(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

    void add(const std::string& name, int& v, const std::string& help) { add_value(name, "N", help, std::to_string(v), [&v, this, name](const std::string& s) { v = static_cast<int>(to_long(name, s)); }); }
    void add(const std::string& name, long& v, const std::string& help) { add_value(name, "N", help, std::to_string(v), [&v, this, name](const std::string& s) { v = to_long(name, s); }); }
    void add(const std::string& name, double& v, const std::string& help) { add_value(name, "X", help, format_double(v), [&v, this, name](const std::string& s) { v = to_double(name, s); }); }
    void add(const std::string& name, std::string& v, const std::string& help, const std::string& metavar = "S") {
        add_value(name, metavar, help, v.empty() ? "" : v, [&v](const std::string& s) { v = s; });
    }
    // A switch without a value.
    void add_switch(const std::string& name, bool& v, const std::string& help) {
        flags_.push_back({name, "", help, "", [&v](const std::string&) { v = true; }, false});
    }

    void parse(int argc, char** argv) {
        for (int i = 1; i < argc; ++i) {
            std::string arg = argv[i], value;
            if (arg == "--help" || arg == "-h") {
                print_help();
                std::exit(0);
            }
            const auto eq = arg.find('=');
            const bool inline_value = arg.rfind("--", 0) == 0 && eq != std::string::npos;
            if (inline_value) {
                value = arg.substr(eq + 1);
                arg = arg.substr(0, eq);
            }
            Flag* f = find(arg);
            if (!f) usage_error(program_, "unknown argument '" + arg + "'");
            if (f->takes_value && !inline_value) {
                if (i + 1 >= argc) usage_error(program_, arg + " needs a value");
                value = argv[++i];
            } else if (!f->takes_value && inline_value) {
                usage_error(program_, arg + " takes no value");
            }
            f->set(value);
            given_.insert(arg);
        }
    }

    // What --help shows as the default of `name`, e.g. "quick 600, paper 5000".
    void set_default_text(const std::string& name, const std::string& text) {
        if (Flag* f = find(name)) f->default_text = text;
    }

    bool given(const std::string& name) const { return given_.count(name) != 0; }
    const std::string& program() const { return program_; }
    [[noreturn]] void fail(const std::string& name, const std::string& message) const {
        usage_error(program_, name + ": " + message);
    }

    void print_help() const {
        std::printf("%s: %s\n\nusage: %s [flags]\n\n", program_.c_str(), summary_.c_str(), program_.c_str());
        for (const Flag& f : flags_) {
            std::string left = "  " + f.name + (f.takes_value ? " " + f.metavar : "");
            if (left.size() < 24) left.resize(24, ' ');
            else left += "\n" + std::string(24, ' ');
            const bool says_default = f.help.find("default") != std::string::npos;  // the help explains it
            std::printf("%s%s%s\n", left.c_str(), f.help.c_str(),
                        f.default_text.empty() || says_default ? "" : (" (default " + f.default_text + ")").c_str());
        }
        std::printf("  --help                this list\n");
    }

private:
    struct Flag {
        std::string name, metavar, help, default_text;
        std::function<void(const std::string&)> set;
        bool takes_value = true;
    };

    void add_value(const std::string& name, const std::string& metavar, const std::string& help,
                   const std::string& default_text, std::function<void(const std::string&)> set) {
        flags_.push_back({name, metavar, help, default_text, std::move(set), true});
    }
    Flag* find(const std::string& name) {
        for (Flag& f : flags_)
            if (f.name == name) return &f;
        return nullptr;
    }
    long to_long(const std::string& name, const std::string& s) const {
        char* end = nullptr;
        errno = 0;
        const long v = std::strtol(s.c_str(), &end, 10);
        if (s.empty() || *end != '\0' || errno != 0) fail(name, "expected an integer, got '" + s + "'");
        return v;
    }
    double to_double(const std::string& name, const std::string& s) const {
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0' || errno != 0) fail(name, "expected a number, got '" + s + "'");
        return v;
    }
    static std::string format_double(double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", v);
        return buf;
    }

    std::string program_, summary_;
    std::vector<Flag> flags_;
    std::set<std::string> given_;
};

// ---------------------------------------------------------------------------
// Progress: "[=====>    ] 120/1000  12.0%  3.1 it/s  ETA 4m44s  loss 1.93" on stderr.
// On a terminal it redraws one line with \r (at most 10 times a second); otherwise
// (a log file, a pipe, ctest) it prints a plain line every `log_every` seconds.
// Training allocates the same large buffers at every step. glibc hands blocks above
// 32 MiB back to the kernel when they are freed, so every step faults in fresh zeroed
// pages again, mostly on the main thread while the others wait. This serves every
// block from the heap and keeps freed memory for the next step.
inline void keep_freed_memory() {
#if defined(__GLIBC__)
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
#endif
}

class Progress {
public:
    explicit Progress(long total, std::string unit = "it", double log_every = 5.0)
        : total_(std::max(total, 1L)), unit_(std::move(unit)), log_every_(log_every), tty_(isatty(STDERR_FILENO) != 0) {}

    // Call after finishing item `done` (1-based); `note` is appended (e.g. the loss).
    void update(long done, const std::string& note = "") {
        if (silent_) return;
        const double now = seconds_since(start_);
        if (done < total_ && now - last_draw_ < (tty_ ? 0.1 : log_every_)) return;
        last_draw_ = now;
        const double rate = static_cast<double>(done - first_) / std::max(now, 1e-9);
        const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
        char line[256];
        const int width = 24, filled = static_cast<int>(width * done / total_);
        std::string bar(static_cast<std::size_t>(width), ' ');
        for (int i = 0; i < filled; ++i) bar[static_cast<std::size_t>(i)] = '=';
        if (filled < width) bar[static_cast<std::size_t>(filled)] = '>';
        std::snprintf(line, sizeof line, "[%s] %ld/%ld %5.1f%%  %.2f %s/s  ETA %s  %s", bar.c_str(), done, total_,
                      100.0 * static_cast<double>(done) / static_cast<double>(total_), rate, unit_.c_str(),
                      duration(eta).c_str(), note.c_str());
        if (tty_) {
            std::fprintf(stderr, "\r%-100s", line);
            drawn_ = true;
        } else {
            std::fprintf(stderr, "%s\n", line);
        }
        std::fflush(stderr);
    }
    // Moves off the bar's line so that normal output can follow; call before printing.
    void clear_line() {
        if (tty_ && drawn_) std::fprintf(stderr, "\r%-100s\r", "");
        drawn_ = false;
    }
    void finish() {
        if (tty_ && drawn_) std::fprintf(stderr, "\n");
        drawn_ = false;
    }
    double elapsed() const { return seconds_since(start_); }
    // A resumed job: `done` items were finished before this process started (the rate
    // and the ETA count only this process's items).
    void resume_from(long done) { first_ = done; }
    // Draws nothing from now on (the ranks of a data-parallel run other than rank 0).
    void silence() { silent_ = true; }

    static std::string duration(double seconds) {
        char buf[32];
        const long s = static_cast<long>(seconds + 0.5);
        if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, s / 60 % 60);
        else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
        else std::snprintf(buf, sizeof buf, "%lds", s);
        return buf;
    }

private:
    long total_;
    long first_ = 0;
    std::string unit_;
    double log_every_;
    bool tty_;
    bool drawn_ = false;
    bool silent_ = false;
    Clock::time_point start_ = Clock::now();
    double last_draw_ = -1e9;
};

// ---------------------------------------------------------------------------
// Text corpora, byte-level.

// The bytes of a file; exits 2 naming `flag` if it cannot be read or is empty.
inline std::string read_file(const Flags& flags, const std::string& flag, const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) flags.fail(flag, "cannot read '" + path + "'");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.empty()) flags.fail(flag, "'" + path + "' is empty");
    return text;
}

// A corpus that is present without downloading anything: the licence texts every
// Debian system has (package base-files), about 300 kB of English. `source` says
// where it came from. If they are missing, a few kilobytes of generated sentences.
inline std::string builtin_corpus(std::string& source) {
    namespace fs = std::filesystem;
    const fs::path dir = "/usr/share/common-licenses";
    std::vector<fs::path> files;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec))
        if (!entry.is_symlink() && entry.is_regular_file()) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    std::string text;
    for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        text.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    if (text.size() > 10000) {
        source = dir.string() + "/* (" + std::to_string(files.size()) + " licence texts, " + std::to_string(text.size()) +
                 " bytes)";
        return text;
    }
    // A tiny grammar: subject verb object, with a seeded choice of words.
    const char* subjects[] = {"the king", "a fool", "my lord", "the queen", "this night", "our friend"};
    const char* verbs[] = {"loves", "fears", "sees", "calls", "forgets", "remembers"};
    const char* objects[] = {"the crown.", "his sword.", "the sea.", "a rose.", "the old song.", "her name."};
    seqnn::Rng rng(7);
    text.clear();
    for (int i = 0; i < 20000; ++i) {
        text += subjects[rng() % 6];
        text += ' ';
        text += verbs[rng() % 6];
        text += ' ';
        text += objects[rng() % 6];
        text += (i % 4 == 3) ? '\n' : ' ';
    }
    source = "generated sentences from a small grammar (" + std::to_string(text.size()) + " bytes)";
    return text;
}

// The byte vocabulary: the set of bytes present, in byte order.
struct Vocabulary {
    std::vector<unsigned char> bytes;  // id -> byte
    std::vector<int> ids;              // byte -> id, -1 if absent (256)

    static Vocabulary of_text(const std::string& text) {
        std::vector<bool> present(256, false);
        for (unsigned char c : text) present[c] = true;
        std::vector<unsigned char> bytes;
        for (int c = 0; c < 256; ++c)
            if (present[static_cast<std::size_t>(c)]) bytes.push_back(static_cast<unsigned char>(c));
        return from_bytes(std::move(bytes));
    }
    static Vocabulary from_bytes(std::vector<unsigned char> bytes) {
        Vocabulary v;
        v.bytes = std::move(bytes);
        v.ids.assign(256, -1);
        for (std::size_t i = 0; i < v.bytes.size(); ++i) v.ids[v.bytes[i]] = static_cast<int>(i);
        return v;
    }
    int size() const { return static_cast<int>(bytes.size()); }

    // Ids of `text`; bytes outside the vocabulary map to id 0.
    std::vector<int> encode(const std::string& text) const {
        std::vector<int> out;
        out.reserve(text.size());
        for (unsigned char c : text) out.push_back(std::max(ids[c], 0));
        return out;
    }
    std::string decode(const std::vector<int>& tokens) const {
        std::string out;
        for (int t : tokens) out += static_cast<char>(bytes[static_cast<std::size_t>(t)]);
        return out;
    }
};

// B windows of T + 1 tokens starting at `starts`: inputs (B, T) and next-token targets (B*T).
inline void make_windows(const std::vector<int>& tokens, const std::vector<std::size_t>& starts, seqnn::Index T,
                         seqnn::TokenBatch& inputs, std::vector<int>& targets) {
    const auto B = static_cast<seqnn::Index>(starts.size());
    std::vector<int> x(static_cast<std::size_t>(B * T));
    targets.resize(static_cast<std::size_t>(B * T));
    for (seqnn::Index b = 0; b < B; ++b)
        for (seqnn::Index t = 0; t < T; ++t) {
            const std::size_t i = starts[static_cast<std::size_t>(b)] + static_cast<std::size_t>(t);
            x[static_cast<std::size_t>(b * T + t)] = tokens[i];
            targets[static_cast<std::size_t>(b * T + t)] = tokens[i + 1];
        }
    inputs = seqnn::TokenBatch(std::move(x), B, T);
}

// B random window starts in `tokens` for windows of T + 1 tokens (as nanoGPT's get_batch).
inline std::vector<std::size_t> random_starts(std::size_t num_tokens, seqnn::Index B, seqnn::Index T, seqnn::Rng& rng) {
    std::uniform_int_distribution<std::size_t> pick(0, num_tokens - static_cast<std::size_t>(T) - 1);
    std::vector<std::size_t> starts(static_cast<std::size_t>(B));
    for (auto& s : starts) s = pick(rng);
    return starts;
}

}  // namespace examples
