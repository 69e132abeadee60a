// Checkpoints: 20 training steps equal 10 steps, a save, a load into fresh objects and
// 10 more steps, bitwise in double: weights, optimizer state and step, the data
// stream and the dropout masks all resume where they were.
#include "testing.hpp"

#include <seqnn/models/language_model.hpp>
#include <seqnn/train/checkpoint.hpp>
#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>
#include <seqnn/train/schedule.hpp>

#include <filesystem>
#include <memory>

using namespace seqnn;

namespace {

const LanguageModelOptions kModel{.vocab_size = 9, .dim = 6, .depth = 2, .mixer = {.kind = MixerKind::MinGRU},
                                  .ff_mult = 2.0, .conv = true, .dropout = 0.2, .dropout_seed = 5};
const WarmupCosineSchedule kSchedule{.peak_lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 4, .total_steps = 20};

// One training step on a batch drawn from `data`; returns the loss.
double train_step(LanguageModel<double>& lm, Optimizer<double>& opt, Rng& data) {
    std::uniform_int_distribution<int> token(0, 8);
    std::vector<int> ids(4 * 7), targets(4 * 7);
    for (auto& id : ids) id = token(data);
    for (std::size_t i = 0; i < ids.size(); ++i) targets[i] = i % 7 == 0 ? kIgnoreIndex : ids[i - 1];
    Context<double> ctx;
    const Sequence<double> logits = lm.forward(TokenBatch(ids, 4, 7), nullptr, &ctx);
    Matrix<double> dlogits;
    const double loss = cross_entropy_loss<double>(logits.data, targets, dlogits);
    opt.zero_grad();
    lm.backward(Sequence<double>(dlogits, 4, 7), ctx);
    clip_grad_norm(opt.parameters(), 1.0);
    opt.set_lr(kSchedule(opt.steps()));
    opt.step();
    return loss;
}

std::unique_ptr<Optimizer<double>> make_optimizer(bool adamw, const ParameterList<double>& params) {
    if (adamw) return std::make_unique<AdamW<double>>(params, AdamW<double>::Options{.weight_decay = 0.1});
    return std::make_unique<SGD<double>>(params, SGD<double>::Options{.momentum = 0.9, .nesterov = true});
}

std::filesystem::path temp_file(const std::string& name) {
    return std::filesystem::temp_directory_path() /
           (name + "_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + ".safetensors");
}

}  // namespace

TEST(Checkpoint, TwentyStepsEqualTenSaveLoadTen) {
    for (bool adamw : {true, false}) {
        SCOPED_TRACE(adamw ? "AdamW" : "SGD");
        // The uninterrupted run.
        Rng init(1), data(2);
        LanguageModel<double> lm(kModel, init);
        auto opt = make_optimizer(adamw, lm.parameters());
        std::vector<double> losses;
        for (int s = 0; s < 20; ++s) losses.push_back(train_step(lm, *opt, data));

        // Ten steps, a checkpoint, and the objects dropped.
        const std::filesystem::path path = temp_file("seqnn_checkpoint");
        {
            Rng init_a(1), data_a(2);
            LanguageModel<double> first(kModel, init_a);
            auto opt_a = make_optimizer(adamw, first.parameters());
            for (int s = 0; s < 10; ++s) EXPECT_EQ(train_step(first, *opt_a, data_a), losses[static_cast<std::size_t>(s)]);
            TrainingState<double> ts{first.parameters(), opt_a.get(), {{"data", &data_a}}, first.dropouts()};
            save_checkpoint(path, ts, {{"note", "after 10 steps"}});
        }
        // Fresh objects, made from other seeds: everything comes from the file.
        Rng init_b(77), data_b(78);
        LanguageModel<double> second(kModel, init_b);
        auto opt_b = make_optimizer(adamw, second.parameters());
        TrainingState<double> ts{second.parameters(), opt_b.get(), {{"data", &data_b}}, second.dropouts()};
        load_checkpoint(path, ts);
        EXPECT_EQ(opt_b->steps(), 10);
        for (int s = 10; s < 20; ++s) EXPECT_EQ(train_step(second, *opt_b, data_b), losses[static_cast<std::size_t>(s)]);

        auto expected = lm.parameters(), got = second.parameters();
        for (std::size_t i = 0; i < expected.size(); ++i)
            EXPECT_EQ(got[i].param->value, expected[i].param->value) << got[i].name;
        std::filesystem::remove(path);
    }
}

TEST(Checkpoint, FileLayoutIsNamedTensorsAndMetadata) {
    Rng init(1), data(2);
    LanguageModel<double> lm(kModel, init);
    AdamW<double> opt(lm.parameters(), {});
    train_step(lm, opt, data);
    const TrainingState<double> ts{lm.parameters(), &opt, {{"data", &data}}, lm.dropouts()};
    const io::TensorMap t = checkpoint_tensors(ts);
    EXPECT_TRUE(t.contains("token_emb.weight"));
    EXPECT_TRUE(t.contains("layers.1.0.net.0.weight"));
    EXPECT_TRUE(t.contains("optimizer.exp_avg.to_logits.weight"));
    EXPECT_TRUE(t.contains("optimizer.exp_avg_sq.layers.0.2.to_hidden_and_gate.weight"));
    EXPECT_EQ(t.at("optimizer.step").values<std::int64_t>(), std::vector<std::int64_t>{1});
    EXPECT_EQ(t.at("rng.dropout_calls").values<std::int64_t>(), std::vector<std::int64_t>(5, 1));  // embedding + 2 per block
    EXPECT_TRUE(t.metadata.count("rng.data"));
    EXPECT_EQ(t.metadata.at("seqnn.checkpoint"), "1");
    // The weights load by name from a checkpoint like from a weight file.
    Rng other(9);
    LanguageModel<double> copy(kModel, other);
    io::TensorMap weights;
    for (const auto& [name, tensor] : t)
        if (name.rfind("optimizer.", 0) != 0 && name.rfind("rng.", 0) != 0) weights.set(name, tensor);
    io::load_state_dict(weights, copy.parameters());
    EXPECT_EQ(copy.parameters()[0].param->value, lm.parameters()[0].param->value);
}

TEST(Checkpoint, MissingPiecesAreRejectedBeforeAnythingChanges) {
    Rng init(1), data(2);
    LanguageModel<double> lm(kModel, init);
    AdamW<double> opt(lm.parameters(), {});
    train_step(lm, opt, data);
    TrainingState<double> ts{lm.parameters(), &opt, {{"data", &data}}, lm.dropouts()};
    io::TensorMap t = checkpoint_tensors(ts);

    Rng init_b(3), data_b(4);
    LanguageModel<double> fresh(kModel, init_b);
    AdamW<double> opt_b(fresh.parameters(), {});
    TrainingState<double> target{fresh.parameters(), &opt_b, {{"data", &data_b}}, fresh.dropouts()};
    const Matrix<double> before = fresh.parameters()[0].param->value;

    io::TensorMap no_state = t;
    no_state.erase("optimizer.exp_avg.norm.weight");
    EXPECT_THROW(restore_checkpoint(no_state, target), format_error);
    io::TensorMap no_rng = t;
    no_rng.metadata.erase("rng.data");
    EXPECT_THROW(restore_checkpoint(no_rng, target), format_error);
    io::TensorMap no_weight = t;
    no_weight.erase("norm.weight");
    EXPECT_THROW(restore_checkpoint(no_weight, target), io::state_dict_error);
    EXPECT_EQ(fresh.parameters()[0].param->value, before);
    EXPECT_EQ(opt_b.steps(), 0);
}
