// Data-parallel training over MPI (seqnn/distributed/data_parallel.hpp). One MPI program,
// run by ctest on 1, 2, 3 and 4 ranks; every test compares what the ranks computed
// together with what one process computes alone, in this same program:
//   - broadcast_parameters gives every rank rank 0's parameters, and check_in_sync
//     names a rank that drifted;
//   - the reduced gradients equal the gradient of the whole global batch (double, 1e-12),
//     also when the shards are uneven (3 ranks);
//   - a few training steps give the losses of one process: within a float bound with
//     MPI_Allreduce, bitwise with Reduction::Ordered (dropout on: the masks follow the
//     shard, not the rank);
//   - a checkpoint that rank 0 writes resumes on another number of ranks (a split of the
//     world) and continues bitwise as the uninterrupted run;
//   - a failed checkpoint write or read throws on every rank;
//   - a model's backward reports every parameter once, from the last, with its final
//     gradient (GradientReadyHook), and reducing during the last shard's backward gives
//     the gradients of reducing after it: bitwise with Reduction::Ordered, within a stated
//     bound with Sum (also with several shards per rank, and dropout);
//   - the bucketed reduction, with and without overlapping backward, agrees with one
//     bucket, and its timing is printed.
#include "testing.hpp"

#include <seqnn/distributed/data_parallel.hpp>
#include <seqnn/models/language_model.hpp>
#include <seqnn/layers/rowwise.hpp>
#include <seqnn/models/sequential.hpp>
#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>
#include <seqnn/train/schedule.hpp>

#include <unistd.h>

#include <cstdio>
#include <memory>

using namespace seqnn;
namespace dist = seqnn::distributed;

namespace {

int world_size() {
    int n = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

LanguageModelOptions model_options(double dropout) {
    return {.vocab_size = 9, .dim = 8, .depth = 2, .mixer = {.kind = MixerKind::MinGRU}, .ff_mult = 2.0,
            .conv = true, .dropout = dropout, .dropout_seed = 5};
}
const WarmupCosineSchedule kSchedule{.peak_lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 2, .total_steps = 12};
constexpr Index kSteps = 7;  // tokens per sequence

// A global batch of B sequences drawn from `data`: the same on every rank.
struct Batch {
    std::vector<int> ids, targets;
};
Batch draw_batch(Rng& data, Index B) {
    std::uniform_int_distribution<int> token(0, 8);
    Batch b;
    for (Index i = 0; i < B * (kSteps + 1); ++i) b.ids.push_back(token(data));
    std::vector<int> x, y;
    for (Index s = 0; s < B; ++s)
        for (Index t = 0; t < kSteps; ++t) {
            x.push_back(b.ids[static_cast<std::size_t>(s * (kSteps + 1) + t)]);
            y.push_back(b.ids[static_cast<std::size_t>(s * (kSteps + 1) + t + 1)]);
        }
    return {x, y};
}

// Forward and backward (reporting to `ready`) of sequences `rows` of the batch; returns
// the shard's mean loss.
template <typename Scalar>
double forward_backward(LanguageModel<Scalar>& lm, const Batch& batch, dist::Range rows,
                        const GradientReadyHook& ready = {}) {
    const auto first = static_cast<std::size_t>(rows.begin * kSteps), n = static_cast<std::size_t>(rows.size() * kSteps);
    const std::vector<int> ids(batch.ids.begin() + static_cast<long>(first), batch.ids.begin() + static_cast<long>(first + n));
    const std::vector<int> targets(batch.targets.begin() + static_cast<long>(first),
                                   batch.targets.begin() + static_cast<long>(first + n));
    Context<Scalar> ctx;
    const Sequence<Scalar> logits = lm.forward(TokenBatch(ids, rows.size(), kSteps), nullptr, &ctx);
    Matrix<Scalar> dlogits;
    const double loss = cross_entropy_loss<Scalar>(logits.data, targets, dlogits);
    lm.backward(Sequence<Scalar>(std::move(dlogits), rows.size(), kSteps), ctx, nullptr, nullptr, ready);
    return loss;
}

// The reduced gradient of one global batch: every local shard, then reduce(); or, with
// `overlap`, the last local shard's reduction during its backward (begin_reduction,
// parameters_ready from the model's hook, finish_reduction). Returns the global batch's
// mean loss.
template <typename Scalar>
double data_parallel_gradient(LanguageModel<Scalar>& lm, dist::DataParallel<Scalar>& dp, const Batch& batch, Index B,
                              bool overlap = false) {
    std::vector<double> weighted;
    for (Index s = dp.first_local_shard(); s < dp.end_local_shard(); ++s) {
        dp.begin_shard(s);
        const dist::Range rows = dp.shard_rows(B, s);
        const double weight = static_cast<double>(rows.size()) / static_cast<double>(B);
        if (overlap && s + 1 == dp.end_local_shard()) {
            dp.begin_reduction(weight);
            weighted.push_back(weight * forward_backward(lm, batch, rows, [&dp](std::size_t first, std::size_t end) {
                                   dp.parameters_ready(first, end);
                               }));
            dp.finish_reduction();
        } else {
            weighted.push_back(weight * forward_backward(lm, batch, rows));
            dp.add_shard(weight);
        }
    }
    if (!overlap) dp.reduce();
    return dp.sum(weighted);
}

template <typename Scalar>
void optimizer_step(Optimizer<Scalar>& opt) {
    clip_grad_norm(opt.parameters(), Scalar(0.5));
    opt.set_lr(kSchedule(opt.steps()));
    opt.step();
}

// A model, its optimizer and data stream, trained on `comm` (or in one plain process).
struct Trainer {
    Rng init, data{2};
    LanguageModel<float> lm;
    AdamW<float> opt;
    std::unique_ptr<dist::DataParallel<float>> dp;

    Trainer(double dropout, std::uint64_t init_seed)
        : init(init_seed), lm(model_options(dropout), init), opt(lm.parameters(), AdamW<float>::Options{.weight_decay = 0.1}) {}
    void distribute(dist::DataParallelOptions options) {
        dp = std::make_unique<dist::DataParallel<float>>(lm.parameters(), options, lm.dropouts());
        dp->broadcast_parameters();
    }
    TrainingState<float> state() { return {lm.parameters(), &opt, {{"data", &data}}, lm.dropouts()}; }

    double step(Index B) {
        const Batch batch = draw_batch(data, B);
        double loss;
        if (dp) {
            loss = data_parallel_gradient(lm, *dp, batch, B);
        } else {
            opt.zero_grad();
            loss = forward_backward(lm, batch, {0, B});
        }
        optimizer_step(opt);
        return loss;
    }
};

}  // namespace

TEST(Distributed, BroadcastGivesEveryRankRankZerosParameters) {
    const int rank = dist::world_rank();
    Rng init(100 + static_cast<std::uint64_t>(rank));  // a different model on every rank
    LanguageModel<float> lm(model_options(0.0), init);
    Rng init0(100);
    LanguageModel<float> rank0(model_options(0.0), init0);
    dist::DataParallel<float> dp(lm.parameters());
    dist::DataParallel<float> reference(rank0.parameters(), {.comm = MPI_COMM_SELF});
    if (world_size() > 1 && rank > 0) {
        EXPECT_NE(dp.checksum(), reference.checksum());
    }

    dp.broadcast_parameters();
    EXPECT_EQ(dp.checksum(), reference.checksum());
    const ParameterList<float> mine = lm.parameters(), theirs = rank0.parameters();
    for (std::size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(mine[i].param->value, theirs[i].param->value) << mine[i].name;
    EXPECT_NO_THROW(dp.check_in_sync());

    if (world_size() > 1) {  // the last rank drifts by one bit in one weight
        const int last = world_size() - 1;
        float& w = lm.parameters()[1].param->value(0, 0);
        const float saved = w;
        if (rank == last) w = std::nextafter(w, 1e30f);
        try {
            dp.check_in_sync("in this test");
            ADD_FAILURE() << "check_in_sync did not notice rank " << last;
        } catch (const dist::distributed_error& e) {
            EXPECT_NE(std::string(e.what()).find("rank(s) " + std::to_string(last) + " differ"), std::string::npos)
                << e.what();
        }
        w = saved;
        EXPECT_NO_THROW(dp.check_in_sync());
    }
}

TEST(Distributed, ShardsSplitTheBatchEvenly) {
    EXPECT_EQ(dist::split_evenly(10, 4, 0), (dist::Range{0, 3}));
    EXPECT_EQ(dist::split_evenly(10, 4, 1), (dist::Range{3, 6}));
    EXPECT_EQ(dist::split_evenly(10, 4, 2), (dist::Range{6, 8}));
    EXPECT_EQ(dist::split_evenly(10, 4, 3), (dist::Range{8, 10}));
    EXPECT_THROW(dist::split_evenly(10, 4, 4), std::invalid_argument);
    dist::DataParallel<float> dp(ParameterList<float>{}, {.shards = 4});
    EXPECT_EQ(dp.shards(), 4);
    EXPECT_EQ(dist::split_evenly(4, world_size(), dp.rank()), (dist::Range{dp.first_local_shard(), dp.end_local_shard()}));
    EXPECT_THROW(dp.shard_rows(3, 0), dist::distributed_error);  // 3 sequences cannot fill 4 shards
    EXPECT_THROW(dp.begin_shard(dp.end_local_shard()), dist::distributed_error);  // not this rank's
    if (world_size() > 1) {  // fewer shards than ranks
        EXPECT_THROW((dist::DataParallel<float>(ParameterList<float>{}, {.shards = world_size() - 1})),
                     dist::distributed_error);
    }
}

// The reduced gradient of every parameter equals the gradient of the whole batch, in
// double, for both reductions; 5 sequences make uneven shards on 2, 3 and 4 ranks.
TEST(Distributed, ReducedGradientsEqualTheWholeBatchsGradient) {
    constexpr Index B = 5;
    Rng data(7);
    const Batch batch = draw_batch(data, B);
    Rng init(3);
    LanguageModel<double> whole(model_options(0.0), init);
    whole.zero_grad();
    forward_backward(whole, batch, {0, B});

    for (dist::Reduction reduction : {dist::Reduction::Sum, dist::Reduction::Ordered})
        for (Index shards : {Index(0), Index(4)}) {
            SCOPED_TRACE(std::string(reduction == dist::Reduction::Sum ? "Sum" : "Ordered") + ", shards " +
                         std::to_string(shards));
            Rng init_again(3);
            LanguageModel<double> lm(model_options(0.0), init_again);
            dist::DataParallel<double> dp(lm.parameters(), {.reduction = reduction, .shards = shards, .bucket_bytes = 256});
            EXPECT_GT(dp.bucket_count(), 2u);
            data_parallel_gradient(lm, dp, batch, B);
            const ParameterList<double> got = lm.parameters(), want = whole.parameters();
            for (std::size_t i = 0; i < got.size(); ++i)
                EXPECT_LT(seqnn::testing::relative_error(got[i].param->grad, want[i].param->grad), 1e-12) << got[i].name;
        }
}

// Losses over a few AdamW steps with clipping and a schedule: MPI_Allreduce (one shard
// per rank) against one process on the whole batch, within a float bound.
TEST(Distributed, AllreduceLossesMatchOneProcessInFloat) {
    constexpr Index B = 8;
    Trainer alone(0.0, 11), together(0.0, 11);
    together.distribute({});
    double worst = 0;
    for (int step = 0; step < 8; ++step) {
        const double a = alone.step(B), b = together.step(B);
        worst = std::max(worst, std::abs(a - b));
        EXPECT_NEAR(b, a, 2e-5) << "step " << step;
    }
    together.dp->check_in_sync("after training");
    if (dist::world_rank() == 0)
        std::printf("[ info ] %d rank(s), Sum: largest |loss - one process's| over 8 steps %.3g\n", world_size(), worst);
    if (world_size() == 1) {
        EXPECT_EQ(worst, 0.0);  // one rank reduces nothing: the same bits
    }
}

// With a fixed shard count, Reduction::Ordered gives bitwise the losses and weights of one
// process that runs the same shards, for any number of ranks, dropout included; Sum with
// the same shards stays within the float bound.
TEST(Distributed, OrderedIsBitwiseTheSameOnAnyRankCount) {
    constexpr Index B = 8;
    Trainer alone(0.2, 13), ordered(0.2, 13), summed(0.2, 13);
    alone.distribute({.comm = MPI_COMM_SELF, .reduction = dist::Reduction::Ordered, .shards = 4});
    ordered.distribute({.reduction = dist::Reduction::Ordered, .shards = 4});
    summed.distribute({.reduction = dist::Reduction::Sum, .shards = 4});
    for (int step = 0; step < 6; ++step) {
        const double a = alone.step(B);
        EXPECT_EQ(ordered.step(B), a) << "step " << step;
        EXPECT_NEAR(summed.step(B), a, 2e-5) << "step " << step;
    }
    EXPECT_EQ(ordered.dp->checksum(), alone.dp->checksum());
    const auto da = alone.lm.dropouts(), db = ordered.lm.dropouts();
    for (std::size_t i = 0; i < da.size(); ++i) EXPECT_EQ(db[i]->calls(), 6u * 4u);  // 4 shards a step
    for (std::size_t i = 0; i < da.size(); ++i) EXPECT_EQ(da[i]->calls(), db[i]->calls());
}

// Rank 0 writes a checkpoint after 3 steps; the world split in two resumes it in each half
// (1 and 1, 1 and 2, 2 and 2 ranks) and takes the same 3 further steps bitwise.
TEST(Distributed, CheckpointResumesOnAnotherRankCount) {
    constexpr Index B = 8;
    const dist::DataParallelOptions ordered{.reduction = dist::Reduction::Ordered, .shards = 4};
    Trainer run(0.2, 17);
    run.distribute(ordered);
    for (int step = 0; step < 3; ++step) run.step(B);
    const std::string path = run.dp->broadcast_string(
        (std::filesystem::temp_directory_path() / ("seqnn_distributed_" + std::to_string(::getpid()) + ".safetensors"))
            .string());
    run.dp->save_checkpoint(path, run.state(), {{"note", "after 3 steps"}});
    std::vector<double> losses;
    for (int step = 0; step < 3; ++step) losses.push_back(run.step(B));

    const int rank = dist::world_rank(), half = std::max(1, world_size() / 2);
    MPI_Comm part;
    MPI_Comm_split(MPI_COMM_WORLD, rank < half ? 0 : 1, rank, &part);
    {
        Trainer resumed(0.2, 99);  // other weights and streams: everything comes from the file
        dist::DataParallelOptions options = ordered;
        options.comm = part;
        resumed.distribute(options);
        TrainingState<float> state = resumed.state();
        resumed.dp->load_checkpoint(path, state);
        EXPECT_EQ(resumed.opt.steps(), 3);
        for (int step = 0; step < 3; ++step) EXPECT_EQ(resumed.step(B), losses[static_cast<std::size_t>(step)]);
        EXPECT_EQ(resumed.dp->checksum(), run.dp->checksum());
        EXPECT_THROW(resumed.dp->load_checkpoint(path + ".missing", state), dist::distributed_error);
    }
    MPI_Comm_free(&part);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) std::filesystem::remove(path);
}

TEST(Distributed, AFailedCheckpointWriteThrowsOnEveryRank) {
    Trainer run(0.0, 1);
    run.distribute({});
    try {
        run.dp->save_checkpoint("/nonexistent-directory/run.safetensors", run.state());
        ADD_FAILURE() << "no error";
    } catch (const dist::distributed_error& e) {
        EXPECT_NE(std::string(e.what()).find("rank 0 could not write /nonexistent-directory/run.safetensors"),
                  std::string::npos)
            << e.what();
    }
}

// LanguageModel::backward's hook reports every parameter exactly once, in runs from the
// last parameter back to the first, and each gradient it reports is already final and
// bitwise that of a plain backward (the same on every rank: no MPI here).
TEST(Distributed, GradientHookReportsEveryParameterOnceFromTheLast) {
    constexpr Index B = 3;
    Rng data(21);
    const Batch batch = draw_batch(data, B);
    for (MixerKind kind : {MixerKind::MinGRU, MixerKind::Transformer}) {
        SCOPED_TRACE(to_string(kind));
        LanguageModelOptions o = model_options(0.0);
        o.mixer.kind = kind;
        o.conv = kind != MixerKind::Transformer;
        Rng init(22);
        LanguageModel<double> lm(o, init);
        const ParameterList<double> params = lm.parameters();
        // One forward, two backwards from its context: plain, then with the hook.
        const std::vector<int> targets = batch.targets;
        Context<double> ctx;
        const Sequence<double> logits = lm.forward(TokenBatch(batch.ids, B, kSteps), nullptr, &ctx);
        Matrix<double> dlogits;
        cross_entropy_loss<double>(logits.data, targets, dlogits);
        const Sequence<double> d(std::move(dlogits), B, kSteps);
        lm.zero_grad();
        lm.backward(d, ctx);
        std::vector<Matrix<double>> plain;
        for (const auto& p : params) plain.push_back(p.param->grad);

        lm.zero_grad();
        std::vector<int> times(params.size(), 0);
        std::vector<Matrix<double>> at_report(params.size());
        std::size_t expected_end = params.size();  // the runs go down from the last parameter, without gaps
        lm.backward(d, ctx, nullptr, nullptr, [&](std::size_t first, std::size_t end) {
            EXPECT_LT(first, end);
            EXPECT_EQ(end, expected_end) << "[" << first << ", " << end << ")";
            expected_end = first;
            for (std::size_t i = first; i < end && i < params.size(); ++i) {
                ++times[i];
                at_report[i] = params[i].param->grad;
            }
        });
        EXPECT_EQ(expected_end, 0u);
        for (std::size_t i = 0; i < params.size(); ++i) {
            EXPECT_EQ(times[i], 1) << params[i].name;
            EXPECT_EQ(at_report[i], plain[i]) << params[i].name;
            EXPECT_EQ(params[i].param->grad, plain[i]) << params[i].name;
        }
    }
}

// Reducing the last local shard's gradients during its backward (the hook calling
// parameters_ready) gives the gradients of add_shard and reduce() after backward, step
// after step of training with dropout: bitwise with Ordered; with Sum the same buckets are
// reduced from the same bits, so equal too in practice, and checked against a relative
// 1e-6 (MPI does not promise the same summation order from call to call). With 4 shards,
// a rank with several accumulates the earlier ones and overlaps only the last.
TEST(Distributed, OverlappedReductionEqualsReducingAfterBackward) {
    constexpr Index B = 8;
    for (dist::Reduction reduction : {dist::Reduction::Sum, dist::Reduction::Ordered})
        for (Index shards : {Index(0), Index(4)}) {
            const bool ordered = reduction == dist::Reduction::Ordered;
            SCOPED_TRACE(std::string(ordered ? "Ordered" : "Sum") + ", shards " + std::to_string(shards));
            const dist::DataParallelOptions options{.reduction = reduction, .shards = shards, .bucket_bytes = 512};
            Trainer after(0.2, 31), during(0.2, 31);
            after.distribute(options);
            during.distribute(options);
            EXPECT_GT(during.dp->bucket_count(), 2u);
            const ParameterList<float> pa = after.lm.parameters(), pd = during.lm.parameters();
            double worst = 0;
            for (int step = 0; step < 4; ++step) {
                if (!ordered)  // Sum: every step from the same weights, so that a difference cannot grow
                    for (std::size_t i = 0; i < pa.size(); ++i) pd[i].param->value = pa[i].param->value;
                const Batch ba = draw_batch(after.data, B), bd = draw_batch(during.data, B);
                const double la = data_parallel_gradient(after.lm, *after.dp, ba, B, /*overlap=*/false);
                const double ld = data_parallel_gradient(during.lm, *during.dp, bd, B, /*overlap=*/true);
                EXPECT_EQ(ld, la) << "step " << step;  // the forwards are the same either way
                for (std::size_t i = 0; i < pa.size(); ++i) {
                    const double e = seqnn::testing::relative_error(pd[i].param->grad, pa[i].param->grad);
                    worst = std::max(worst, e);
                    if (ordered) {
                        EXPECT_EQ(pd[i].param->grad, pa[i].param->grad) << pa[i].name << ", step " << step;
                    } else {
                        EXPECT_LT(e, 1e-6) << pa[i].name << ", step " << step;
                    }
                }
                optimizer_step(after.opt);
                optimizer_step(during.opt);
            }
            if (ordered) {
                EXPECT_EQ(during.dp->checksum(), after.dp->checksum());
            }
            const auto da = after.lm.dropouts(), dd = during.lm.dropouts();
            for (std::size_t i = 0; i < da.size(); ++i) EXPECT_EQ(dd[i]->calls(), da[i]->calls());
            during.dp->check_in_sync("after overlapped steps");
            if (dist::world_rank() == 0)
                std::printf("[ info ] %d rank(s), %s, shards %ld: largest relative |overlapped - after backward| "
                            "gradient difference over 4 steps %.3g\n",
                            world_size(), ordered ? "Ordered" : "Sum", static_cast<long>(shards), worst);
        }

    // Misuse: the overlapped shard must be the rank's last, begun one; add_shard cannot
    // follow begin_reduction.
    Trainer t(0.0, 1);
    t.distribute({.shards = 2 * world_size()});  // two shards per rank
    t.dp->begin_shard(t.dp->first_local_shard());
    EXPECT_THROW(t.dp->begin_reduction(0.5), dist::distributed_error);  // not the last shard
    t.dp->add_shard(0.5);
    EXPECT_THROW(t.dp->begin_reduction(0.5), dist::distributed_error);  // the last shard is not begun
    t.dp->begin_shard(t.dp->first_local_shard() + 1);
    t.dp->begin_reduction(0.5);
    EXPECT_THROW(t.dp->add_shard(0.5), dist::distributed_error);
    EXPECT_THROW(t.dp->begin_reduction(0.5), dist::distributed_error);
    t.dp->finish_reduction();
    dist::DataParallel<float> two(t.lm.parameters(), {.shards = 2 * world_size()});
    EXPECT_THROW(two.begin_reduction(1.0), dist::distributed_error);  // several shards: begin_shard first
}

// A stack of Linear layers, its gradients reduced three ways: one bucket after backward,
// small buckets after backward, and small buckets started layer by layer during backward.
// All three agree; the time of each is printed (rank 0).
TEST(Distributed, BucketsAndOverlapAgreeAndAreTimed) {
    constexpr Index width = 256, layers = 6, rows = 512;
    Rng init(5);
    Sequential<float> model;
    for (Index i = 0; i < layers; ++i) model.add(make_linear_layer<float>(width, width, true, init));
    const ParameterList<float> params = model.parameters();
    std::vector<std::size_t> first_param;  // layer i's parameters: [first_param[i], first_param[i + 1])
    std::size_t at = 0;
    for (Index i = 0; i < layers; ++i) {
        first_param.push_back(at);
        at += model[static_cast<std::size_t>(i)].parameters().size();
    }
    first_param.push_back(at);
    Rng data(6 + static_cast<std::uint64_t>(dist::world_rank()));
    const Sequence<float> x = seqnn::testing::random_sequence<float>(rows, 1, width, data);
    const Matrix<float> dy = seqnn::testing::random_matrix<float>(rows, width, data);

    struct Way {
        const char* name;
        std::size_t bucket_bytes;
        bool overlap;
    };
    const Way ways[] = {{"one bucket after backward", std::size_t(1) << 40, false},
                        {"256 KiB buckets after backward", 256 << 10, false},
                        {"256 KiB buckets during backward", 256 << 10, true}};
    std::vector<Matrix<float>> first_result;
    constexpr int repeats = 5;
    for (const Way& way : ways) {
        dist::DataParallel<float> dp(params, {.bucket_bytes = way.bucket_bytes});
        double step_seconds = 0;
        for (int r = 0; r < repeats; ++r) {
            MPI_Barrier(MPI_COMM_WORLD);
            const double t0 = MPI_Wtime();
            Context<float> ctx;
            model.zero_grad();
            model.forward(x, nullptr, &ctx);
            if (way.overlap) {  // Sequential's hook reports each layer's parameters after its backward
                dp.begin_reduction(1.0 / world_size());
                std::size_t next = layers;
                model.backward(Sequence<float>(dy, rows, 1), ctx, nullptr, nullptr,
                               [&](std::size_t first, std::size_t end) {
                                   --next;
                                   EXPECT_EQ(first, first_param[next]);
                                   EXPECT_EQ(end, first_param[next + 1]);
                                   dp.parameters_ready(first, end);
                               });
                EXPECT_EQ(next, 0u);
                dp.finish_reduction();
            } else {
                model.backward(Sequence<float>(dy, rows, 1), ctx);
                dp.reduce_gradients(1.0 / world_size());
            }
            step_seconds += MPI_Wtime() - t0;
        }
        if (first_result.empty()) {
            for (const auto& p : params) first_result.push_back(p.param->grad);
        } else {
            for (std::size_t i = 0; i < params.size(); ++i)
                EXPECT_LT(seqnn::testing::relative_error(params[i].param->grad, first_result[i]), 1e-6) << way.name;
        }
        if (dist::world_rank() == 0)
            std::printf("[ info ] %d rank(s), %ld parameters (%.1f MB) in %zu bucket(s), %s: %.2f ms a step, "
                        "%.2f ms in MPI, %.2f ms copying\n",
                        world_size(), static_cast<long>(count_parameters(params)),
                        static_cast<double>(count_parameters(params)) * 4e-6, dp.bucket_count(), way.name,
                        1e3 * step_seconds / repeats, 1e3 * dp.stats().mpi_seconds / repeats,
                        1e3 * dp.stats().copy_seconds / repeats);
    }
}

namespace {

// On ranks other than 0: only failures, each with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
public:
    explicit FailurePrinter(int rank) : rank_(rank) {}
    void OnTestPartResult(const ::testing::TestPartResult& result) override {
        if (result.failed())
            std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                         result.line_number(), result.summary());
    }

private:
    int rank_;
};

}  // namespace

int main(int argc, char** argv) {
    dist::MpiEnvironment mpi(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    if (mpi.rank() != 0) {
        ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
        delete listeners.Release(listeners.default_result_printer());
        listeners.Append(new FailurePrinter(mpi.rank()));
    }
    const int failed = RUN_ALL_TESTS();
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any && mpi.rank() == 0 && !failed) std::fprintf(stderr, "another rank failed (see [rank N] above)\n");
    return any;
}
