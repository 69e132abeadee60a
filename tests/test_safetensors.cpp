// seqnn::io: the safetensors format (read, validated, written), dtype conversion, and
// parameters saved and loaded by their PyTorch state_dict names.
//   - F16 and BF16 conversion against known bit patterns;
//   - a file written byte by byte from the format's description reads as it should, and
//     the writer produces, byte for byte, the file the description gives;
//   - round trips of every dtype, metadata, odd shapes;
//   - every kind of corrupt file is a format_error with a message saying what is wrong;
//   - strict loading lists every problem in one message and loads nothing; non-strict
//     loading loads what fits; real layers reload to identical outputs.
#include "testing.hpp"

#include <seqnn/io/safetensors.hpp>
#include <seqnn/io/state_dict.hpp>
#include <seqnn/seqnn.hpp>
#include "layer_instances.hpp"

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <sys/stat.h>

using namespace seqnn;
using namespace seqnn::io;
using seqnn::testing::random_matrix;
using seqnn::testing::random_sequence;

namespace {

using Bytes = std::vector<std::byte>;

Bytes bytes_of(std::initializer_list<int> values) {
    Bytes out;
    for (int v : values) out.push_back(static_cast<std::byte>(v));
    return out;
}

Bytes bytes_of(std::string_view text) {
    Bytes out;
    for (char c : text) out.push_back(static_cast<std::byte>(c));
    return out;
}

Bytes concat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

// 8-byte little-endian header length, the header text, then data_size zero bytes.
Bytes file_with_header(std::string_view header, std::size_t data_size = 0) {
    Bytes out(8);
    std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
    const Bytes text = bytes_of(header);
    out.insert(out.end(), text.begin(), text.end());
    out.resize(out.size() + data_size, std::byte{0});
    return out;
}

Bytes with_length(std::uint64_t n, std::size_t total_size) {
    Bytes out(std::max<std::size_t>(total_size, 8), std::byte{' '});
    for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
    return out;
}

// A unique path in the temporary directory, removed when the test ends.
class TempFile {
public:
    explicit TempFile(const std::string& stem) {
        std::random_device seed;
        path_ = std::filesystem::temp_directory_path() /
                ("seqnn_test_" + stem + "_" + std::to_string(seed()) + ".safetensors");
    }
    ~TempFile() {
        std::error_code ignored;
        std::filesystem::remove(path_, ignored);
    }
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

// Runs `body` expecting a format_error whose message contains `needle`.
template <typename Body>
void expect_format_error(Body body, const std::string& needle) {
    try {
        body();
        ADD_FAILURE() << "expected seqnn::format_error containing: " << needle;
    } catch (const format_error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << "message: " << e.what() << "\nmissing: " << needle;
    }
}

float from_bits(std::uint32_t bits) { return std::bit_cast<float>(bits); }

}  // namespace

// ---------------------------------------------------------------------------
// Hostile headers and paths: a header of many entries parses in linear time, a path that is
// not a regular file is refused without blocking, and a save never follows, opens or
// replaces a file planted beside its target.

namespace {

// A header of n metadata entries (the smallest entries, so the most of them per byte),
// optionally with entry `repeat` repeating entry 0's key.
std::string many_entries_header(int n, int repeat = -1) {
    std::string text = "{\"__metadata__\":{";
    for (int i = 0; i < n; ++i) {
        text += (i ? ",\"k" : "\"k") + std::to_string(i == repeat ? 0 : i) + "\":\"\"";
    }
    return text + "}}";
}

}  // namespace

TEST(HostileInput, AHeaderOf50000EntriesParsesInLinearTime) {
    const Bytes file = file_with_header(many_entries_header(50'000));
    const auto start = std::chrono::steady_clock::now();
    const TensorMap t = parse_safetensors(file);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(t.metadata.size(), 50'000u);
    // Linear: well under a second in Release, about 1.5 s under ASan at -O0. The quadratic
    // parse took 11 s for 35k entries in Release, so 50k take over 20 s.
    EXPECT_LT(seconds, 10.0) << "a quadratic parse takes minutes here (and hours at the 100 MB cap)";
    // Duplicates are still found, wherever they are.
    for (const int repeat : {1, 25'000, 49'999})
        expect_format_error([&] { parse_safetensors(file_with_header(many_entries_header(50'000, repeat))); },
                            "repeats the key 'k0'");
}

TEST(HostileInput, LoadingAFifoIsRefusedWithoutBlocking) {
    TempFile fifo("fifo");
    ASSERT_EQ(::mkfifo(fifo.path().c_str(), 0600), 0);
    expect_format_error([&] { load_safetensors(fifo.path()); }, "not a regular file");
    expect_format_error([&] { load_safetensors(std::filesystem::temp_directory_path()); }, "not a regular file");
}

TEST(HostileInput, SavingNeverFollowsASymlinkPlantedAtTheOldTemporaryName) {
    TempFile target("target"), victim("victim");
    { std::ofstream(victim.path()) << "precious"; }
    std::filesystem::path planted = target.path();
    planted += ".tmp";
    std::filesystem::create_symlink(victim.path(), planted);
    TensorMap t;
    t.set("w", Tensor::from_values(std::vector<float>{1, 2, 3}, {3}));
    save_safetensors(target.path(), t);
    std::string text;
    std::getline(std::ifstream(victim.path()), text);
    EXPECT_EQ(text, "precious");
    EXPECT_TRUE(std::filesystem::is_symlink(planted));
    EXPECT_EQ(load_safetensors(target.path()), t);
    std::filesystem::remove(planted);
}

TEST(HostileInput, APlantedFifoNeverReplacesTheSavedFile) {
    TempFile target("target_fifo");
    std::filesystem::path planted = target.path();
    planted += ".tmp";
    ASSERT_EQ(::mkfifo(planted.c_str(), 0600), 0);
    TensorMap t;
    t.set("w", Tensor::from_values(std::vector<double>{4, 5}, {2}));
    save_safetensors(target.path(), t);
    EXPECT_TRUE(std::filesystem::is_regular_file(target.path()));
    EXPECT_EQ(load_safetensors(target.path()), t);
    std::filesystem::remove(planted);
    // Nothing else is left beside the file: the temporary was renamed into place.
    int beside = 0;
    for (const auto& e : std::filesystem::directory_iterator(target.path().parent_path()))
        beside += e.path().string().rfind(target.path().string() + ".tmp", 0) == 0;
    EXPECT_EQ(beside, 0);
}

TEST(HostileInput, ASaveThatFailsLeavesThePreviousFileAndNoTemporary) {
    TempFile target("target_fail");
    TensorMap good;
    good.set("w", Tensor::from_values(std::vector<float>{1}, {1}));
    save_safetensors(target.path(), good);
    const std::filesystem::path into_missing_dir = target.path().parent_path() / "seqnn_no_such_dir" / "x.safetensors";
    EXPECT_THROW(save_safetensors(into_missing_dir, good), format_error);
    EXPECT_EQ(load_safetensors(target.path()), good);
}

// ---------------------------------------------------------------------------
// Dtypes and the 16-bit formats, bit for bit.

TEST(DType, NamesSizesAndLookup) {
    EXPECT_EQ(dtype_name(DType::BF16), "BF16");
    EXPECT_EQ(dtype_size(DType::BF16), 2u);
    EXPECT_EQ(dtype_size(DType::F64), 8u);
    EXPECT_EQ(dtype_size(DType::BOOL), 1u);
    for (DType d : all_dtypes) EXPECT_EQ(dtype_from_name(dtype_name(d)), d);
    EXPECT_FALSE(dtype_from_name("F8_E4M3"));
    EXPECT_FALSE(dtype_from_name("f32"));
    EXPECT_EQ(dtype_of<float>(), DType::F32);
    EXPECT_EQ(dtype_of<double>(), DType::F64);
    EXPECT_EQ(dtype_of<std::int64_t>(), DType::I64);
    EXPECT_EQ(dtype_of<std::uint8_t>(), DType::U8);
}

TEST(F16, EncodesKnownBitPatterns) {
    EXPECT_EQ(float_to_f16(0.0f), 0x0000);
    EXPECT_EQ(float_to_f16(-0.0f), 0x8000);
    EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
    EXPECT_EQ(float_to_f16(-2.0f), 0xc000);
    EXPECT_EQ(float_to_f16(0.1f), 0x2e66);
    EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);                        // the largest half
    EXPECT_EQ(float_to_f16(65519.0f), 0x7bff);                        // just under the rounding point
    EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);                        // rounds up to inf
    EXPECT_EQ(float_to_f16(1e6f), 0x7c00);
    EXPECT_EQ(float_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
    EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -14)), 0x0400);           // the smallest normal
    EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -24)), 0x0001);           // the smallest subnormal
    EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)), 0x0000);           // a tie, to even (zero)
    EXPECT_EQ(float_to_f16(std::ldexp(3.0f, -25)), 0x0002);           // a tie, to even (2)
    EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25) * 1.0001f), 0x0001);  // above the tie
    EXPECT_EQ(float_to_f16(std::ldexp(1023.0f, -24) + std::ldexp(1.0f, -25)), 0x0400);  // carries into normal
    EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);    // tie, to even
    EXPECT_EQ(float_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);    // tie, to even
    const std::uint16_t nan = float_to_f16(std::numeric_limits<float>::quiet_NaN());
    EXPECT_EQ(nan & 0x7c00, 0x7c00);
    EXPECT_NE(nan & 0x03ff, 0);
}

TEST(F16, DecodesKnownBitPatterns) {
    EXPECT_EQ(f16_to_float(0x3c00), 1.0f);
    EXPECT_EQ(f16_to_float(0xc000), -2.0f);
    EXPECT_EQ(f16_to_float(0x3555), 0.333251953125f);
    EXPECT_EQ(f16_to_float(0x7bff), 65504.0f);
    EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));
    EXPECT_EQ(f16_to_float(0x03ff), std::ldexp(1023.0f, -24));
    EXPECT_EQ(f16_to_float(0x7c00), std::numeric_limits<float>::infinity());
    EXPECT_EQ(f16_to_float(0xfc00), -std::numeric_limits<float>::infinity());
    EXPECT_TRUE(std::isnan(f16_to_float(0x7e00)));
    EXPECT_TRUE(std::signbit(f16_to_float(0x8000)));
    // Every finite half survives the trip through float and back.
    for (std::uint32_t h = 0; h < 0x10000; ++h) {
        if ((h & 0x7c00) == 0x7c00) continue;
        ASSERT_EQ(float_to_f16(f16_to_float(static_cast<std::uint16_t>(h))), h);
    }
}

TEST(BF16, EncodesAndDecodesKnownBitPatterns) {
    EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
    EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
    EXPECT_EQ(float_to_bf16(3.14159265f), 0x4049);                   // 3.140625
    EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);   // tie, to even
    EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(3.0f, -8)), 0x3f82);   // tie, to even
    EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
    EXPECT_EQ(float_to_bf16(from_bits(0x00000001)), 0x0000);         // the smallest float subnormal
    const std::uint16_t nan = float_to_bf16(from_bits(0x7f800001));  // a signalling NaN stays NaN
    EXPECT_EQ(nan & 0x7f80, 0x7f80);
    EXPECT_NE(nan & 0x007f, 0);
    EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
    EXPECT_EQ(bf16_to_float(0x4049), 3.140625f);
    EXPECT_EQ(bf16_to_float(0xff80), -std::numeric_limits<float>::infinity());
}

// Narrowing double -> float -> half would round twice; the result must be the correctly
// rounded one: just above a tie of the 16-bit format rounds up.
TEST(HalfFormats, FromDoubleRoundOnce) {
    const double above_f16_tie = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
    EXPECT_EQ(float_to_f16(static_cast<float>(above_f16_tie)), 0x3c00);  // the double rounding
    EXPECT_EQ(double_to_f16(above_f16_tie), 0x3c01);
    const double above_bf16_tie = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
    EXPECT_EQ(double_to_bf16(above_bf16_tie), 0x3f81);
    EXPECT_EQ(double_to_f16(1.0 + std::ldexp(1.0, -11)), 0x3c00);  // an exact tie still goes to even
    EXPECT_EQ(double_to_f16(-65519.99), 0xfbff);
    EXPECT_EQ(double_to_f16(1e300), 0x7c00);
    EXPECT_EQ(double_to_bf16(1e300), 0x7f80);
    EXPECT_EQ(double_to_bf16(1e-300), 0x0000);
    EXPECT_EQ(double_to_bf16(-1e-300), 0x8000);
    EXPECT_EQ(double_to_f16(0.1), 0x2e66);
}

// ---------------------------------------------------------------------------
// Tensors

TEST(Tensor, ConvertsBetweenDtypesOnTheWayInAndOut) {
    const std::vector<double> values = {1.0, -2.5, 0.1, 1e-3, 3.0, 65504.0};
    for (DType dtype : {DType::F64, DType::F32, DType::F16, DType::BF16}) {
        const Tensor t = Tensor::from_values(values, {2, 3}, dtype);
        EXPECT_EQ(t.dtype(), dtype);
        EXPECT_EQ(t.shape(), (std::vector<Index>{2, 3}));
        EXPECT_EQ(t.numel(), 6);
        EXPECT_EQ(t.bytes().size(), 6 * dtype_size(dtype));
        const auto back = t.values<double>();
        for (std::size_t i = 0; i < values.size(); ++i) {
            double expected = values[i];
            if (dtype == DType::F32) expected = static_cast<float>(values[i]);
            if (dtype == DType::F16) expected = f16_to_float(double_to_f16(values[i]));
            if (dtype == DType::BF16) expected = bf16_to_float(double_to_bf16(values[i]));
            EXPECT_EQ(back[i], expected) << dtype_name(dtype) << " element " << i;
        }
    }
}

TEST(Tensor, IntegersForTokenIds) {
    const std::vector<std::int64_t> ids = {0, 7, 50256, -1};
    const Tensor t = Tensor::from_values(ids, {4});
    EXPECT_EQ(t.dtype(), DType::I64);
    EXPECT_EQ(t.values<std::int64_t>(), ids);
    EXPECT_EQ(t.values<double>(), (std::vector<double>{0, 7, 50256, -1}));
    EXPECT_EQ(Tensor::from_values(ids, {4}, DType::I32).values<std::int64_t>(), ids);
    // Integers are range-checked both ways; floating-point data does not read as integers.
    EXPECT_THROW(Tensor::from_values(ids, {4}, DType::U8), shape_error);
    EXPECT_THROW(t.values<std::uint32_t>(), format_error);
    EXPECT_THROW(Tensor::from_values(std::vector<float>{1.0f}, {1}).values<int>(), format_error);
    EXPECT_THROW(Tensor::from_values(std::vector<float>{1.0f}, {1}, DType::I32), shape_error);
    const Tensor flags = Tensor::from_values(std::vector<std::uint8_t>{1, 0, 1}, {3}, DType::BOOL);
    EXPECT_EQ(flags.values<int>(), (std::vector<int>{1, 0, 1}));
    EXPECT_THROW(Tensor::from_values(std::vector<int>{2}, {1}, DType::BOOL), shape_error);
}

TEST(Tensor, ShapesScalarsEmptiesAndMatrices) {
    const Tensor scalar = Tensor::from_values(std::vector<double>{4.5}, {});
    EXPECT_EQ(scalar.numel(), 1);
    EXPECT_EQ(scalar.to_matrix<double>()(0, 0), 4.5);
    const Tensor empty(DType::F32, {3, 0, 2});
    EXPECT_EQ(empty.numel(), 0);
    EXPECT_TRUE(empty.bytes().empty());

    Rng rng(3);
    const Matrix<float> m = random_matrix<float>(3, 5, rng);
    const Tensor t = Tensor::from_matrix(m);
    EXPECT_EQ(t.shape(), (std::vector<Index>{3, 5}));
    EXPECT_EQ(t.to_matrix<float>(), m);
    EXPECT_EQ(Tensor::from_matrix(m, DType::F32, {15}).to_matrix<float>().rows(), 1);

    EXPECT_THROW(Tensor(DType::F32, {-1}), shape_error);
    EXPECT_THROW(Tensor(DType::F32, {2}, Bytes(7)), shape_error);
    EXPECT_THROW(Tensor::from_values(std::vector<float>{1, 2, 3}, {2}), shape_error);
    EXPECT_THROW(Tensor(DType::F32, {2, 2, 2}).to_matrix<float>(), shape_error);
    std::vector<float> small(3);
    EXPECT_THROW(t.copy_to(std::span<float>(small)), shape_error);
}

// ---------------------------------------------------------------------------
// The format, checked independently of the writer: bytes written out by hand.

TEST(SafetensorsFormat, ReadsAFileWrittenByHand) {
    // {"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},
    //  "b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]}}  is 143 = 0x8f bytes, not padded.
    const std::string header =
        R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
        R"("b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]}})";
    ASSERT_EQ(header.size(), 0x8fu);
    const Bytes file = concat({
        bytes_of({0x8f, 0, 0, 0, 0, 0, 0, 0}),  // u64 LE header length
        bytes_of(header),
        bytes_of({0x00, 0x00, 0x80, 0x3f,        // w: 1.0f   2.0f
                  0x00, 0x00, 0x00, 0x40,        //
                  0x00, 0x00, 0x00, 0xbf,        //    -0.5f  0.25f
                  0x00, 0x00, 0x80, 0x3e,        //
                  0x00, 0x3c, 0x00, 0xc0}),      // b: 1.0 -2.0 in F16
    });
    const TensorMap m = parse_safetensors(file);
    EXPECT_EQ(m.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
    ASSERT_EQ(m.names(), (std::vector<std::string>{"b", "w"}));
    EXPECT_EQ(m.at("w").dtype(), DType::F32);
    EXPECT_EQ(m.at("w").shape(), (std::vector<Index>{2, 2}));
    EXPECT_EQ(m.at("w").values<float>(), (std::vector<float>{1.0f, 2.0f, -0.5f, 0.25f}));
    EXPECT_EQ(m.at("b").dtype(), DType::F16);
    EXPECT_EQ(m.at("b").values<double>(), (std::vector<double>{1.0, -2.0}));
    Matrix<double> w(2, 2);
    w << 1.0, 2.0, -0.5, 0.25;
    EXPECT_EQ(m.at("w").to_matrix<double>(), w);  // row-major
}

TEST(SafetensorsFormat, WriterProducesTheDocumentedBytes) {
    TensorMap m;
    m.metadata = {{"k", "v"}};
    m.set("b", Tensor::from_values(std::vector<float>{1.0f, 2.0f}, {2}));
    m.set("a", Tensor::from_values(std::vector<float>{1.0f}, {1}, DType::F16));
    m.set("c", Tensor::from_values(std::vector<double>{0.5}, {}));
    // Keys sorted; the data by element size (F64, F32, F16) so each is aligned; the header
    // (187 bytes) padded with 5 spaces to 192 = 0xc0, a multiple of 8.
    const std::string header =
        R"({"__metadata__":{"k":"v"},"a":{"data_offsets":[16,18],"dtype":"F16","shape":[1]},)"
        R"("b":{"data_offsets":[8,16],"dtype":"F32","shape":[2]},"c":{"data_offsets":[0,8],"dtype":"F64","shape":[]}})"
        "     ";
    ASSERT_EQ(header.size(), 0xc0u);
    const Bytes expected = concat({
        bytes_of({0xc0, 0, 0, 0, 0, 0, 0, 0}),
        bytes_of(header),
        bytes_of({0, 0, 0, 0, 0, 0, 0xe0, 0x3f}),              // c: 0.5
        bytes_of({0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40}),  // b: 1.0f 2.0f
        bytes_of({0x00, 0x3c}),                                // a: 1.0 in F16
    });
    EXPECT_EQ(serialize_safetensors(m), expected);
    EXPECT_EQ(parse_safetensors(expected), m);
}

TEST(SafetensorsFormat, RoundTripsEveryDtypeThroughAFile) {
    TensorMap m;
    m.metadata = {{"format", "pt"}, {"note", "ünïcödé ✓"}};
    Rng rng(1);
    m.set("f64", Tensor::from_matrix(random_matrix<double>(3, 7, rng)));
    m.set("f32", Tensor::from_matrix(random_matrix<float>(5, 1, rng)));
    m.set("f16", Tensor::from_matrix(random_matrix<float>(2, 3, rng), DType::F16));
    m.set("bf16", Tensor::from_matrix(random_matrix<double>(4, 3, rng), DType::BF16, {2, 2, 3}));
    m.set("ids", Tensor::from_values(std::vector<std::int64_t>{1, -2, 3}, {3}));
    m.set("i32", Tensor::from_values(std::vector<std::int32_t>{-7}, {1, 1}));
    m.set("u8", Tensor::from_values(std::vector<std::uint8_t>{0, 255}, {2}));
    m.set("flags", Tensor::from_values(std::vector<std::uint8_t>{1, 0}, {2}, DType::BOOL));
    m.set("empty", Tensor(DType::F32, {0, 4}));
    m.set("scalar", Tensor::from_values(std::vector<float>{2.0f}, {}));
    m.set("layers.0.weight_ih_l0", Tensor(DType::F64, {1}));

    TempFile file("round_trip");
    save_safetensors(file.path(), m);
    EXPECT_FALSE(std::filesystem::exists(file.path().string() + ".tmp"));
    const TensorMap back = load_safetensors(file.path());
    EXPECT_EQ(back, m);
    EXPECT_EQ(back.metadata.at("note"), "ünïcödé ✓");
    // Deterministic: the same map gives the same bytes; the header is padded to 8 bytes.
    const Bytes bytes = serialize_safetensors(m);
    EXPECT_EQ(serialize_safetensors(back), bytes);
    std::uint64_t header_size = 0;
    std::memcpy(&header_size, bytes.data(), 8);
    EXPECT_EQ(header_size % 8, 0u);
}

TEST(SafetensorsFormat, AcceptsEdgeCasesTheSpecAllows) {
    EXPECT_TRUE(parse_safetensors(file_with_header("{}")).empty());
    EXPECT_TRUE(parse_safetensors(file_with_header("  {}  ")).empty());
    EXPECT_TRUE(parse_safetensors(file_with_header(R"({"__metadata__":{}})")).metadata.empty());
    // Zero-size tensors may share an offset with a neighbour.
    const TensorMap m = parse_safetensors(file_with_header(
        R"({"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"x":{"dtype":"I8","shape":[3],"data_offsets":[0,3]},)"
        R"("z":{"dtype":"F64","shape":[2,0,9],"data_offsets":[3,3]}})",
        3));
    EXPECT_EQ(m.size(), 3u);
    EXPECT_EQ(m.at("z").shape(), (std::vector<Index>{2, 0, 9}));
}

TEST(SafetensorsFormat, WriterRejectsWhatItCannotWrite) {
    TensorMap m;
    EXPECT_THROW(m.set("__metadata__", Tensor()), format_error);
    m.set(std::string("\xff"), Tensor());  // not UTF-8, so not JSON
    EXPECT_THROW(serialize_safetensors(m), format_error);
    expect_format_error([] { load_safetensors("/nonexistent/dir/x.safetensors"); }, "cannot open");
    expect_format_error([] { save_safetensors("/nonexistent/dir/x.safetensors", TensorMap()); }, "cannot open");
    expect_format_error([] { TensorMap().at("w"); }, "no tensor named 'w'");
}

// ---------------------------------------------------------------------------
// Corrupt and hostile files: each a format_error whose message says what is wrong.

struct Corruption {
    std::string name;
    Bytes file;
    std::string message;  // a part of the expected message
};

void PrintTo(const Corruption& c, std::ostream* os) { *os << c.name; }

std::string entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
    return R"({"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}";
}

std::vector<Corruption> corruptions() {
    const std::string ok = entry("F32", "[1]", "[0,4]");
    std::string deep = "{\"a\":";
    for (int i = 0; i < 10000; ++i) deep += "[";
    std::string rank_65 = "[";
    for (int i = 0; i < 65; ++i) rank_65 += i ? ",1" : "1";
    rank_65 += "]";
    return {
        {"Empty", {}, "too short for the 8-byte header length"},
        {"SevenBytes", Bytes(7), "too short"},
        {"HeaderLengthPastTheEnd", with_length(100, 50), "header length 100 runs past the end of the 50-byte input"},
        {"HeaderLengthOneTooMany", [] { auto f = file_with_header("{}"); f[0] = std::byte{3}; return f; }(),
         "runs past the end"},
        {"HeaderLengthHuge", with_length(std::numeric_limits<std::uint64_t>::max(), 16), "exceeds the limit"},
        {"HeaderLengthOverTheCap", with_length(100'000'001, 16), "exceeds the limit of 100000000 bytes"},
        {"HeaderEmpty", file_with_header(""), "not valid JSON"},
        {"HeaderNotJson", file_with_header("hello"), "not valid JSON"},
        {"HeaderTruncated", file_with_header(R"({"a":{"dtype":"F32")"), "not valid JSON"},
        {"HeaderTrailingGarbage", file_with_header("{} x"), "not valid JSON"},
        {"HeaderTrailingNul", file_with_header(std::string("{}\0", 3)), "NUL byte at offset 2"},
        {"HeaderHidesBytesBehindNul", file_with_header(std::string("{}\0\xff\x01 anything", 14)), "NUL byte"},
        {"HeaderNotUtf8", file_with_header("{\"\xff\":" + ok + "}", 4), "not valid JSON"},
        {"HeaderIsArray", file_with_header("[1,2]"), "header is a JSON array, expected an object"},
        {"HeaderIsString", file_with_header(R"("x")"), "header is a JSON string"},
        {"HeaderIsNumber", file_with_header("42"), "header is a JSON number"},
        {"HeaderIsNull", file_with_header("null"), "header is a JSON null"},
        {"NestedTooDeep", file_with_header(deep), "nests deeper"},
        {"DuplicateTensor", file_with_header(R"({"a":)" + ok + R"(,"a":)" + ok + "}", 4), "repeats the key 'a'"},
        {"DuplicateField",
         file_with_header(R"({"a":{"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,4]}})", 4),
         "repeats the key 'dtype' inside an entry"},
        {"DuplicateMetadataKey", file_with_header(R"({"__metadata__":{"k":"1","k":"2"}})"), "repeats the key 'k'"},
        {"EntryNotObject", file_with_header(R"({"a":[1]})"), "tensor 'a': entry is a JSON array"},
        {"MissingDtype", file_with_header(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), "missing field 'dtype'"},
        {"MissingShape", file_with_header(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4), "missing field 'shape'"},
        {"MissingOffsets", file_with_header(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "missing field 'data_offsets'"},
        {"UnexpectedField",
         file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"stride":[1]}})", 4),
         "unexpected field 'stride'"},
        {"UnknownDtype", file_with_header(R"({"a":)" + entry("F33", "[1]", "[0,4]") + "}", 4), "unsupported dtype 'F33'"},
        {"Fp8Dtype", file_with_header(R"({"a":)" + entry("F8_E4M3", "[1]", "[0,1]") + "}", 1),
         "unsupported dtype 'F8_E4M3'"},
        {"LowercaseDtype", file_with_header(R"({"a":)" + entry("f32", "[1]", "[0,4]") + "}", 4), "unsupported dtype"},
        {"DtypeNotString", file_with_header(R"({"a":{"dtype":5,"shape":[1],"data_offsets":[0,4]}})", 4),
         "dtype is a JSON number"},
        {"ShapeNotArray", file_with_header(R"({"a":)" + entry("F32", R"("1")", "[0,4]") + "}", 4),
         "shape is a JSON string"},
        {"ShapeNegative", file_with_header(R"({"a":)" + entry("F32", "[-1]", "[0,4]") + "}", 4),
         "shape must hold non-negative integers, found a number below zero"},
        {"ShapeFraction", file_with_header(R"({"a":)" + entry("F32", "[1.5]", "[0,4]") + "}", 4),
         "shape must hold non-negative integers"},
        {"ShapeNull", file_with_header(R"({"a":)" + entry("F32", "[null]", "[0,4]") + "}", 4),
         "shape must hold non-negative integers, found a null"},
        {"ShapeBeyondU64", file_with_header(R"({"a":)" + entry("F32", "[18446744073709551616]", "[0,4]") + "}", 4),
         "shape must hold non-negative integers"},
        {"ShapeDimensionTooLarge",
         file_with_header(R"({"a":)" + entry("F32", "[0,9223372036854775808]", "[0,0]") + "}"), "is too large"},
        {"ShapeProductOverflows",
         file_with_header(R"({"a":)" + entry("F32", "[4294967296,4294967296,4294967296]", "[0,4]") + "}", 4),
         "overflows 64 bits"},
        {"ShapeBytesOverflow",
         file_with_header(R"({"a":)" + entry("F64", "[4611686018427387904]", "[0,4]") + "}", 4), "overflows 64 bits"},
        {"ShapeRankTooHigh", file_with_header(R"({"a":)" + entry("F32", rank_65, "[0,4]") + "}", 4),
         "rank 65, more than 64"},
        {"OffsetsOneNumber", file_with_header(R"({"a":)" + entry("F32", "[1]", "[4]") + "}", 4),
         "data_offsets must be an array [begin, end]"},
        {"OffsetsThreeNumbers", file_with_header(R"({"a":)" + entry("F32", "[1]", "[0,4,8]") + "}", 4),
         "data_offsets must be an array"},
        {"OffsetsNotArray", file_with_header(R"({"a":)" + entry("F32", "[1]", "{}") + "}", 4),
         "data_offsets must be an array"},
        {"OffsetsNegative", file_with_header(R"({"a":)" + entry("F32", "[1]", "[-4,0]") + "}", 4),
         "data_offsets must hold non-negative integers"},
        {"OffsetsFraction", file_with_header(R"({"a":)" + entry("F32", "[1]", "[0.0,4]") + "}", 4),
         "data_offsets must hold non-negative integers"},
        {"OffsetsReversed", file_with_header(R"({"a":)" + entry("F32", "[0]", "[4,0]") + "}", 4),
         "end before they begin"},
        {"OffsetsPastTheData", file_with_header(R"({"a":)" + entry("F32", "[2]", "[0,8]") + "}", 4),
         "data_offsets [0, 8] run past the end of the 4-byte data section"},
        {"OffsetsHuge",
         file_with_header(R"({"a":)" + entry("F32", "[1]", "[18446744073709551612,18446744073709551615]") + "}", 4),
         "run past the end"},
        {"ShapeDisagreesWithBytes", file_with_header(R"({"a":)" + entry("F32", "[3]", "[0,8]") + "}", 8),
         "F32 [3] takes 12 bytes but data_offsets [0, 8] hold 8"},
        {"ShapeDisagreesWithDtype", file_with_header(R"({"a":)" + entry("F16", "[4]", "[0,4]") + "}", 4),
         "takes 8 bytes"},
        {"Overlap",
         file_with_header(R"({"a":)" + entry("F32", "[2]", "[0,8]") + R"(,"b":)" + entry("F32", "[2]", "[4,12]") + "}",
                          12),
         "tensors 'a' [0, 8) and 'b' [4, 12) overlap"},
        {"SameBytesTwice",
         file_with_header(R"({"a":)" + ok + R"(,"b":)" + ok + "}", 4), "overlap"},
        {"HoleBetweenTensors",
         file_with_header(R"({"a":)" + ok + R"(,"b":)" + entry("F32", "[1]", "[8,12]") + "}", 12),
         "bytes [4, 8) of the data section belong to no tensor"},
        {"HoleAtTheStart", file_with_header(R"({"a":)" + entry("F32", "[1]", "[4,8]") + "}", 8),
         "bytes [0, 4) of the data section belong to no tensor"},
        {"BytesAfterTheLastTensor", file_with_header(R"({"a":)" + ok + "}", 9),
         "the data section has 5 bytes after the last tensor"},
        {"DataButNoTensors", file_with_header("{}", 1), "1 bytes after the last tensor"},
        {"MetadataNotObject", file_with_header(R"({"__metadata__":["a"]})"), "__metadata__ is a JSON array"},
        {"MetadataValueNotString", file_with_header(R"({"__metadata__":{"epoch":3}})"),
         "__metadata__ 'epoch' is a JSON number, expected a string"},
        {"HugeNameIsShortenedInMessages",
         file_with_header("{\"" + std::string(5000, 'n') + "\":" + entry("F32", "[1]", "[0,8]") + "}", 8),
         "...' (5000 bytes)"},
    };
}

class CorruptFile : public ::testing::TestWithParam<Corruption> {};

TEST_P(CorruptFile, IsAFormatErrorThatSaysWhy) {
    const Corruption& c = GetParam();
    expect_format_error([&] { parse_safetensors(c.file, "bad.safetensors"); }, c.message);
    expect_format_error([&] { parse_safetensors(c.file, "bad.safetensors"); }, "bad.safetensors: ");
    // The same from a file, which is read piece by piece rather than whole.
    TempFile file("corrupt");
    std::ofstream(file.path(), std::ios::binary)
        .write(reinterpret_cast<const char*>(c.file.data()), static_cast<std::streamsize>(c.file.size()));
    expect_format_error([&] { load_safetensors(file.path()); }, c.message);
    expect_format_error([&] { load_safetensors(file.path()); }, file.path().string() + ": ");
}

INSTANTIATE_TEST_SUITE_P(SafetensorsFormat, CorruptFile, ::testing::ValuesIn(corruptions()),
                         [](const auto& info) { return info.param.name; });

// A valid file cut short anywhere, or with any one byte changed, is either still valid or a
// format_error: never a crash, an out-of-bounds read (ASan) or another exception.
TEST(SafetensorsFormat, EveryTruncationIsAFormatError) {
    TensorMap m;
    m.metadata = {{"format", "pt"}};
    m.set("weight", Tensor::from_values(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3}));
    m.set("bias", Tensor::from_values(std::vector<double>{0.5, -0.5}, {2}, DType::BF16));
    const Bytes file = serialize_safetensors(m);
    for (std::size_t n = 0; n < file.size(); ++n)
        EXPECT_THROW(parse_safetensors(std::span<const std::byte>(file.data(), n)), format_error) << "prefix " << n;
    EXPECT_EQ(parse_safetensors(file), m);
}

TEST(SafetensorsFormat, EverySingleByteChangeIsValidOrAFormatError) {
    TensorMap m;
    m.set("w", Tensor::from_values(std::vector<float>{1, 2, 3, 4}, {2, 2}));
    m.set("ids", Tensor::from_values(std::vector<std::int64_t>{9}, {1}));
    const Bytes file = serialize_safetensors(m);
    int valid = 0, rejected = 0;
    for (std::size_t i = 0; i < file.size(); ++i)
        for (int v : {0x00, 0x01, 0x20, 0x22, 0x2c, 0x30, 0x39, 0x5b, 0x7b, 0x7d, 0x80, 0xff}) {
            Bytes changed = file;
            changed[i] = static_cast<std::byte>(v);
            try {
                const TensorMap back = parse_safetensors(changed);
                for (const auto& [name, tensor] : back) (void)tensor.values<double>();
                ++valid;
            } catch (const format_error&) {
                ++rejected;
            }
        }
    EXPECT_GT(valid, 0);
    EXPECT_GT(rejected, 0);
}

// ---------------------------------------------------------------------------
// Parameters by state_dict name: strict and non-strict loading.

namespace {

// A hand-made parameter list: "weight" (2, 3), "bias" (3), "scale" (4).
struct ToyModel {
    Parameter<float> weight{2, 3}, bias{3}, scale{4};
    ParameterList<float> parameters() { return {{"weight", &weight}, {"bias", &bias}, {"scale", &scale}}; }
    explicit ToyModel(std::uint64_t seed) {
        Rng rng(seed);
        for (auto& p : parameters()) p.param->init_uniform(1.0f, rng);
    }
};

}  // namespace

TEST(StateDict, NamesShapesAndDtypesFollowPyTorch) {
    ToyModel model(1);
    const TensorMap sd = state_dict(model.parameters());
    EXPECT_EQ(sd.names(), (std::vector<std::string>{"bias", "scale", "weight"}));
    EXPECT_EQ(sd.at("weight").shape(), (std::vector<Index>{2, 3}));
    EXPECT_EQ(sd.at("bias").shape(), (std::vector<Index>{3}));  // a (1, 3) row, saved as [3]
    EXPECT_EQ(sd.at("weight").dtype(), DType::F32);
    EXPECT_EQ(sd.at("weight").to_matrix<float>(), model.weight.value);
    EXPECT_EQ(state_dict(model.parameters(), DType::BF16).at("bias").dtype(), DType::BF16);
    EXPECT_THROW(state_dict(model.parameters(), DType::I64), shape_error);

    Parameter<float> other(3);
    ParameterList<float> clash = {{"bias", &model.bias}, {"bias", &other}};
    EXPECT_THROW(state_dict(clash), shape_error);
    ParameterList<float> tied = {{"a", &model.bias}, {"b", &model.bias}};  // one tensor, two names
    EXPECT_EQ(state_dict(tied).size(), 2u);
}

TEST(StateDict, StrictLoadingListsEveryProblemInOneMessageAndLoadsNothing) {
    ToyModel source(1), target(2);
    TensorMap sd = state_dict(source.parameters());
    sd.erase("scale");                                                    // missing
    sd.set("stray", Tensor(DType::F32, {1}));                             // unexpected
    sd.set("weight", Tensor::from_matrix(Matrix<float>::Ones(3, 2)));     // shape mismatch
    const Matrix<float> bias_before = target.bias.value;
    try {
        load_state_dict(sd, target.parameters(), /*strict=*/true, "toy.safetensors");
        FAIL() << "expected state_dict_error";
    } catch (const state_dict_error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("3 problem(s) loading toy.safetensors:"), std::string::npos) << msg;
        EXPECT_NE(msg.find("missing keys: scale"), std::string::npos) << msg;
        EXPECT_NE(msg.find("unexpected keys: stray"), std::string::npos) << msg;
        EXPECT_NE(msg.find("size mismatch for weight: file has F32 [3, 2], parameter is [2, 3]"), std::string::npos)
            << msg;
        EXPECT_EQ(e.report().missing, (std::vector<std::string>{"scale"}));
        EXPECT_EQ(e.report().unexpected, (std::vector<std::string>{"stray"}));
        EXPECT_EQ(e.report().mismatched.size(), 1u);
    }
    EXPECT_EQ(target.bias.value, bias_before);  // all or nothing
    // A state_dict_error is a format_error.
    EXPECT_THROW(load_state_dict(sd, target.parameters()), format_error);
}

TEST(StateDict, NonStrictLoadingLoadsWhatMatchesAndReportsTheRest) {
    ToyModel source(1), target(2);
    TensorMap sd = state_dict(source.parameters());
    sd.erase("scale");
    sd.set("stray", Tensor(DType::F32, {1}));
    sd.set("weight", Tensor::from_matrix(Matrix<float>::Ones(3, 2)));
    const Matrix<float> weight_before = target.weight.value, scale_before = target.scale.value;
    const LoadReport report = load_state_dict(sd, target.parameters(), /*strict=*/false);
    EXPECT_FALSE(report.complete());
    EXPECT_EQ(report.loaded, (std::vector<std::string>{"bias"}));
    EXPECT_EQ(report.missing, (std::vector<std::string>{"scale"}));
    EXPECT_EQ(report.unexpected, (std::vector<std::string>{"stray"}));
    ASSERT_EQ(report.mismatched.size(), 1u);
    EXPECT_EQ(target.bias.value, source.bias.value);
    EXPECT_EQ(target.weight.value, weight_before);
    EXPECT_EQ(target.scale.value, scale_before);
}

TEST(StateDict, LoadsAnyFloatDtypeIntoFloatOrDouble) {
    ToyModel source(1);
    for (DType dtype : {DType::F32, DType::F64, DType::F16, DType::BF16}) {
        TempFile file("dtype");
        save_parameters(file.path(), source.parameters(), {}, dtype);
        EXPECT_EQ(load_safetensors(file.path()).at("weight").dtype(), dtype);

        ToyModel into_float(2);
        EXPECT_TRUE(load_parameters(file.path(), into_float.parameters()).complete());
        Parameter<double> w(2, 3), b(3), s(4);
        load_parameters(file.path(), ParameterList<double>{{"weight", &w}, {"bias", &b}, {"scale", &s}});
        for (Index i = 0; i < source.weight.size(); ++i) {
            const float v = source.weight.value.data()[i];
            float expected = v;
            if (dtype == DType::F16) expected = f16_to_float(float_to_f16(v));
            if (dtype == DType::BF16) expected = bf16_to_float(float_to_bf16(v));
            EXPECT_EQ(into_float.weight.value.data()[i], expected) << dtype_name(dtype);
            EXPECT_EQ(w.value.data()[i], static_cast<double>(expected)) << dtype_name(dtype);
        }
    }
}

TEST(StateDict, SavesMetadataWithFormatPt) {
    ToyModel model(1);
    TempFile file("metadata");
    save_parameters(file.path(), model.parameters(), {{"epoch", "3"}});
    EXPECT_EQ(load_safetensors(file.path()).metadata,
              (std::map<std::string, std::string>{{"epoch", "3"}, {"format", "pt"}}));
    save_parameters(file.path(), model.parameters(), {{"format", "custom"}});  // overwrites the file
    EXPECT_EQ(load_safetensors(file.path()).metadata.at("format"), "custom");
}

TEST(StateDict, FileErrorsNameTheFile) {
    ToyModel model(1);
    TempFile file("missing");
    expect_format_error([&] { load_parameters(file.path(), model.parameters()); }, file.path().string());
    std::ofstream(file.path(), std::ios::binary) << "garbage!";
    expect_format_error([&] { load_parameters(file.path(), model.parameters()); }, file.path().string() + ": header");
}

// ---------------------------------------------------------------------------
// Real layers: save, load into a fresh layer with another seed, identical outputs.

template <typename LayerType, typename Scalar, typename Options>
void expect_reload_gives_identical_outputs(const Options& options, const std::vector<std::string>& some_names) {
    Rng rng_a(1), rng_b(99), rng_x(5);
    LayerType saved(options, rng_a), fresh(options, rng_b);
    const auto x = random_sequence<Scalar>(3, 11, saved.input_size(), rng_x);
    const Matrix<Scalar> y = saved.forward(x).data;
    ASSERT_NE(fresh.forward(x).data, y);  // another seed, other weights

    TempFile file("layer");
    save_parameters(file.path(), saved);
    const TensorMap on_disk = load_safetensors(file.path());
    for (const auto& name : some_names) EXPECT_TRUE(on_disk.contains(name)) << name;
    EXPECT_EQ(on_disk.size(), saved.parameters().size());
    EXPECT_EQ(on_disk.begin()->second.dtype(), dtype_of<Scalar>());

    const LoadReport report = load_parameters(file.path(), fresh);
    EXPECT_TRUE(report.complete());
    EXPECT_EQ(report.loaded.size(), saved.parameters().size());
    EXPECT_EQ(fresh.forward(x).data, y);
}

TEST(LayerWeights, GruReloadsToIdenticalOutputs) {
    expect_reload_gives_identical_outputs<GRU<float>, float>(
        RecurrentOptions{.input_size = 5, .hidden_size = 7, .num_layers = 2},
        {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_ih_l1"});
    Rng rng(1);
    GRU<float> gru({.input_size = 5, .hidden_size = 7}, rng);
    const TensorMap sd = state_dict(gru.parameters());
    EXPECT_EQ(sd.at("weight_ih_l0").shape(), (std::vector<Index>{21, 5}));  // (3H, I), gates r, z, n
    EXPECT_EQ(sd.at("bias_hh_l0").shape(), (std::vector<Index>{21}));
}

TEST(LayerWeights, MinGruReloadsToIdenticalOutputs) {
    expect_reload_gives_identical_outputs<MinGRU<double>, double>(
        MinRNNOptions{.input_size = 6, .hidden_size = 9, .bias = true}, {"to_hidden_and_gate.weight", "to_out.weight"});
}

TEST(LayerWeights, LstmIntoALayerOfAnotherSizeIsOneStrictError) {
    Rng rng(1);
    LSTM<float> small({.input_size = 4, .hidden_size = 5}, rng);
    LSTM<float> big({.input_size = 4, .hidden_size = 6, .num_layers = 2}, rng);
    TempFile file("lstm");
    save_parameters(file.path(), small);
    try {
        load_parameters(file.path(), big);
        FAIL() << "expected state_dict_error";
    } catch (const state_dict_error& e) {
        EXPECT_EQ(e.report().missing.size(), 4u);     // the second layer's four tensors
        EXPECT_EQ(e.report().mismatched.size(), 4u);  // H = 5 against H = 6
        EXPECT_NE(std::string(e.what()).find("size mismatch for weight_hh_l0: file has F32 [20, 5], parameter is [24, 6]"),
                  std::string::npos)
            << e.what();
    }
}

// Every layer kind: one tensor per parameter under its PyTorch name and shape (rank 3 for
// the convolution), and a fresh layer with other weights reloads to identical outputs.
struct LayerMaker {
    std::string name;
    std::function<std::unique_ptr<Layer<float>>(Rng&)> make;
};

void PrintTo(const LayerMaker& m, std::ostream* os) { *os << m.name; }

std::vector<LayerMaker> every_layer() {
    return {
        {"RNN", [](Rng& r) { return std::make_unique<RNN<float>>(RNNOptions{.input_size = 5, .hidden_size = 7}, r); }},
        {"LSTM", [](Rng& r) { return std::make_unique<LSTM<float>>(RecurrentOptions{5, 7, 2, true}, r); }},
        {"GRU", [](Rng& r) { return std::make_unique<GRU<float>>(RecurrentOptions{5, 7, 2, false}, r); }},
        {"MinGRU", [](Rng& r) {
             return std::make_unique<MinGRU<float>>(MinRNNOptions{.input_size = 5, .hidden_size = 7, .bias = true}, r);
         }},
        {"MinLSTM", [](Rng& r) {
             return std::make_unique<MinLSTM<float>>(MinRNNOptions{.input_size = 5, .expansion = 2.0}, r);
         }},
        {"TransformerBlock", [](Rng& r) {
             return std::make_unique<TransformerBlock<float>>(
                 TransformerOptions{.d_model = 8, .num_heads = 2, .dim_feedforward = 12, .rotary = true}, r);
         }},
        {"CausalDepthwiseConv1d", [](Rng& r) {
             return std::make_unique<CausalDepthwiseConv1d<float>>(CausalConvOptions{.channels = 6, .kernel_size = 4}, r);
         }},
    };
}

class EveryLayer : public ::testing::TestWithParam<LayerMaker> {};

TEST_P(EveryLayer, SavesByPyTorchNameAndReloadsToIdenticalOutputs) {
    Rng rng_a(1), rng_b(2), rng_x(3);
    const auto saved = GetParam().make(rng_a), fresh = GetParam().make(rng_b);
    const auto x = random_sequence<float>(2, 5, saved->input_size(), rng_x);
    const Matrix<float> y = saved->forward(x).data;
    ASSERT_NE(fresh->forward(x).data, y);

    TempFile file("every_layer");
    save_parameters(file.path(), *saved);
    const TensorMap on_disk = load_safetensors(file.path());
    const ParameterList<float> params = saved->parameters();
    EXPECT_EQ(on_disk.size(), params.size());
    for (const auto& p : params) {
        ASSERT_TRUE(on_disk.contains(p.name)) << p.name;
        EXPECT_EQ(on_disk.at(p.name).shape(), p.param->shape) << p.name;
        EXPECT_EQ(on_disk.at(p.name).dtype(), DType::F32) << p.name;
    }

    EXPECT_TRUE(load_parameters(file.path(), *fresh).complete());
    EXPECT_EQ(fresh->forward(x).data, y);
}

INSTANTIATE_TEST_SUITE_P(LayerWeights, EveryLayer, ::testing::ValuesIn(every_layer()),
                         [](const auto& info) { return info.param.name; });

TEST(LayerWeights, LanguageModelReloadsToIdenticalLogits) {
    for (MixerKind kind : {MixerKind::MinGRU, MixerKind::Transformer}) {
        const LanguageModelOptions options{.vocab_size = 11, .dim = 8, .depth = 2, .mixer = {.kind = kind}};
        Rng rng_a(1), rng_b(2);
        LanguageModel<float> saved(options, rng_a), fresh(options, rng_b);
        const TokenBatch tokens({1, 4, 7, 10, 0, 3, 3, 9, 2, 5}, 2, 5);
        const Matrix<float> logits = saved.forward(tokens).data;

        TempFile file("language_model");
        save_parameters(file.path(), saved.parameters(), {{"mixer", to_string(kind)}});
        const TensorMap on_disk = load_safetensors(file.path());
        EXPECT_TRUE(on_disk.contains("token_emb.weight"));
        EXPECT_TRUE(on_disk.contains("to_logits.weight"));
        EXPECT_EQ(on_disk.metadata.at("mixer"), to_string(kind));

        EXPECT_TRUE(load_parameters(file.path(), fresh.parameters()).complete()) << to_string(kind);
        EXPECT_EQ(fresh.forward(tokens).data, logits) << to_string(kind);
    }
}
