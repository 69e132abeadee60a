// Checkpoints: 20 training steps equal 10 steps, a save, a load into fresh objects and
// 10 more steps, bitwise in double: weights, optimizer state and step, the data
// stream and the dropout masks all resume where they were.
#include "testing.hpp"

#include <seqnn/models/language_model.hpp>
#include <seqnn/train/checkpoint.hpp>
#include <seqnn/train/loss.hpp>
#include <seqnn/train/optimizer.hpp>
#include <seqnn/train/schedule.hpp>
#include "layer_instances.hpp"

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
    EXPECT_EQ(t.metadata.at("seqnn.checkpoint"), "3");
    EXPECT_EQ(t.metadata.at("seqnn.checksum").size(), 16u);
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

    // Each altered copy is sealed again (a fresh checksum), so that what is refused is the
    // missing piece, not the checksum.
    io::TensorMap no_state = t;
    no_state.erase("optimizer.exp_avg.norm.weight");
    seal_checkpoint(no_state);
    EXPECT_THROW(restore_checkpoint(no_state, target), format_error);
    io::TensorMap no_rng = t;
    no_rng.metadata.erase("rng.data");
    seal_checkpoint(no_rng);
    EXPECT_THROW(restore_checkpoint(no_rng, target), format_error);
    io::TensorMap no_weight = t;
    no_weight.erase("norm.weight");
    seal_checkpoint(no_weight);
    EXPECT_THROW(restore_checkpoint(no_weight, target), io::state_dict_error);
    EXPECT_EQ(fresh.parameters()[0].param->value, before);
    EXPECT_EQ(opt_b.steps(), 0);
}

namespace {

// A checkpoint after one AdamW step, and a fresh training state of the same shapes to load it into.
struct CheckpointFixture {
    Rng init{1}, data{2}, init_b{3}, data_b{4};
    LanguageModel<double> lm{kModel, init}, fresh{kModel, init_b};
    AdamW<double> opt{lm.parameters(), {}}, opt_b{fresh.parameters(), {}};
    TrainingState<double> target{fresh.parameters(), &opt_b, {{"data", &data_b}}, fresh.dropouts()};
    io::TensorMap tensors;

    CheckpointFixture() {
        train_step(lm, opt, data);
        const TrainingState<double> ts{lm.parameters(), &opt, {{"data", &data}}, lm.dropouts()};
        tensors = checkpoint_tensors(ts);
    }
    // `tensors` with one tensor replaced, sealed again so that only the value is wrong.
    io::TensorMap with(const std::string& name, io::Tensor t) const {
        io::TensorMap out = tensors;
        out.set(name, std::move(t));
        seal_checkpoint(out);
        return out;
    }
    // Throws what restore throws, and checks that nothing changed.
    void expect_refused(const io::TensorMap& bad, const std::string& needle) {
        const Matrix<double> before = fresh.parameters()[0].param->value;
        try {
            restore_checkpoint(bad, target);
            ADD_FAILURE() << "restore accepted a checkpoint with " << needle;
        } catch (const format_error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
        EXPECT_EQ(fresh.parameters()[0].param->value, before);
        EXPECT_EQ(opt_b.steps(), 0);
        for (const Dropout<double>* d : fresh.dropouts()) EXPECT_EQ(d->calls(), 0u);
    }
};

}  // namespace

TEST(Checkpoint, ValuesThatCannotResumeAreRefusedBeforeAnythingChanges) {
    CheckpointFixture f;
    f.expect_refused(f.with("optimizer.step", io::Tensor::from_values(std::vector<std::int64_t>{-1}, {})), "'optimizer.step' is -1");
    f.expect_refused(f.with("optimizer.step", io::Tensor::from_values(std::vector<std::int64_t>{}, {0})), "holds 0 values");
    f.expect_refused(f.with("optimizer.step", io::Tensor::from_values(std::vector<double>{1.0}, {})), "cannot be read as integers");

    const std::string squares = "optimizer.exp_avg_sq.norm.weight";
    Matrix<double> negative = f.tensors.at(squares).to_matrix<double>();
    negative(0, 0) = -1e-3;
    f.expect_refused(f.with(squares, io::Tensor::from_matrix(negative, io::DType::F64, f.tensors.at(squares).shape())),
                     "negative value");
    Matrix<double> nan = f.tensors.at("optimizer.exp_avg.norm.weight").to_matrix<double>();
    nan(0, 1) = std::nan("");
    f.expect_refused(f.with("optimizer.exp_avg.norm.weight",
                            io::Tensor::from_matrix(nan, io::DType::F64, f.tensors.at("optimizer.exp_avg.norm.weight").shape())),
                     "NaN or infinite");

    std::vector<std::int64_t> calls = f.tensors.at("rng.dropout_calls").values<std::int64_t>();
    calls[2] = -5;
    f.expect_refused(f.with("rng.dropout_calls", io::Tensor::from_values(calls, {Index(calls.size())})), "counter 2 is -5");
}

TEST(Checkpoint, EveryFlippedBitIsDetected) {
    CheckpointFixture f;
    const std::vector<std::byte> file = io::serialize_safetensors(f.tensors);
    const std::size_t header = 8 + static_cast<std::size_t>(io::detail::load_le<std::uint64_t>(file.data()));
    Rng pick(11);
    int detected = 0;
    for (int trial = 0; trial < 100; ++trial) {
        std::vector<std::byte> flipped = file;
        const std::size_t at = header + pick() % (file.size() - header);  // anywhere in the data section
        flipped[at] ^= std::byte{static_cast<unsigned char>(1u << (pick() % 8))};
        try {
            restore_checkpoint(io::parse_safetensors(flipped), f.target);
        } catch (const format_error& e) {
            detected += std::string(e.what()).find("checksum mismatch") != std::string::npos;
        }
    }
    EXPECT_EQ(detected, 100);
    EXPECT_EQ(f.opt_b.steps(), 0);
    EXPECT_NO_THROW(restore_checkpoint(io::parse_safetensors(file), f.target));  // the intact file loads
    EXPECT_EQ(f.opt_b.steps(), 1);
}

// Checkpoints written before checksums existed (format "1") still load; a file with no
// checksum that does not say it is one of them is refused, and says why.
TEST(Checkpoint, OldCheckpointsLoadAndUnmarkedFilesWithoutChecksumAreRefused) {
    CheckpointFixture f;
    io::TensorMap old = f.tensors;
    old.metadata.erase("seqnn.checksum");
    old.metadata["seqnn.checkpoint"] = "1";
    EXPECT_NO_THROW(restore_checkpoint(old, f.target));
    EXPECT_EQ(f.opt_b.steps(), 1);

    io::TensorMap stripped = f.tensors;
    stripped.metadata.clear();
    try {
        restore_checkpoint(stripped, f.target);
        ADD_FAILURE() << "a file without checksum or format marker was accepted";
    } catch (const format_error& e) {
        EXPECT_NE(std::string(e.what()).find("no 'seqnn.checksum'"), std::string::npos) << e.what();
    }
}

// Format "2" differs from "3" only in a Transformer language model's dropout counters: "2"
// saved the embedding's alone. A "2" checkpoint with every counter loads; one of a
// Transformer model is refused with that reason rather than resumed inexactly.
TEST(Checkpoint, FormatTwoLoadsUnlessItLacksTheTransformerBlocksDropoutCounters) {
    CheckpointFixture f;
    io::TensorMap two = f.tensors;
    two.metadata["seqnn.checkpoint"] = "2";
    seal_checkpoint(two);
    EXPECT_NO_THROW(restore_checkpoint(two, f.target));
    EXPECT_EQ(f.opt_b.steps(), 1);

    LanguageModelOptions transformer = kModel;
    transformer.mixer.kind = MixerKind::Transformer;
    transformer.mixer.num_heads = 3;  // head size 2: rotary needs it even
    transformer.conv = false;
    Rng init(1), data(2), init_b(3);
    LanguageModel<double> lm(transformer, init), fresh(transformer, init_b);
    AdamW<double> opt(lm.parameters(), {}), opt_b(fresh.parameters(), {});
    train_step(lm, opt, data);
    io::TensorMap old = checkpoint_tensors(TrainingState<double>{lm.parameters(), &opt, {}, lm.dropouts()});
    old.set("rng.dropout_calls", io::Tensor::from_values(std::vector<std::int64_t>{1}, {1}));  // what "2" held
    old.metadata["seqnn.checkpoint"] = "2";
    seal_checkpoint(old);
    TrainingState<double> target{fresh.parameters(), &opt_b, {}, fresh.dropouts()};
    try {
        restore_checkpoint(old, target);
        ADD_FAILURE() << "a format 2 Transformer checkpoint without its blocks' dropout counters was accepted";
    } catch (const format_error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("holds 1 counters for 5 dropouts"), std::string::npos) << what;
        EXPECT_NE(what.find("format \"2\", written before a Transformer language model saved"), std::string::npos) << what;
    }
    EXPECT_EQ(opt_b.steps(), 0);
}

// Plain weight files stay standard safetensors: no checksum in their metadata.
TEST(Checkpoint, WeightFilesCarryNoChecksum) {
    Rng init(1);
    LanguageModel<double> lm(kModel, init);
    const std::filesystem::path path = temp_file("seqnn_weights_no_checksum");
    io::save_parameters(path, lm.parameters());
    EXPECT_FALSE(io::load_safetensors(path).metadata.count("seqnn.checksum"));
    std::filesystem::remove(path);
}
