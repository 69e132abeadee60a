// Data-parallel training over MPI: every rank holds the whole model, works on its own
// shard of each global batch, and the ranks average their gradients before every rank
// takes the same optimizer step. Optional: include this header only in programs built
// against MPI (CMake option SEQNN_USE_MPI, target seqnn::distributed); nothing else in
// seqnn needs it.
//
// A training step, for a global batch of B sequences split into `shards()` contiguous
// shards (by default one per rank; shard_rows says which sequences each holds):
//
//   seqnn::distributed::MpiEnvironment mpi(argc, argv); // MPI_Init / MPI_Finalize
//   seqnn::distributed::DataParallel<float> dp(model.parameters(), {}, model.dropouts());
//   dp.broadcast_parameters();                          // every rank starts from rank 0's weights
//   for each step:
//       draw the whole global batch from the data stream (the same on every rank)
//       for (Index s = dp.first_local_shard(); s < dp.end_local_shard(); ++s) {
//           dp.begin_shard(s);                          // zeroes .grad, sets the dropout counters
//           forward, loss and backward on the rows of shard s
//           dp.add_shard(shard_weight);                 // rows of s / B: its share of the mean loss
//       }
//       dp.reduce();                                    // .grad = sum over shards of weight * gradient, on every rank
//       clip, schedule and optimizer step as in one process
//   dp.save_checkpoint(path, training_state);           // rank 0 writes; every rank learns if it failed
//
// Two reductions (DataParallelOptions::reduction):
//   Sum      MPI_Iallreduce on one flat buffer, in buckets of about bucket_bytes that start
//            as soon as their parameters are packed (and, with begin_reduction /
//            parameters_ready / finish_reduction, while backward is still computing the
//            gradients of earlier layers). MPI picks the summation order, so a different
//            rank count changes the last bits of the gradients.
//   Ordered  every rank gathers every shard's weighted gradient (MPI_Allgatherv, in rank
//            order, which is shard order) and sums them in shard order. With a fixed shard
//            count the result is bitwise the same for any number of ranks up to it, because
//            each shard is computed the same way wherever it runs (on the same number of
//            threads) and the sum's order is fixed. It moves shards() times the gradient to every rank: for tests and for
//            checking reproducibility, not for speed.
//
// Overlapping the reduction with the backward of this rank's last shard (either reduction;
// a model's backward reports its finished gradients through a seqnn::GradientReadyHook):
//
//       for each local shard s: dp.begin_shard(s); forward and loss, then
//           if s is the last:  dp.begin_reduction(weight);
//                              model.backward(..., [&](std::size_t first, std::size_t end) {
//                                  dp.parameters_ready(first, end); });
//                              dp.finish_reduction();   // instead of add_shard + reduce
//           else:              model.backward(...); dp.add_shard(weight);
//
// gives the same gradients as add_shard and reduce after the last backward: bitwise with
// Ordered, and with Sum the same buckets are reduced from the same bits (MPI's sum order
// is its own either way). Only the last shard's backward can overlap: the earlier ones'
// gradients are added into the flat buffer, which holds the step's sum until then.
//
// Dropout: begin_shard(s) sets every Dropout's call counter to (its value at the start of
// the step) + s, and reduce() leaves it at that value + shards(), so a shard's masks
// depend on the step and the shard, not on the rank that computes it, and the counters
// stay equal on every rank (a checkpoint from rank 0 holds everyone's). With one shard
// this is exactly what one process does (one call per forward).
//
// Errors (a failed MPI call, ranks out of step, a failed checkpoint write) throw
// distributed_error. A rank that throws should call abort_all(), which prints the
// message with the rank and ends every rank (MPI_Abort); otherwise the others wait in
// their next collective for ever.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/parameter.hpp"
#include "seqnn/io/safetensors.hpp"
#include "seqnn/layers/dropout.hpp"
#include "seqnn/train/checkpoint.hpp"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace seqnn::distributed {

// A failed MPI call, ranks that disagree, or a checkpoint that could not be written.
class distributed_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

// Throws distributed_error("<where>: <MPI's message>") unless `code` is MPI_SUCCESS.
inline void check(int code, const char* where) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(code, text, &length);
    throw distributed_error(std::string(where) + ": " + std::string(text, static_cast<std::size_t>(length)));
}

template <typename Scalar>
MPI_Datatype datatype() {
    static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>, "float or double");
    return std::is_same_v<Scalar, float> ? MPI_FLOAT : MPI_DOUBLE;
}

inline int to_int_count(std::size_t n, const char* where) {
    if (n > static_cast<std::size_t>(INT_MAX))
        throw distributed_error(std::string(where) + ": " + std::to_string(n) +
                                " elements in one message, more than MPI's int count allows");
    return static_cast<int>(n);
}

inline double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace detail

inline bool initialized() {
    int flag = 0;
    MPI_Initialized(&flag);
    int done = 0;
    MPI_Finalized(&done);
    return flag != 0 && done == 0;
}

inline int world_rank() {
    int rank = 0;
    if (initialized()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

// Prints "<program>: rank R of N: <message>" to stderr and ends every rank of the job
// with `code` (MPI_Abort). Call it where a rank cannot go on, so that no other rank waits
// for it in a collective.
[[noreturn]] inline void abort_all(const std::string& program, const std::string& message, int code = 1) {
    int size = 1;
    if (initialized()) MPI_Comm_size(MPI_COMM_WORLD, &size);
    std::fprintf(stderr, "%s: rank %d of %d: %s\n", program.c_str(), world_rank(), size, message.c_str());
    std::fflush(stderr);
    if (initialized()) MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
}

/// MPI_Init_thread on construction (MPI_THREAD_FUNNELED: OpenMP threads compute, only the
/// main thread calls MPI) and MPI_Finalize on destruction, unless MPI was already started.
class MpiEnvironment {
public:
    /// Starts MPI (MPI_Init_thread, funneled) unless it is running already.
    MpiEnvironment(int& argc, char**& argv) {
        if (initialized()) return;
        int provided = 0;
        detail::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
        owner_ = true;
    }
    MpiEnvironment(const MpiEnvironment&) = delete;
    MpiEnvironment& operator=(const MpiEnvironment&) = delete;
    ~MpiEnvironment() {
        if (owner_ && initialized()) MPI_Finalize();
    }

    /// This process's rank in MPI_COMM_WORLD.
    int rank() const { return world_rank(); }
    /// The number of ranks in MPI_COMM_WORLD.
    int size() const {
        int size = 1;
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        return size;
    }

private:
    bool owner_ = false;
};

/// [begin, end): rows, sequences or shards.
struct Range {
    /// The first index and one past the last.
    ///@{
    Index begin = 0, end = 0;
    ///@}
    /// end - begin.
    Index size() const { return end - begin; }
    /// The same begin and end.
    bool operator==(const Range&) const = default;
};

// Part `i` of `n` near-equal contiguous parts of [0, total): the first total % n parts
// hold one more.
inline Range split_evenly(Index total, Index n, Index i) {
    if (n < 1 || i < 0 || i >= n)
        throw std::invalid_argument("split_evenly: part " + std::to_string(i) + " of " + std::to_string(n));
    const Index base = total / n, extra = total % n;
    const Index begin = i * base + std::min(i, extra);
    return {begin, begin + base + (i < extra ? 1 : 0)};
}

enum class Reduction {
    Sum,      // MPI_Iallreduce in buckets: fast; the summation order is MPI's
    Ordered,  // gather every shard, sum in shard order: bitwise the same on any rank count
};

/// How DataParallel reduces gradients and shards the batch.
struct DataParallelOptions {
    MPI_Comm comm = MPI_COMM_WORLD;     ///< duplicated, so seqnn's messages never meet the caller's
    /// How gradients are summed across ranks.
    Reduction reduction = Reduction::Sum;
    Index shards = 0;                   ///< shards of each global batch; 0: one per rank
    std::size_t bucket_bytes = 4 << 20; ///< Sum: gradient bytes per MPI_Iallreduce (at least one parameter)
};

/// Time spent reducing, since construction or reset_stats().
struct ReductionStats {
    double mpi_seconds = 0;   ///< inside MPI calls: starting, testing and waiting for reductions
    double copy_seconds = 0;  ///< packing gradients into the flat buffer and back
    long reductions = 0;      ///< reduce() / finish_reduction() calls
    double bytes = 0;         ///< gradient bytes each rank contributed
};

/// Data-parallel training over MPI: same parameters on every rank, gradients summed across ranks.
template <typename Scalar>
class DataParallel {
public:
    /// Trains `params` (and steps `dropouts`' masks) across the ranks of options.comm; MPI must be running.
    DataParallel(ParameterList<Scalar> params, DataParallelOptions options = {},
                 std::vector<Dropout<Scalar>*> dropouts = {})
        : params_(std::move(params)), options_(options), dropouts_(std::move(dropouts)) {
        if (!initialized()) throw distributed_error("DataParallel: MPI is not initialised (make an MpiEnvironment first)");
        detail::check(MPI_Comm_dup(options_.comm, &comm_), "MPI_Comm_dup");
        MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
        MPI_Comm_rank(comm_, &rank_);
        MPI_Comm_size(comm_, &size_);
        shards_ = options_.shards > 0 ? options_.shards : size_;
        if (shards_ < size_)
            throw distributed_error("DataParallel: " + std::to_string(shards_) + " shards for " + std::to_string(size_) +
                                    " ranks: every rank needs at least one shard");
        local_ = split_evenly(shards_, size_, rank_);
        std::size_t offset = 0;
        for (const auto& p : params_) {
            offsets_.push_back(offset);
            offset += static_cast<std::size_t>(p.param->size());
        }
        total_ = offset;
        make_buckets();
        base_calls_.resize(dropouts_.size());
    }
    DataParallel(const DataParallel&) = delete;
    DataParallel& operator=(const DataParallel&) = delete;
    ~DataParallel() {
        int done = 0;
        MPI_Finalized(&done);
        if (!done && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    }

    /// This process's rank in the duplicated communicator.
    int rank() const { return rank_; }
    /// The number of ranks.
    int size() const { return size_; }
    /// Whether this is rank 0.
    bool is_root() const { return rank_ == 0; }
    /// The communicator seqnn's messages use (a duplicate of options.comm).
    MPI_Comm comm() const { return comm_; }
    /// How gradients are summed.
    Reduction reduction() const { return options_.reduction; }
    /// Shards of each global batch.
    Index shards() const { return shards_; }
    /// This rank's shards, [first_local_shard(), end_local_shard()).
    Index first_local_shard() const { return local_.begin; }
    /// One past this rank's last shard.
    Index end_local_shard() const { return local_.end; }
    /// The rows (sequences) of shard s in a global batch of `batch`; the shards split it evenly.
    Range shard_rows(Index batch, Index s) const {
        if (batch < shards_)
            throw distributed_error("DataParallel: a global batch of " + std::to_string(batch) + " cannot fill " +
                                    std::to_string(shards_) + " shards");
        return split_evenly(batch, shards_, s);
    }
    /// The rows of all of this rank's shards.
    Range local_rows(Index batch) const {
        return {shard_rows(batch, local_.begin).begin, shard_rows(batch, local_.end - 1).end};
    }
    /// Gradient buckets of the Sum reduction.
    std::size_t bucket_count() const { return buckets_.size(); }
    /// Time spent reducing since construction or reset_stats().
    const ReductionStats& stats() const { return stats_; }
    /// Starts the reduction statistics again.
    void reset_stats() { stats_ = {}; }

    // --- parameters

    /// Every rank gets rank `root`'s parameter values, then checks that all agree.
    void broadcast_parameters(int root = 0) {
        for (const auto& p : params_)
            detail::check(MPI_Bcast(p.param->value.data(), detail::to_int_count(static_cast<std::size_t>(p.param->size()), "MPI_Bcast"),
                                    detail::datatype<Scalar>(), root, comm_),
                          "DataParallel.broadcast_parameters: MPI_Bcast");
        check_in_sync("after broadcast_parameters");
    }

    /// A 64-bit hash of every parameter's values, bit for bit, in order.
    std::uint64_t checksum() const {
        std::uint64_t h = 0xcbf29ce484222325ULL;
        const auto mix = [&h](std::uint64_t word) {
            h = dropout_detail::mix64(h ^ word) * 0x100000001b3ULL;
        };
        for (const auto& p : params_) {
            mix(static_cast<std::uint64_t>(p.param->size()));
            const auto* bytes = reinterpret_cast<const unsigned char*>(p.param->value.data());
            const std::size_t n = static_cast<std::size_t>(p.param->size()) * sizeof(Scalar);
            std::size_t i = 0;
            for (; i + 8 <= n; i += 8) {
                std::uint64_t word;
                std::memcpy(&word, bytes + i, 8);
                mix(word);
            }
            for (; i < n; ++i) mix(bytes[i]);
        }
        return h;
    }

    /// Throws distributed_error on every rank, naming the ranks whose parameters differ
    /// from rank 0's, unless all ranks hold bitwise the same parameters.
    void check_in_sync(const std::string& when = "") const {
        const std::uint64_t mine = checksum();
        std::vector<std::uint64_t> all(static_cast<std::size_t>(size_));
        detail::check(MPI_Allgather(&mine, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm_),
                      "DataParallel.check_in_sync: MPI_Allgather");
        std::string differ;
        for (int r = 1; r < size_; ++r)
            if (all[static_cast<std::size_t>(r)] != all[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
        if (!differ.empty())
            throw distributed_error("DataParallel: the parameters of rank(s) " + differ + " differ from rank 0's" +
                                    (when.empty() ? "" : " " + when) + " (checksums disagree)");
    }

    // --- gradients, shard by shard

    /// Starts shard s of this step: zeroes the gradients and sets the dropout counters.
    void begin_shard(Index s) {
        if (s < local_.begin || s >= local_.end)
            throw distributed_error("DataParallel.begin_shard: shard " + std::to_string(s) + " is not one of rank " +
                                    std::to_string(rank_) + "'s [" + std::to_string(local_.begin) + ", " +
                                    std::to_string(local_.end) + ")");
        if (in_flight_) throw distributed_error("DataParallel.begin_shard: a reduction is in progress");
        if (!step_open_) {
            open_step();
            shard_step_ = true;
            for (std::size_t i = 0; i < dropouts_.size(); ++i) base_calls_[i] = dropouts_[i]->calls();
        }
        if (deferred_) pack_deferred();
        if (s != local_.begin + shards_added_)
            throw distributed_error("DataParallel.begin_shard: shard " + std::to_string(s) + " out of order (expected " +
                                    std::to_string(local_.begin + shards_added_) + ")");
        zero_grad(params_);
        for (std::size_t i = 0; i < dropouts_.size(); ++i)
            dropouts_[i]->set_calls(base_calls_[i] + static_cast<std::uint64_t>(s));
        shard_open_ = true;
    }

    /// Takes the gradients in .grad as this shard's, times `weight` (its share of the global
    /// loss, e.g. its rows / the global batch).
    void add_shard(double weight) {
        if (!step_open_) throw distributed_error("DataParallel.add_shard: no begin_shard before it");
        if (shards_added_ >= local_.size())
            throw distributed_error("DataParallel.add_shard: rank " + std::to_string(rank_) + " has only " +
                                    std::to_string(local_.size()) + " shard(s)");
        if (in_flight_)
            throw distributed_error(
                "DataParallel.add_shard: a reduction is in progress (finish_reduction adds the last shard)");
        ++shards_added_;
        shard_open_ = false;
        if (options_.reduction == Reduction::Ordered) {
            const double t0 = detail::now();
            slots_.resize(static_cast<std::size_t>(local_.size()) * total_);
            pack(slots_.data() + static_cast<std::size_t>(shards_added_ - 1) * total_, weight, /*add=*/false);
            stats_.copy_seconds += detail::now() - t0;
        } else if (shards_added_ == 1) {
            deferred_ = true;  // packed by reduce() bucket by bucket, or by the next begin_shard
            deferred_weight_ = weight;
        } else {
            const double t0 = detail::now();
            pack(flat_.data(), weight, /*add=*/true);
            stats_.copy_seconds += detail::now() - t0;
        }
    }

    /// Writes the sum over all shards of weight * gradient into every parameter's .grad,
    /// on every rank, and ends the step.
    void reduce() {
        if (!step_open_ || shards_added_ != local_.size())
            throw distributed_error("DataParallel.reduce: rank " + std::to_string(rank_) + " added " +
                                    std::to_string(shards_added_) + " of its " + std::to_string(local_.size()) +
                                    " shard(s)");
        if (options_.reduction == Reduction::Ordered) {
            reduce_ordered();
        } else if (deferred_) {
            start_reduction(deferred_weight_, /*add=*/false);
            finish_reduction();
            return;  // finish_reduction ended the step
        } else {
            start_all_buckets();
            wait_and_unpack();
        }
        end_step();
    }

    /// One shard per rank, as above in one call: .grad = sum over ranks of weight * .grad.
    void reduce_gradients(double weight) {
        if (local_.size() != 1) throw distributed_error("DataParallel.reduce_gradients: this rank has several shards");
        if (options_.reduction == Reduction::Ordered) {
            if (!step_open_) open_step();
            add_shard(weight);
            reduce();
            return;
        }
        begin_reduction(weight);
        parameters_ready(0, params_.size());
        finish_reduction();
    }

    // --- overlapping the reduction with backward
    //
    //   dp.begin_shard(last local shard);      // optional with one shard per rank
    //   forward and loss
    //   dp.begin_reduction(weight);            // instead of add_shard(weight) after backward
    //   backward, which after each layer calls (a seqnn::GradientReadyHook does)
    //       dp.parameters_ready(first, end);   // [first, end): its parameters' indices in the list
    //   dp.finish_reduction();                 // instead of reduce()
    //
    // The result is that of add_shard(weight) and reduce() after backward. With Sum a
    // bucket starts its MPI_Iallreduce once all its parameters are ready (the buckets hold
    // the parameters from the last one back, in the order backward finishes them), and
    // every call lets MPI progress the reductions already started; the gradients of the
    // rank's earlier shards are already summed in the buffer. With Ordered the parameters
    // are packed into the shard's slot as they are ready and gathered in finish_reduction.

    /// Starts the reduction of this rank's last shard, whose backward is about to run, with
    /// that shard's `weight` (its share of the global loss): after begin_shard of the last
    /// local shard, or with one shard per rank also without begin_shard.
    void begin_reduction(double weight) {
        if (in_flight_) throw distributed_error("DataParallel.begin_reduction: a reduction is already in progress");
        if (!step_open_) {
            if (local_.size() != 1)
                throw distributed_error("DataParallel.begin_reduction: rank " + std::to_string(rank_) + " has " +
                                        std::to_string(local_.size()) +
                                        " shards: call begin_shard for each, and begin_reduction in the last");
            open_step();
        } else if (!shard_open_ || shards_added_ + 1 != local_.size()) {
            throw distributed_error("DataParallel.begin_reduction: shard " +
                                    std::to_string(local_.begin + shards_added_) + " is not rank " +
                                    std::to_string(rank_) + "'s last begun shard (it has [" +
                                    std::to_string(local_.begin) + ", " + std::to_string(local_.end) + "))");
        }
        // Sum: the earlier shards' gradients are summed in the flat buffer; Ordered: a slot of its own.
        start_reduction(weight, /*add=*/options_.reduction == Reduction::Sum && shards_added_ > 0);
    }

    /// The gradients of parameters [first, end) are final.
    void parameters_ready(std::size_t first, std::size_t end) {
        if (!in_flight_) throw distributed_error("DataParallel.parameters_ready: no begin_reduction before it");
        if (first > end || end > params_.size())
            throw distributed_error("DataParallel.parameters_ready: [" + std::to_string(first) + ", " +
                                    std::to_string(end) + ") is outside the " + std::to_string(params_.size()) +
                                    " parameters");
        const bool ordered = options_.reduction == Reduction::Ordered;
        Scalar* dst = ordered ? slots_.data() + static_cast<std::size_t>(shards_added_) * total_ : flat_.data();
        for (std::size_t i = end; i-- > first;) {  // last first: buckets fill from the end
            if (ready_[i]) continue;
            ready_[i] = true;
            const double t0 = detail::now();
            pack_one(i, dst, weight_, add_);
            stats_.copy_seconds += detail::now() - t0;
            if (ordered) continue;
            Bucket& b = buckets_[bucket_of_[i]];
            if (--b.pending == 0) start_bucket(b);
        }
        if (!ordered) progress();
    }

    /// Marks what is left ready, waits for every bucket (Sum) or gathers every shard
    /// (Ordered), writes the sums into .grad and ends the step.
    void finish_reduction() {
        if (!in_flight_) throw distributed_error("DataParallel.finish_reduction: no begin_reduction before it");
        parameters_ready(0, params_.size());
        if (options_.reduction == Reduction::Ordered) {
            in_flight_ = false;
            ++shards_added_;
            reduce_ordered();
        } else {
            wait_and_unpack();
        }
        end_step();
    }

    // --- scalars and checkpoints

    /// The sum of every rank's `values`, added in rank order (the same bits on every rank,
    /// and for Ordered shard losses the same on any rank count).
    double sum(std::span<const double> values) const {
        const int mine = static_cast<int>(values.size());
        std::vector<int> counts(static_cast<std::size_t>(size_)), displs(static_cast<std::size_t>(size_));
        detail::check(MPI_Allgather(&mine, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_), "DataParallel.sum: MPI_Allgather");
        int total = 0;
        for (int r = 0; r < size_; ++r) {
            displs[static_cast<std::size_t>(r)] = total;
            total += counts[static_cast<std::size_t>(r)];
        }
        std::vector<double> all(static_cast<std::size_t>(total));
        detail::check(MPI_Allgatherv(values.data(), mine, MPI_DOUBLE, all.data(), counts.data(), displs.data(),
                                     MPI_DOUBLE, comm_),
                      "DataParallel.sum: MPI_Allgatherv");
        double s = 0;
        for (double v : all) s += v;
        return s;
    }
    /// The sum of one value over all ranks, in rank order.
    double sum(double value) const { return sum(std::span<const double>(&value, 1)); }

    /// True on every rank if `flag` is true on any.
    bool any(bool flag) const {
        int mine = flag ? 1 : 0, out = 0;
        detail::check(MPI_Allreduce(&mine, &out, 1, MPI_INT, MPI_LOR, comm_), "DataParallel.any: MPI_Allreduce");
        return out != 0;
    }

    /// Rank 0 writes the checkpoint (seqnn::save_checkpoint: a temporary file, then a
    /// rename); every rank returns once it is written, or throws distributed_error with
    /// rank 0's message if it was not. Call it on every rank.
    void save_checkpoint(const std::filesystem::path& path, const TrainingState<Scalar>& state,
                         std::map<std::string, std::string> metadata = {}) const {
        std::string error;
        if (rank_ == 0) {
            try {
                seqnn::save_checkpoint(path, state, std::move(metadata));
            } catch (const std::exception& e) {
                error = e.what();
                if (error.empty()) error = "unknown error";
            }
        }
        error = broadcast_string(error);
        if (!error.empty())
            throw distributed_error("DataParallel.save_checkpoint: rank 0 could not write " + path.string() + ": " + error);
    }

    /// The tensors of a file that rank 0 reads and sends to every rank (the other ranks
    /// need no access to it). Throws on every rank if rank 0 cannot read or parse it.
    io::TensorMap load_file(const std::filesystem::path& path) const {
        std::string bytes, error;
        if (rank_ == 0) {
            std::ifstream in(path, std::ios::binary);
            if (!in) error = "cannot open the file";
            else bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
            if (error.empty() && in.bad()) error = "cannot read the file";
        }
        error = broadcast_string(error);
        if (!error.empty()) throw distributed_error("DataParallel.load_file(" + path.string() + "): rank 0: " + error);
        bytes = broadcast_string(bytes);
        const auto* data = reinterpret_cast<const std::byte*>(bytes.data());
        return io::parse_safetensors(std::span<const std::byte>(data, bytes.size()), path.string());
    }

    /// Restores `state` on every rank from a checkpoint that rank 0 reads, written on any
    /// number of ranks; then checks that all ranks agree.
    void load_checkpoint(const std::filesystem::path& path, TrainingState<Scalar>& state) const {
        restore_checkpoint(load_file(path), state, path.string());
        check_in_sync("after load_checkpoint(" + path.string() + ")");
    }

    /// `text` from rank 0, on every rank.
    std::string broadcast_string(const std::string& text) const {
        std::uint64_t n = text.size();
        detail::check(MPI_Bcast(&n, 1, MPI_UINT64_T, 0, comm_), "DataParallel: MPI_Bcast");
        std::string out = rank_ == 0 ? text : std::string(static_cast<std::size_t>(n), '\0');
        std::size_t at = 0;
        while (at < n) {  // in pieces that fit MPI's int count
            const int piece = static_cast<int>(std::min<std::uint64_t>(n - at, 1u << 30));
            detail::check(MPI_Bcast(out.data() + at, piece, MPI_CHAR, 0, comm_), "DataParallel: MPI_Bcast");
            at += static_cast<std::size_t>(piece);
        }
        return out;
    }

private:
    struct Bucket {
        std::size_t first = 0, end = 0;  // parameters [first, end)
        std::size_t offset = 0, count = 0;  // elements of the flat buffer
        std::size_t pending = 0;
        MPI_Request request = MPI_REQUEST_NULL;
        bool done = false;
    };

    void make_buckets() {
        flat_.assign(total_, Scalar(0));
        ready_.assign(params_.size(), false);
        bucket_of_.assign(params_.size(), 0);
        std::size_t end = params_.size();
        const std::size_t limit = std::max<std::size_t>(options_.bucket_bytes / sizeof(Scalar), 1);
        while (end > 0) {
            std::size_t first = end, count = 0;
            while (first > 0 && (count == 0 || count + static_cast<std::size_t>(params_[first - 1].param->size()) <= limit)) {
                --first;
                count += static_cast<std::size_t>(params_[first].param->size());
            }
            detail::to_int_count(count, "DataParallel: one parameter");
            for (std::size_t i = first; i < end; ++i) bucket_of_[i] = buckets_.size();
            buckets_.push_back({first, end, offsets_[first], count, 0, MPI_REQUEST_NULL, false});
            end = first;
        }
    }

    // dst (the flat layout) = or += weight * grad of parameter i.
    void pack_one(std::size_t i, Scalar* dst, double weight, bool add) const {
        const Parameter<Scalar>& p = *params_[i].param;
        using Flat = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
        using ConstFlat = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
        Flat out(dst + offsets_[i], p.size());
        const ConstFlat g(p.grad.data(), p.size());
        const Scalar w = static_cast<Scalar>(weight);
        if (add) out += w * g;
        else if (weight == 1.0) out = g;  // one rank, one shard: the gradient unchanged
        else out = w * g;
    }
    void pack(Scalar* dst, double weight, bool add) const {
        for (std::size_t i = 0; i < params_.size(); ++i) pack_one(i, dst, weight, add);
    }
    void pack_deferred() {
        const double t0 = detail::now();
        pack(flat_.data(), deferred_weight_, /*add=*/false);
        stats_.copy_seconds += detail::now() - t0;
        deferred_ = false;
    }

    void unpack(const Scalar* src, std::size_t first, std::size_t end) {
        for (std::size_t i = first; i < end; ++i) {
            Parameter<Scalar>& p = *params_[i].param;
            std::copy(src + offsets_[i], src + offsets_[i] + static_cast<std::size_t>(p.size()), p.grad.data());
        }
    }

    // The reduction of the step's last shard begins: parameters_ready packs weight * .grad
    // into the flat buffer (Sum; added to the earlier shards' sum when `add`) or into the
    // shard's slot (Ordered).
    void start_reduction(double weight, bool add) {
        deferred_ = false;
        in_flight_ = true;
        weight_ = weight;
        add_ = add;
        std::fill(ready_.begin(), ready_.end(), false);
        if (options_.reduction == Reduction::Ordered) {
            slots_.resize(static_cast<std::size_t>(local_.size()) * total_);
            return;
        }
        for (auto& b : buckets_) {
            b.pending = b.end - b.first;
            b.request = MPI_REQUEST_NULL;
            b.done = false;
        }
    }

    void start_bucket(Bucket& b) {
        const double t0 = detail::now();
        detail::check(MPI_Iallreduce(MPI_IN_PLACE, flat_.data() + b.offset, static_cast<int>(b.count),
                                     detail::datatype<Scalar>(), MPI_SUM, comm_, &b.request),
                      "DataParallel: MPI_Iallreduce");
        stats_.mpi_seconds += detail::now() - t0;
        stats_.bytes += static_cast<double>(b.count * sizeof(Scalar));
    }

    void start_all_buckets() {
        in_flight_ = true;
        for (auto& b : buckets_) {
            b.done = false;
            start_bucket(b);
        }
    }

    // Lets MPI advance the started reductions; unpacks the ones that finished.
    void progress() {
        for (auto& b : buckets_) {
            if (b.done || b.request == MPI_REQUEST_NULL) continue;
            int flag = 0;
            const double t0 = detail::now();
            detail::check(MPI_Test(&b.request, &flag, MPI_STATUS_IGNORE), "DataParallel: MPI_Test");
            stats_.mpi_seconds += detail::now() - t0;
            if (flag) finish_bucket(b);
        }
    }

    void finish_bucket(Bucket& b) {
        b.done = true;
        const double t0 = detail::now();
        unpack(flat_.data(), b.first, b.end);
        stats_.copy_seconds += detail::now() - t0;
    }

    void wait_and_unpack() {
        for (auto& b : buckets_) {
            if (b.done) continue;
            const double t0 = detail::now();
            detail::check(MPI_Wait(&b.request, MPI_STATUS_IGNORE), "DataParallel: MPI_Wait");
            stats_.mpi_seconds += detail::now() - t0;
            finish_bucket(b);
        }
        in_flight_ = false;
        ++stats_.reductions;
    }

    void reduce_ordered() {
        std::vector<int> counts(static_cast<std::size_t>(size_)), displs(static_cast<std::size_t>(size_));
        std::size_t at = 0;
        for (int r = 0; r < size_; ++r) {
            const std::size_t n = static_cast<std::size_t>(split_evenly(shards_, size_, r).size()) * total_;
            counts[static_cast<std::size_t>(r)] = detail::to_int_count(n, "DataParallel (Ordered)");
            displs[static_cast<std::size_t>(r)] = detail::to_int_count(at, "DataParallel (Ordered)");
            at += n;
        }
        gathered_.resize(at);
        double t0 = detail::now();
        detail::check(MPI_Allgatherv(slots_.data(), counts[static_cast<std::size_t>(rank_)], detail::datatype<Scalar>(),
                                     gathered_.data(), counts.data(), displs.data(), detail::datatype<Scalar>(), comm_),
                      "DataParallel: MPI_Allgatherv");
        stats_.mpi_seconds += detail::now() - t0;
        stats_.bytes += static_cast<double>(slots_.size() * sizeof(Scalar));
        t0 = detail::now();
        using Flat = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
        Flat total(flat_.data(), static_cast<Index>(total_));
        total = Flat(gathered_.data(), static_cast<Index>(total_));
        for (Index s = 1; s < shards_; ++s)
            total += Flat(gathered_.data() + static_cast<std::size_t>(s) * total_, static_cast<Index>(total_));
        unpack(flat_.data(), 0, params_.size());
        stats_.copy_seconds += detail::now() - t0;
        ++stats_.reductions;
    }

    void open_step() {
        step_open_ = true;
        shard_step_ = false;
        shard_open_ = false;
        shards_added_ = 0;
    }
    // Steps that went through begin_shard leave every dropout counter `shards` calls on.
    void end_step() {
        if (shard_step_)
            for (std::size_t i = 0; i < dropouts_.size(); ++i)
                dropouts_[i]->set_calls(base_calls_[i] + static_cast<std::uint64_t>(shards_));
        step_open_ = false;
        shard_step_ = false;
        shard_open_ = false;
        shards_added_ = 0;
    }

    ParameterList<Scalar> params_;
    DataParallelOptions options_;
    std::vector<Dropout<Scalar>*> dropouts_;
    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
    Index shards_ = 1;
    Range local_;
    std::vector<std::size_t> offsets_;
    std::size_t total_ = 0;
    std::vector<Scalar> flat_, slots_, gathered_;
    std::vector<Bucket> buckets_;
    std::vector<std::size_t> bucket_of_;
    std::vector<bool> ready_;
    std::vector<std::uint64_t> base_calls_;
    bool step_open_ = false, shard_step_ = false, shard_open_ = false, in_flight_ = false, deferred_ = false;
    bool add_ = false;  // the overlapped shard's gradients add to the earlier shards' sum
    Index shards_added_ = 0;
    double weight_ = 1, deferred_weight_ = 1;
    ReductionStats stats_;
};

}  // namespace seqnn::distributed
