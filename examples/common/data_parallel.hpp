// Data-parallel training for the examples. Built with SEQNN_USE_MPI=ON (which defines
// SEQNN_EXAMPLES_MPI), a program started by `mpirun -np N` runs as N ranks: each takes a
// shard of every global batch and seqnn::distributed::DataParallel sums the shards'
// gradients, so every rank takes the same step; rank 0 alone prints and writes files.
// Built without MPI, the same calls train one process on the whole batch, exactly as a
// loop without them would. Example code, not part of the library.
//
//   return examples::run_ranks("char_lm", argc, argv, [&] { ...; return 0; });
//   auto ranks = examples::make_ranks(params, model.dropouts(), flags);
//   for (Index s = ranks->first_local_shard(); s < ranks->end_local_shard(); ++s) {
//       ranks->begin_shard(s);                      // zeroes the gradients
//       rows = ranks->shard_rows(B, s); forward and loss on them
//       examples::backward_shard(*ranks, s, weight, flags.overlap == "on",   // weight: rows / B
//                                [&](const seqnn::GradientReadyHook& ready) { model.backward(..., ready); });
//   }
//   // every rank: the global batch's gradient (backward_shard reduced after the last shard)
#pragma once

#include "cli.hpp"

#include <seqnn/core/parameter.hpp>
#include <seqnn/io/safetensors.hpp>
#include <seqnn/train/checkpoint.hpp>

#ifdef SEQNN_EXAMPLES_MPI
#include <seqnn/distributed/data_parallel.hpp>
#endif

#if defined(__linux__)
#include <sched.h>
#endif

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace examples {

inline bool built_with_mpi() {
#ifdef SEQNN_EXAMPLES_MPI
    return true;
#else
    return false;
#endif
}

// The flags of a data-parallel run (MPI builds only).
struct DataParallelFlags {
    long shards = 0;            // shards of each global batch; 0: one per rank
    std::string reduce = "sum"; // sum | ordered
    std::string overlap = "on"; // on: reduce during the last shard's backward; off: after it
    long bucket_kb = 4096;      // gradient KiB per MPI_Iallreduce (Sum)
};

inline void add_data_parallel_flags(Flags& flags, DataParallelFlags& o) {
#ifdef SEQNN_EXAMPLES_MPI
    flags.add("--shards", o.shards,
              "shards of each batch, split across the mpirun ranks (default: one per rank); a fixed count "
              "with --reduce ordered gives the same bits on any rank count");
    flags.add("--reduce", o.reduce,
              "how ranks sum gradients: sum (MPI_Allreduce, default) or ordered (every shard gathered and "
              "added in shard order)",
              "NAME");
    flags.add("--overlap", o.overlap,
              "on (default): start reducing each layer's gradients as soon as backward has finished them, "
              "while it computes the earlier layers' (the last shard of each rank); off: reduce after backward",
              "on|off");
    flags.add("--bucket-kb", o.bucket_kb,
              "gradient KiB per MPI_Iallreduce with --reduce sum (a bucket starts once backward has finished all "
              "its parameters)");
#else
    (void)flags;
    (void)o;
#endif
}

inline void check_data_parallel_flags(const Flags& flags, const DataParallelFlags& o, long batch) {
    if (o.reduce != "sum" && o.reduce != "ordered") flags.fail("--reduce", "expected sum or ordered, got '" + o.reduce + "'");
    if (o.overlap != "on" && o.overlap != "off") flags.fail("--overlap", "expected on or off, got '" + o.overlap + "'");
    if (o.shards < 0) flags.fail("--shards", "must be >= 0 (0: one per rank)");
    if (o.bucket_kb < 1) flags.fail("--bucket-kb", "must be at least 1");
    if (o.shards > batch) flags.fail("--shards", std::to_string(o.shards) + " shards do not fit a batch of " + std::to_string(batch));
}

// Runs `body` as this process's part of the job and returns its exit status. With MPI:
// between MPI_Init and MPI_Finalize, with the standard output of every rank but 0
// discarded, and an exception on any rank ends all of them with its message (rather
// than leaving the others waiting for it). Without MPI: body().
template <typename Body>
int run_ranks(const std::string& program, int& argc, char**& argv, Body body) {
#ifdef SEQNN_EXAMPLES_MPI
    seqnn::distributed::MpiEnvironment mpi(argc, argv);
    if (mpi.rank() != 0 && !std::freopen("/dev/null", "w", stdout))
        seqnn::distributed::abort_all(program, "cannot discard the standard output");
    try {
        return body();
    } catch (const std::exception& e) {
        seqnn::distributed::abort_all(program, e.what());
    }
#else
    (void)program;
    (void)argc;
    (void)argv;
    return body();
#endif
}

// CPUs this process may run on (0 if unknown).
inline int usable_cpus() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
#endif
    return 0;
}

#ifdef SEQNN_EXAMPLES_MPI

template <typename Scalar>
using Ranks = seqnn::distributed::DataParallel<Scalar>;

// The ranks of this job, with every rank starting from rank 0's parameters.
template <typename Scalar>
std::unique_ptr<Ranks<Scalar>> make_ranks(seqnn::ParameterList<Scalar> params,
                                          std::vector<seqnn::Dropout<Scalar>*> dropouts, const DataParallelFlags& flags) {
    namespace dist = seqnn::distributed;
    auto ranks = std::make_unique<Ranks<Scalar>>(
        std::move(params),
        dist::DataParallelOptions{.reduction = flags.reduce == "ordered" ? dist::Reduction::Ordered : dist::Reduction::Sum,
                                  .shards = static_cast<seqnn::Index>(flags.shards),
                                  .bucket_bytes = static_cast<std::size_t>(flags.bucket_kb) << 10},
        std::move(dropouts));
    ranks->broadcast_parameters();
    return ranks;
}

#else

// One process without MPI: the whole batch is its one shard, and there is nothing to
// reduce. The calls of seqnn::distributed::DataParallel that the examples make.
template <typename Scalar>
class OneProcess {
public:
    struct Range {
        seqnn::Index begin = 0, end = 0;
        seqnn::Index size() const { return end - begin; }
    };
    explicit OneProcess(seqnn::ParameterList<Scalar> params) : params_(std::move(params)) {}

    int rank() const { return 0; }
    int size() const { return 1; }
    bool is_root() const { return true; }
    seqnn::Index shards() const { return 1; }
    seqnn::Index first_local_shard() const { return 0; }
    seqnn::Index end_local_shard() const { return 1; }
    Range shard_rows(seqnn::Index batch, seqnn::Index) const { return {0, batch}; }
    void begin_shard(seqnn::Index) { seqnn::zero_grad(params_); }
    void add_shard(double) {}
    void reduce() {}
    double sum(std::span<const double> values) const {
        double s = 0;
        for (double v : values) s += v;
        return s;
    }
    bool any(bool flag) const { return flag; }
    void check_in_sync(const std::string& = "") const {}
    std::string broadcast_string(const std::string& text) const { return text; }
    void save_checkpoint(const std::string& path, const seqnn::TrainingState<Scalar>& state,
                         std::map<std::string, std::string> metadata) const {
        seqnn::save_checkpoint(path, state, std::move(metadata));
    }
    seqnn::io::TensorMap load_file(const std::string& path) const { return seqnn::io::load_safetensors(path); }

private:
    seqnn::ParameterList<Scalar> params_;
};

template <typename Scalar>
using Ranks = OneProcess<Scalar>;

template <typename Scalar>
std::unique_ptr<Ranks<Scalar>> make_ranks(seqnn::ParameterList<Scalar> params, std::vector<seqnn::Dropout<Scalar>*>,
                                          const DataParallelFlags&) {
    return std::make_unique<Ranks<Scalar>>(std::move(params));
}

#endif

// The backward of local shard s, whose share of the global loss is `weight` (its rows / the
// global batch), and its gradients added to the step's: `backward(ready)` runs the model's
// backward with `ready` as its seqnn::GradientReadyHook. Once the rank's last shard is
// through, every rank holds the whole batch's gradient. With `overlap` (MPI builds) the
// last shard's reduction runs during its backward: begin_reduction, parameters_ready from
// the hook as each layer's gradients are final, finish_reduction; the same gradients as
// reducing after backward (docs/distributed.md). Otherwise, and for the earlier shards,
// the hook is empty: add_shard, then reduce after the last shard. Without MPI the one
// shard's plain backward, nothing more.
template <typename Scalar, typename Backward>
void backward_shard(Ranks<Scalar>& ranks, seqnn::Index s, double weight, bool overlap, Backward&& backward) {
    const bool last = s + 1 == ranks.end_local_shard();
#ifdef SEQNN_EXAMPLES_MPI
    if (overlap && last) {
        ranks.begin_reduction(weight);
        backward(seqnn::GradientReadyHook(
            [&ranks](std::size_t first, std::size_t end) { ranks.parameters_ready(first, end); }));
        ranks.finish_reduction();
        return;
    }
#else
    (void)overlap;
#endif
    backward(seqnn::GradientReadyHook{});
    ranks.add_shard(weight);
    if (last) ranks.reduce();
}

// Runs `write` on rank 0 only; every rank throws if it failed there.
template <typename Scalar>
void on_root(const Ranks<Scalar>& ranks, const std::string& what, const std::function<void()>& write) {
    std::string error;
    if (ranks.rank() == 0) {
        try {
            write();
        } catch (const std::exception& e) {
            error = e.what();
        }
    }
    error = ranks.broadcast_string(error);
    if (!error.empty()) throw std::runtime_error(what + ": " + error);
}

// "ranks: 2 x 1 thread, 2 shards a batch, MPI_Allreduce in 1 bucket, overlapping backward"
// (MPI builds; empty otherwise), with a warning when rank 0 may use fewer CPUs than it runs
// threads.
template <typename Scalar>
std::string describe_ranks(const Ranks<Scalar>& ranks, int threads, bool overlap = false) {
#ifdef SEQNN_EXAMPLES_MPI
    const bool ordered = ranks.reduction() == seqnn::distributed::Reduction::Ordered;
    std::string text = "ranks: " + std::to_string(ranks.size()) + " x " + std::to_string(threads) + " thread" +
                       (threads == 1 ? "" : "s") + ", " + std::to_string(ranks.shards()) + " shard" +
                       (ranks.shards() == 1 ? "" : "s") + " a batch, " +
                       (ordered ? "ordered reduction (gathered, summed in shard order)"
                                : "MPI_Allreduce in " + std::to_string(ranks.bucket_count()) + " bucket" +
                                      (ranks.bucket_count() == 1 ? "" : "s") +
                                      (overlap ? ", overlapping backward" : ", after backward"));
    const int cpus = usable_cpus();
    if (cpus > 0 && cpus < threads)
        text += "\nwarning: rank 0 may run on " + std::to_string(cpus) + " CPU(s) but runs " + std::to_string(threads) +
                " threads; give each rank its cores (mpirun --map-by slot:PE=" + std::to_string(threads) +
                ") or unbind it (--bind-to none)";
    return text;
#else
    (void)ranks;
    (void)threads;
    (void)overlap;
    return "";
#endif
}

// "communication (rank 0): 1.20 s of 10.00 s in MPI (12.0%), ..." (MPI builds; empty otherwise).
template <typename Scalar>
std::string communication_summary(const Ranks<Scalar>& ranks, double seconds) {
#ifdef SEQNN_EXAMPLES_MPI
    const auto& s = ranks.stats();
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "communication (rank 0): %.2f s of %.2f s in MPI (%.1f%%), %.2f s copying gradients, %.2f MB a step",
                  s.mpi_seconds, seconds, 100.0 * s.mpi_seconds / std::max(seconds, 1e-9), s.copy_seconds,
                  s.reductions > 0 ? s.bytes / static_cast<double>(s.reductions) / 1e6 : 0.0);
    return buf;
#else
    (void)ranks;
    (void)seconds;
    return "";
#endif
}

}  // namespace examples
