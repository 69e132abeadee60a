// safetensors, the weight file format of PyTorch and Hugging Face: read, validated and written.
//
// A file is, all little-endian (https://github.com/huggingface/safetensors):
//   u64 N           the header's length in bytes
//   N bytes         a JSON object: {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
//                   ..., "__metadata__": {"<key>": "<value>", ...}}  (the metadata is optional)
//   data section    each tensor's elements, row-major, at bytes [begin, end) of this section
//
// The reader trusts nothing in its input and never reads outside it. Any defect is a
// seqnn::format_error naming the source and the problem. What it checks, following the
// reference implementation:
//   - the file holds the 8-byte length; N <= 100 MB (the reference's cap) and 8 + N <= file size;
//   - the header is UTF-8 JSON without NUL bytes, and an object; no object in it repeats a key;
//     nothing nests deeper than a tensor's shape array; only whitespace may follow the object
//     (writers pad with spaces);
//   - every tensor entry has exactly dtype, shape and data_offsets; the dtype is one this
//     file supports; the shape holds at most 64 non-negative integers whose product times the
//     element size, computed with overflow checks, equals end - begin; begin <= end <= data size;
//   - the tensors tile the data section exactly, as the format requires ("the byte buffer needs
//     to be entirely indexed, and cannot contain holes", which rules out polyglot files): sorted
//     by offset, the first starts at 0, each starts where the previous one ends, and the last
//     ends at the end of the input. So no two tensors overlap and no byte is left unaccounted.
//
// Tensors are copied out of the input (load_safetensors reads each straight from the file),
// so nothing refers to the input afterwards. The JSON header is parsed into a tree first, so
// a hostile header near the 100 MB cap briefly takes about 30 times its size in memory (a
// header of tiny metadata entries); real headers are kilobytes to a few MB.
//
// The writer pads the header with spaces to a multiple of 8 bytes, as the reference does,
// writes the header's keys in sorted order, and lays the data out by element size (largest
// first) and then by name, so each tensor sits at a multiple of its element size:
// the same input always gives the same bytes.
//
// Dtypes: F64, F32, F16, BF16, the integers I8..I64 and U8..U64, and BOOL. Any of them
// converts to float or double on reading (F16 and BF16 exactly); integers also read as C++
// integers, with a range check. The 8-bit float formats (F8_*) are refused as unsupported.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <array>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

namespace seqnn::io {

// ---------------------------------------------------------------------------
// Dtypes

/// The element types of a safetensors file.
enum class DType : std::uint8_t { BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F16, BF16, F32, F64 };

/// Every DType, in declaration order.
inline constexpr std::array<DType, 13> all_dtypes = {DType::BOOL, DType::U8,  DType::I8,  DType::U16, DType::I16,
                                                     DType::U32,  DType::I32, DType::U64, DType::I64, DType::F16,
                                                     DType::BF16, DType::F32, DType::F64};

/// The name a header uses, e.g. "BF16".
constexpr std::string_view dtype_name(DType dtype) {
    switch (dtype) {
        case DType::BOOL: return "BOOL";
        case DType::U8: return "U8";
        case DType::I8: return "I8";
        case DType::U16: return "U16";
        case DType::I16: return "I16";
        case DType::U32: return "U32";
        case DType::I32: return "I32";
        case DType::U64: return "U64";
        case DType::I64: return "I64";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::F32: return "F32";
        case DType::F64: return "F64";
    }
    return "?";
}

/// Bytes per element.
constexpr std::size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::BOOL:
        case DType::U8:
        case DType::I8: return 1;
        case DType::U16:
        case DType::I16:
        case DType::F16:
        case DType::BF16: return 2;
        case DType::U32:
        case DType::I32:
        case DType::F32: return 4;
        case DType::U64:
        case DType::I64:
        case DType::F64: return 8;
    }
    return 0;
}

/// Whether the type is F16, BF16, F32 or F64.
constexpr bool is_floating(DType dtype) {
    return dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32 || dtype == DType::F64;
}

/// The dtype called `name`, if it is one of the supported ones.
inline std::optional<DType> dtype_from_name(std::string_view name) {
    for (DType d : all_dtypes)
        if (dtype_name(d) == name) return d;
    return std::nullopt;
}

// The element types a Tensor converts from and to: float, double and the integer types
// (not bool or char; use std::uint8_t for BOOL).
template <typename T>
concept TensorValue = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                      (std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char> &&
                       !std::is_same_v<T, wchar_t> && !std::is_same_v<T, char8_t> &&
                       !std::is_same_v<T, char16_t> && !std::is_same_v<T, char32_t>);

/// The dtype that holds T exactly: F32 for float, I64 for std::int64_t, ...
template <TensorValue T>
constexpr DType dtype_of() {
    if constexpr (std::is_same_v<T, float>) return DType::F32;
    else if constexpr (std::is_same_v<T, double>) return DType::F64;
    else if constexpr (std::is_signed_v<T>) {
        if constexpr (sizeof(T) == 1) return DType::I8;
        else if constexpr (sizeof(T) == 2) return DType::I16;
        else if constexpr (sizeof(T) == 4) return DType::I32;
        else return DType::I64;
    } else {
        if constexpr (sizeof(T) == 1) return DType::U8;
        else if constexpr (sizeof(T) == 2) return DType::U16;
        else if constexpr (sizeof(T) == 4) return DType::U32;
        else return DType::U64;
    }
}

// ---------------------------------------------------------------------------
// Half-precision formats, bit for bit. Rounding is to nearest, ties to even; overflow
// gives infinity; NaN stays NaN (made quiet). From double, the value is first narrowed to
// float with round-to-odd, so that rounding twice gives the correctly rounded result.

/// IEEE binary16: 1 sign, 5 exponent, 10 mantissa bits.
inline float f16_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1fu;
    const std::uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
        const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

/// IEEE half precision of x, rounded to nearest even.
inline std::uint16_t float_to_f16(float x) {
    std::uint32_t f = std::bit_cast<std::uint32_t>(x);
    const auto sign = static_cast<std::uint16_t>((f >> 16) & 0x8000u);
    f &= 0x7fffffffu;
    if (f > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((f >> 13) & 0x3ffu));  // NaN
    if (f >= 0x47800000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 2^16 (or inf): inf
    if (f < 0x38800000u) {  // |x| < 2^-14: a subnormal half, in units of 2^-24, or zero
        if (f < 0x33000000u) return sign;  // |x| < 2^-25 rounds to zero
        const std::uint32_t exponent = f >> 23;                          // 102..112
        const std::uint32_t significand = (f & 0x7fffffu) | 0x800000u;  // 24 bits
        const std::uint32_t shift = 126 - exponent;                      // 14..24
        std::uint32_t q = significand >> shift;
        const std::uint32_t rest = significand & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (q & 1u))) ++q;  // may carry into the smallest normal
        return static_cast<std::uint16_t>(sign | q);
    }
    // Normal: rebias the exponent, round the 13 dropped bits; a carry may reach inf (>= 65520).
    f += (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu + ((f >> 13) & 1u);
    return static_cast<std::uint16_t>(sign | (f >> 13));
}

/// bfloat16: the top 16 bits of a float.
inline float bf16_to_float(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }

/// bfloat16 of x, rounded to nearest even.
inline std::uint16_t float_to_bf16(float x) {
    const std::uint32_t f = std::bit_cast<std::uint32_t>(x);
    if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((f >> 16) | 0x40u);  // quiet NaN
    return static_cast<std::uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

namespace detail {

// x narrowed to float by round-to-odd: truncate, and set the last bit if anything was lost.
// A float keeps 13 (F16) or 16 (BF16) bits beyond the final format, so rounding this once
// more to nearest-even gives the same result as rounding x directly.
inline float round_to_odd_float(double x) {
    if (!std::isfinite(x)) return static_cast<float>(x);
    const double magnitude = std::fabs(x);
    float f = static_cast<float>(magnitude);  // nearest; may be inf just above FLT_MAX
    if (static_cast<double>(f) > magnitude) f = std::nextafter(f, 0.0f);
    std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
    if (static_cast<double>(f) != magnitude) bits |= 1u;
    const float odd = std::bit_cast<float>(bits);
    return std::signbit(x) ? -odd : odd;
}

}  // namespace detail

/// IEEE half precision of a double, rounded once.
inline std::uint16_t double_to_f16(double x) { return float_to_f16(detail::round_to_odd_float(x)); }
/// bfloat16 of a double, rounded once.
inline std::uint16_t double_to_bf16(double x) { return float_to_bf16(detail::round_to_odd_float(x)); }

// ---------------------------------------------------------------------------
// Element conversion between bytes in a file and C++ values.

namespace detail {

template <typename T>
T load_le(const std::byte* p) {
    std::array<std::byte, sizeof(T)> b;
    std::memcpy(b.data(), p, sizeof(T));
    if constexpr (std::endian::native == std::endian::big) std::reverse(b.begin(), b.end());
    return std::bit_cast<T>(b);
}

template <typename T>
void store_le(T value, std::byte* p) {
    auto b = std::bit_cast<std::array<std::byte, sizeof(T)>>(value);
    if constexpr (std::endian::native == std::endian::big) std::reverse(b.begin(), b.end());
    std::memcpy(p, b.data(), sizeof(T));
}

// Quotes a name from a file for a message, shortened if a hostile file made it huge.
inline std::string quote_name(std::string_view name) {
    constexpr std::size_t max_length = 80;
    if (name.size() <= max_length) return "'" + std::string(name) + "'";
    return "'" + std::string(name.substr(0, max_length)) + "...' (" + std::to_string(name.size()) + " bytes)";
}

inline std::string shape_text(std::span<const Index> shape) {
    std::ostringstream out;
    out << '[';
    for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    out << ']';
    return out.str();
}

// a * b, or nothing if it does not fit in 64 bits.
inline std::optional<std::uint64_t> checked_multiply(std::uint64_t a, std::uint64_t b) {
    if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return std::nullopt;
    return a * b;
}

// One stored element of type S, converted to T; throws format_error if an integer does not fit.
template <TensorValue T, typename S>
T from_stored(S v) {
    if constexpr (std::is_floating_point_v<T>) {
        return static_cast<T>(v);
    } else {
        if (!std::in_range<T>(v))
            throw format_error("tensor value " + std::to_string(v) + " does not fit the integer type asked for");
        return static_cast<T>(v);
    }
}

template <typename S, typename T, typename Convert>
void decode_each(const std::byte* src, std::size_t n, T* out, Convert convert) {
    for (std::size_t i = 0; i < n; ++i) out[i] = convert(load_le<S>(src + i * sizeof(S)));
}

// n elements of `dtype` at src -> out, converted to T. Integers T take only integer dtypes.
template <TensorValue T>
void decode(DType dtype, const std::byte* src, std::size_t n, T* out) {
    if constexpr (std::is_integral_v<T>) {
        if (is_floating(dtype))
            throw format_error("tensor of dtype " + std::string(dtype_name(dtype)) + " cannot be read as integers");
    }
    if (dtype == dtype_of<T>() && std::endian::native == std::endian::little) {
        if (n) std::memcpy(out, src, n * sizeof(T));
        return;
    }
    const auto plain = [](auto v) { return from_stored<T>(v); };
    switch (dtype) {
        case DType::BOOL: decode_each<std::uint8_t>(src, n, out, [](std::uint8_t v) { return static_cast<T>(v != 0); }); break;
        case DType::U8: decode_each<std::uint8_t>(src, n, out, plain); break;
        case DType::I8: decode_each<std::int8_t>(src, n, out, plain); break;
        case DType::U16: decode_each<std::uint16_t>(src, n, out, plain); break;
        case DType::I16: decode_each<std::int16_t>(src, n, out, plain); break;
        case DType::U32: decode_each<std::uint32_t>(src, n, out, plain); break;
        case DType::I32: decode_each<std::int32_t>(src, n, out, plain); break;
        case DType::U64: decode_each<std::uint64_t>(src, n, out, plain); break;
        case DType::I64: decode_each<std::int64_t>(src, n, out, plain); break;
        case DType::F16:
            if constexpr (std::is_floating_point_v<T>)
                decode_each<std::uint16_t>(src, n, out, [](std::uint16_t v) { return static_cast<T>(f16_to_float(v)); });
            break;
        case DType::BF16:
            if constexpr (std::is_floating_point_v<T>)
                decode_each<std::uint16_t>(src, n, out, [](std::uint16_t v) { return static_cast<T>(bf16_to_float(v)); });
            break;
        case DType::F32:
            if constexpr (std::is_floating_point_v<T>) decode_each<float>(src, n, out, plain);
            break;
        case DType::F64:
            if constexpr (std::is_floating_point_v<T>) decode_each<double>(src, n, out, plain);
            break;
    }
}

// One value as dtype S; throws shape_error if an integer does not fit.
template <typename S, TensorValue T>
S to_stored(T v, DType dtype) {
    if constexpr (std::is_integral_v<T>) {
        if (!std::in_range<S>(v))
            throw shape_error("Tensor: value " + std::to_string(v) + " does not fit dtype " +
                              std::string(dtype_name(dtype)));
    }
    return static_cast<S>(v);
}

template <typename S, typename T, typename Convert>
void encode_each(const T* in, std::size_t n, std::byte* dst, Convert convert) {
    for (std::size_t i = 0; i < n; ++i) store_le<S>(convert(in[i]), dst + i * sizeof(S));
}

// n values of T -> dtype at dst. Floating-point values go only to floating-point dtypes.
template <TensorValue T>
void encode(const T* in, std::size_t n, DType dtype, std::byte* dst) {
    if constexpr (std::is_floating_point_v<T>) {
        if (!is_floating(dtype))
            throw shape_error("Tensor: floating-point values cannot be stored as " + std::string(dtype_name(dtype)));
    }
    if (dtype == dtype_of<T>() && std::endian::native == std::endian::little) {
        if (n) std::memcpy(dst, in, n * sizeof(T));
        return;
    }
    // float goes straight to the 16-bit formats; double and integers via double (round-to-odd first).
    const auto to_f16 = [](T v) {
        if constexpr (std::is_same_v<T, float>) return float_to_f16(v);
        else return double_to_f16(static_cast<double>(v));
    };
    const auto to_bf16 = [](T v) {
        if constexpr (std::is_same_v<T, float>) return float_to_bf16(v);
        else return double_to_bf16(static_cast<double>(v));
    };
    switch (dtype) {
        case DType::BOOL:
            encode_each<std::uint8_t>(in, n, dst, [](T v) {
                if (v != T(0) && v != T(1)) throw shape_error("Tensor: BOOL values must be 0 or 1, got " + std::to_string(v));
                return static_cast<std::uint8_t>(v);
            });
            break;
        case DType::U8: encode_each<std::uint8_t>(in, n, dst, [](T v) { return to_stored<std::uint8_t>(v, DType::U8); }); break;
        case DType::I8: encode_each<std::int8_t>(in, n, dst, [](T v) { return to_stored<std::int8_t>(v, DType::I8); }); break;
        case DType::U16: encode_each<std::uint16_t>(in, n, dst, [](T v) { return to_stored<std::uint16_t>(v, DType::U16); }); break;
        case DType::I16: encode_each<std::int16_t>(in, n, dst, [](T v) { return to_stored<std::int16_t>(v, DType::I16); }); break;
        case DType::U32: encode_each<std::uint32_t>(in, n, dst, [](T v) { return to_stored<std::uint32_t>(v, DType::U32); }); break;
        case DType::I32: encode_each<std::int32_t>(in, n, dst, [](T v) { return to_stored<std::int32_t>(v, DType::I32); }); break;
        case DType::U64: encode_each<std::uint64_t>(in, n, dst, [](T v) { return to_stored<std::uint64_t>(v, DType::U64); }); break;
        case DType::I64: encode_each<std::int64_t>(in, n, dst, [](T v) { return to_stored<std::int64_t>(v, DType::I64); }); break;
        case DType::F16: encode_each<std::uint16_t>(in, n, dst, to_f16); break;
        case DType::BF16: encode_each<std::uint16_t>(in, n, dst, to_bf16); break;
        case DType::F32: encode_each<float>(in, n, dst, [](T v) { return static_cast<float>(v); }); break;
        case DType::F64: encode_each<double>(in, n, dst, [](T v) { return static_cast<double>(v); }); break;
    }
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Tensor: a dtype, a shape and the elements' bytes (little-endian, row-major).

/// One tensor of a safetensors file: its dtype, shape and raw little-endian bytes.
class Tensor {
public:
    // An empty F32 tensor of shape [0].
    Tensor() = default;

    /// Zeros of `dtype` and `shape` (every dimension >= 0; shape [] is a scalar).
    Tensor(DType dtype, std::vector<Index> shape) : dtype_(dtype), shape_(std::move(shape)) {
        bytes_.assign(checked_byte_size(dtype_, shape_), std::byte{0});
    }

    /// Raw bytes, as they would sit in a file; shape_error unless there are numel * element size of them.
    Tensor(DType dtype, std::vector<Index> shape, std::vector<std::byte> bytes)
        : dtype_(dtype), shape_(std::move(shape)), bytes_(std::move(bytes)) {
        const std::size_t expected = checked_byte_size(dtype_, shape_);
        if (bytes_.size() != expected)
            throw shape_error("Tensor: " + std::to_string(bytes_.size()) + " bytes given for " +
                              std::string(dtype_name(dtype_)) + " " + detail::shape_text(shape_) + ", which takes " +
                              std::to_string(expected));
    }

    /// values (row-major) stored as `dtype`: floating-point values to F64/F32/F16/BF16 (rounded to
    /// nearest even), integers to any dtype (range-checked). shape_error if the count or a value is wrong.
    template <TensorValue T>
    static Tensor from_values(std::span<const T> values, std::vector<Index> shape, DType dtype = dtype_of<T>()) {
        Tensor t(dtype, std::move(shape));
        if (values.size() != static_cast<std::size_t>(t.numel()))
            throw shape_error("Tensor: " + std::to_string(values.size()) + " values given for shape " +
                              detail::shape_text(t.shape_));
        detail::encode(values.data(), values.size(), dtype, t.bytes_.data());
        return t;
    }
    /// A tensor of the given shape from values in row-major order, converted to `dtype`.
    template <TensorValue T>
    static Tensor from_values(const std::vector<T>& values, std::vector<Index> shape, DType dtype = dtype_of<T>()) {
        return from_values(std::span<const T>(values), std::move(shape), dtype);
    }

    /// A matrix (rows, cols), row-major, as a tensor of shape [rows, cols], or of `shape` if one is
    /// given (same element count; {} means [rows, cols], so a scalar needs from_values).
    template <typename Derived>
    static Tensor from_matrix(const Eigen::MatrixBase<Derived>& m,
                              DType dtype = dtype_of<typename Derived::Scalar>(), std::vector<Index> shape = {}) {
        const Matrix<typename Derived::Scalar> row_major = m;  // (rows, cols), row-major
        if (shape.empty()) shape = {row_major.rows(), row_major.cols()};
        return from_values(std::span<const typename Derived::Scalar>(row_major.data(), static_cast<std::size_t>(row_major.size())),
                           std::move(shape), dtype);
    }

    /// The element type.
    DType dtype() const { return dtype_; }
    /// The shape, outermost first.
    const std::vector<Index>& shape() const { return shape_; }
    /// The number of elements.
    Index numel() const { return static_cast<Index>(bytes_.size() / dtype_size(dtype_)); }
    /// The raw data, little-endian.
    std::span<const std::byte> bytes() const { return bytes_; }

    /// The elements, converted to T, into `out` (numel() of them, else shape_error).
    /// Reading as an integer type needs an integer dtype and values in range (else format_error).
    template <TensorValue T>
    void copy_to(std::span<T> out) const {
        if (out.size() != static_cast<std::size_t>(numel()))
            throw shape_error("Tensor: cannot copy " + std::to_string(numel()) + " elements of shape " +
                              detail::shape_text(shape_) + " into " + std::to_string(out.size()));
        detail::decode(dtype_, bytes_.data(), out.size(), out.data());
    }

    /// The elements converted to T, in row-major order.
    template <TensorValue T>
    std::vector<T> values() const {
        std::vector<T> out(static_cast<std::size_t>(numel()));
        copy_to(std::span<T>(out));
        return out;
    }

    /// A tensor of rank 0, 1 or 2 as a matrix: (1, 1), (1, n) or (rows, cols). For rank 3, see
    /// seqnn/io/layouts.hpp: sequence_from_tensor, state_from_tensor, min_rnn_state_from_tensor.
    template <typename Scalar>
    Matrix<Scalar> to_matrix() const {
        if (shape_.size() > 2)
            throw shape_error("Tensor: shape " + detail::shape_text(shape_) + " has rank " +
                              std::to_string(shape_.size()) +
                              "; to_matrix takes rank 0, 1 or 2 (seqnn/io/layouts.hpp converts PyTorch's layouts: "
                              "io::sequence_from_tensor reads (B, T, D), io::state_from_tensor (L, B, H), "
                              "io::min_rnn_state_from_tensor (B, 1, E))");
        const Index rows = shape_.size() == 2 ? shape_[0] : 1;
        const Index cols = shape_.empty() ? 1 : shape_.back();
        Matrix<Scalar> m(rows, cols);
        copy_to(std::span<Scalar>(m.data(), static_cast<std::size_t>(m.size())));
        return m;
    }

    /// Same dtype, shape and bytes.
    bool operator==(const Tensor&) const = default;

private:
    static std::size_t checked_byte_size(DType dtype, const std::vector<Index>& shape) {
        std::optional<std::uint64_t> n = dtype_size(dtype);
        for (Index d : shape) {
            if (d < 0) throw shape_error("Tensor: shape " + detail::shape_text(shape) + " has a negative dimension");
            if (n) n = detail::checked_multiply(*n, static_cast<std::uint64_t>(d));
        }
        if (!n || *n > static_cast<std::uint64_t>(std::numeric_limits<Index>::max()))
            throw shape_error("Tensor: shape " + detail::shape_text(shape) + " is too large");
        return static_cast<std::size_t>(*n);
    }

    DType dtype_ = DType::F32;
    std::vector<Index> shape_{0};
    std::vector<std::byte> bytes_;
};

// ---------------------------------------------------------------------------
// TensorMap: named tensors and string metadata, what one safetensors file holds.

/// The header key that holds the metadata; no tensor may have this name.
inline constexpr std::string_view metadata_key = "__metadata__";

/// Named tensors and string metadata: the contents of one safetensors file.
class TensorMap {
public:
    std::map<std::string, std::string> metadata;  ///< the header's "__metadata__"

    /// Adds the tensor `name`, replacing one of that name.
    void set(const std::string& name, Tensor tensor) {
        if (name == metadata_key) throw format_error("TensorMap: '__metadata__' is reserved and cannot name a tensor");
        tensors_.insert_or_assign(name, std::move(tensor));
    }
    /// Whether a tensor of that name is present.
    bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
    /// The tensor `name`; format_error if there is none.
    const Tensor& at(const std::string& name) const {
        auto it = tensors_.find(name);
        if (it == tensors_.end())
            throw format_error("TensorMap: no tensor named " + detail::quote_name(name) + " among its " +
                               std::to_string(tensors_.size()));
        return it->second;
    }
    /// Removes the tensor `name`; false if there was none.
    bool erase(const std::string& name) { return tensors_.erase(name) != 0; }

    /// The number of tensors.
    std::size_t size() const { return tensors_.size(); }
    /// Whether there are no tensors.
    bool empty() const { return tensors_.empty(); }
    /// (name, tensor) pairs in name order.
    auto begin() const { return tensors_.begin(); }
    /// The end of the (name, tensor) pairs.
    auto end() const { return tensors_.end(); }
    /// The tensors' names in sorted order.
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& [name, tensor] : tensors_) out.push_back(name);
        return out;
    }

    /// Same tensors (names, dtypes, shapes, bytes) and metadata.
    bool operator==(const TensorMap&) const = default;

private:
    std::map<std::string, Tensor> tensors_;
};

// ---------------------------------------------------------------------------
// Reading

inline constexpr std::uint64_t max_header_size = 100'000'000;  ///< bytes, as in the reference reader
/// The most dimensions a tensor may have.
inline constexpr std::size_t max_rank = 64;

namespace detail {

struct Entry {
    std::string name;
    DType dtype;
    std::vector<Index> shape;
    std::uint64_t begin, end;
};

inline const char* json_kind(const nlohmann::json& j) { return j.type_name(); }

// Checks the header's structure in one linear pass, through nlohmann's SAX interface: no
// object repeats a key and nothing nests deeper than {"name": {"shape": [...]}}. Each open
// object keeps a hash set of its keys, so n entries take O(n) time. (A parser callback
// would not do: after each entry nlohmann's callback parser rescans the whole enclosing
// object, which makes a header of many entries take quadratic time.)
class HeaderChecker : public nlohmann::json_sax<nlohmann::json> {
public:
    std::string problem;  // why the header was rejected; empty if it was not

    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override {
        if (!open_container()) return false;
        keys_.emplace_back();
        objects_.push_back(true);
        return true;
    }
    bool key(string_t& key) override {
        if (!keys_.back().insert(key).second) {
            problem = "header repeats the key " + quote_name(key) +
                      (keys_.size() == 1 ? std::string() : std::string(" inside an entry"));
            return false;
        }
        return true;
    }
    bool end_object() override {
        keys_.pop_back();
        objects_.pop_back();
        return true;
    }
    bool start_array(std::size_t) override {
        if (!open_container()) return false;
        objects_.push_back(false);
        return true;
    }
    bool end_array() override {
        objects_.pop_back();
        return true;
    }
    // Syntax errors are left to the parse that follows, which says where they are.
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

private:
    // A container opened inside `objects_.size()` others: the header (0), an entry (1), a shape (2).
    bool open_container() {
        if (objects_.size() > 2) {
            problem = "header nests deeper than a tensor entry's shape array";
            return false;
        }
        return true;
    }

    std::vector<std::unordered_set<std::string>> keys_;  // the keys seen so far in each open object
    std::vector<bool> objects_;                          // each open container: an object (or an array)
};

// Parses the header text: a JSON object with no repeated key anywhere and nothing nested
// deeper than {"name": {"shape": [...]}}. Two linear passes: the check, then the parse.
inline nlohmann::json parse_header(std::string_view text, const std::string& source) {
    using json = nlohmann::json;
    // The JSON parser takes a NUL byte for the end of its input and would ignore what follows;
    // valid JSON never holds a raw NUL, so refuse it rather than let bytes hide behind one.
    if (text.find('\0') != std::string_view::npos)
        throw format_error(source + ": header is not valid JSON: it holds a NUL byte at offset " +
                           std::to_string(text.find('\0')));
    HeaderChecker checker;
    json::sax_parse(text.begin(), text.end(), &checker);
    if (!checker.problem.empty()) throw format_error(source + ": " + checker.problem);
    try {
        return json::parse(text.begin(), text.end());
    } catch (const json::exception& e) {
        std::string what = e.what();
        if (what.size() > 300) what = what.substr(0, 300) + "...";
        throw format_error(source + ": header is not valid JSON: " + what);
    }
}

inline std::uint64_t unsigned_field(const nlohmann::json& j, const std::string& where) {
    if (!j.is_number_unsigned()) throw format_error(where + " must hold non-negative integers, found a " + json_kind(j) +
                                                    (j.is_number_integer() ? " below zero" : ""));
    return j.get<std::uint64_t>();
}

// One tensor entry of the header, checked against a data section of data_size bytes.
inline Entry parse_entry(const std::string& name, const nlohmann::json& j, std::uint64_t data_size,
                         const std::string& source) {
    const std::string where = source + ": tensor " + quote_name(name);
    if (!j.is_object()) throw format_error(where + ": entry is a JSON " + json_kind(j) + ", expected an object");
    for (const auto& [field, value] : j.items())
        if (field != "dtype" && field != "shape" && field != "data_offsets")
            throw format_error(where + ": unexpected field " + quote_name(field) +
                               " (an entry has only dtype, shape and data_offsets)");
    for (const char* field : {"dtype", "shape", "data_offsets"})
        if (!j.contains(field)) throw format_error(where + ": missing field '" + field + "'");

    Entry e{name, DType::F32, {}, 0, 0};
    const auto& dtype = j.at("dtype");
    if (!dtype.is_string()) throw format_error(where + ": dtype is a JSON " + json_kind(dtype) + ", expected a string");
    const auto& dtype_text = dtype.get_ref<const std::string&>();
    const auto parsed = dtype_from_name(dtype_text);
    if (!parsed) throw format_error(where + ": unsupported dtype " + quote_name(dtype_text));
    e.dtype = *parsed;

    const auto& shape = j.at("shape");
    if (!shape.is_array()) throw format_error(where + ": shape is a JSON " + json_kind(shape) + ", expected an array");
    if (shape.size() > max_rank)
        throw format_error(where + ": shape has rank " + std::to_string(shape.size()) + ", more than " +
                           std::to_string(max_rank));
    std::optional<std::uint64_t> bytes = dtype_size(e.dtype);
    for (const auto& d : shape) {
        const std::uint64_t dim = unsigned_field(d, where + ": shape");
        if (dim > static_cast<std::uint64_t>(std::numeric_limits<Index>::max()))
            throw format_error(where + ": shape dimension " + std::to_string(dim) + " is too large");
        e.shape.push_back(static_cast<Index>(dim));
        if (bytes) bytes = checked_multiply(*bytes, dim);
    }
    if (!bytes)
        throw format_error(where + ": shape " + shape_text(e.shape) + " of " + std::string(dtype_name(e.dtype)) +
                           " overflows 64 bits of bytes");

    const auto& offsets = j.at("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2)
        throw format_error(where + ": data_offsets must be an array [begin, end]");
    e.begin = unsigned_field(offsets[0], where + ": data_offsets");
    e.end = unsigned_field(offsets[1], where + ": data_offsets");
    if (e.begin > e.end)
        throw format_error(where + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                           "] end before they begin");
    if (e.end > data_size)
        throw format_error(where + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                           "] run past the end of the " + std::to_string(data_size) + "-byte data section");
    if (e.end - e.begin != *bytes)
        throw format_error(where + ": " + std::string(dtype_name(e.dtype)) + " " + shape_text(e.shape) + " takes " +
                           std::to_string(*bytes) + " bytes but data_offsets [" + std::to_string(e.begin) + ", " +
                           std::to_string(e.end) + "] hold " + std::to_string(e.end - e.begin));
    return e;
}

}  // namespace detail

namespace detail {

// The header length in the first 8 of `file_size` bytes, checked against the file and the cap.
inline std::uint64_t header_length(const std::byte* first8, std::uint64_t file_size, const std::string& source) {
    const auto n = load_le<std::uint64_t>(first8);
    if (n > max_header_size)
        throw format_error(source + ": header length " + std::to_string(n) + " exceeds the limit of " +
                           std::to_string(max_header_size) + " bytes");
    if (n > file_size - 8)
        throw format_error(source + ": header length " + std::to_string(n) + " runs past the end of the " +
                           std::to_string(file_size) + "-byte input");
    return n;
}

// What a header says: the metadata, and every tensor's place in a data section of
// data_size bytes, all checked; the entries sorted by offset, so they tile [0, data_size).
struct Layout {
    std::map<std::string, std::string> metadata;
    std::vector<Entry> entries;
};

inline Layout parse_layout(std::string_view header_text, std::uint64_t data_size, const std::string& source) {
    const nlohmann::json header = parse_header(header_text, source);
    if (!header.is_object()) throw format_error(source + ": header is a JSON " + json_kind(header) + ", expected an object");

    Layout layout;
    for (const auto& [name, value] : header.items()) {
        if (name == metadata_key) {
            if (!value.is_object())
                throw format_error(source + ": __metadata__ is a JSON " + json_kind(value) +
                                   ", expected an object of strings");
            for (const auto& [key, text] : value.items()) {
                if (!text.is_string())
                    throw format_error(source + ": __metadata__ " + quote_name(key) + " is a JSON " + json_kind(text) +
                                       ", expected a string");
                layout.metadata.emplace(key, text.get<std::string>());
            }
            continue;
        }
        layout.entries.push_back(parse_entry(name, value, data_size, source));
    }

    // The tensors must tile the data section: sorted by offset, no overlap, no hole, nothing after.
    auto& entries = layout.entries;
    std::sort(entries.begin(), entries.end(),
              [](const auto& a, const auto& b) { return std::pair(a.begin, a.end) < std::pair(b.begin, b.end); });
    std::uint64_t covered = 0;  // bytes [0, covered) belong to the tensors so far
    const Entry* previous = nullptr;
    for (const auto& e : entries) {
        if (e.begin < covered)
            throw format_error(source + ": tensors " + quote_name(previous->name) + " [" + std::to_string(previous->begin) +
                               ", " + std::to_string(previous->end) + ") and " + quote_name(e.name) + " [" +
                               std::to_string(e.begin) + ", " + std::to_string(e.end) + ") overlap");
        if (e.begin > covered)
            throw format_error(source + ": bytes [" + std::to_string(covered) + ", " + std::to_string(e.begin) +
                               ") of the data section belong to no tensor");
        covered = e.end;
        previous = &e;
    }
    if (covered != data_size)
        throw format_error(source + ": the data section has " + std::to_string(data_size - covered) +
                           " bytes after the last tensor (which ends at " + std::to_string(covered) + ")");
    return layout;
}

}  // namespace detail

/// The tensors and metadata in `bytes`, a whole safetensors file. `source` names it in errors.
inline TensorMap parse_safetensors(std::span<const std::byte> bytes, const std::string& source = "safetensors") {
    if (bytes.size() < 8)
        throw format_error(source + ": " + std::to_string(bytes.size()) +
                           " bytes, too short for the 8-byte header length");
    const auto header_size = static_cast<std::size_t>(detail::header_length(bytes.data(), bytes.size(), source));
    const auto header_text = bytes.subspan(8, header_size);
    const auto data = bytes.subspan(8 + header_size);
    detail::Layout layout = detail::parse_layout(
        std::string_view(reinterpret_cast<const char*>(header_text.data()), header_text.size()), data.size(), source);

    TensorMap out;
    out.metadata = std::move(layout.metadata);
    for (auto& e : layout.entries) {
        const auto tensor_bytes = data.subspan(static_cast<std::size_t>(e.begin), static_cast<std::size_t>(e.end - e.begin));
        out.set(e.name, Tensor(e.dtype, std::move(e.shape), std::vector<std::byte>(tensor_bytes.begin(), tensor_bytes.end())));
    }
    return out;
}

namespace detail {

// A file descriptor that closes itself.
class FileHandle {
public:
    explicit FileHandle(int fd) : fd_(fd) {}
    ~FileHandle() {
        if (fd_ >= 0) ::close(fd_);
    }
    FileHandle(const FileHandle&) = delete;
    FileHandle& operator=(const FileHandle&) = delete;
    int get() const { return fd_; }
    // Closes now and says whether close succeeded (a write error can surface only here).
    bool close() {
        const int fd = fd_;
        fd_ = -1;
        return ::close(fd) == 0;
    }

private:
    int fd_;
};

inline std::string errno_text() { return std::generic_category().message(errno); }

// Reads exactly n bytes, retrying short reads and interruptions.
inline bool read_fully(int fd, std::byte* to, std::uint64_t n) {
    while (n > 0) {
        const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, std::uint64_t(1) << 30));
        const ::ssize_t got = ::read(fd, to, chunk);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return false;
        to += got;
        n -= static_cast<std::uint64_t>(got);
    }
    return true;
}

// Writes exactly n bytes, retrying short writes and interruptions.
inline bool write_fully(int fd, const std::byte* from, std::size_t n) {
    while (n > 0) {
        const ::ssize_t put = ::write(fd, from, std::min<std::size_t>(n, std::size_t(1) << 30));
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) return false;
        from += put;
        n -= static_cast<std::size_t>(put);
    }
    return true;
}

}  // namespace detail

/// The tensors and metadata of the safetensors file at `path`. Only a regular file is read:
/// the file is opened without blocking and checked with fstat before anything is read, so a
/// FIFO, a device or a directory is a format_error rather than a read that never returns.
/// The header is read and checked first; then each tensor's bytes go straight into its
/// Tensor (the file is never held twice).
inline TensorMap load_safetensors(const std::filesystem::path& path) {
    const std::string source = path.string();
    detail::FileHandle file(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (file.get() < 0) throw format_error(source + ": cannot open the file for reading: " + detail::errno_text());
    struct ::stat info {};
    if (::fstat(file.get(), &info) != 0) throw format_error(source + ": cannot read the file's size: " + detail::errno_text());
    if (!S_ISREG(info.st_mode))
        throw format_error(source + ": not a regular file (a directory, FIFO, socket or device): refused");
    // Reads of a regular file never block; clear the flag all the same, for plain reads.
    ::fcntl(file.get(), F_SETFL, ::fcntl(file.get(), F_GETFL) & ~O_NONBLOCK);
    const auto file_size = static_cast<std::uint64_t>(info.st_size);
    const auto read = [&](std::byte* to, std::uint64_t n, const char* what) {
        if (!detail::read_fully(file.get(), to, n))
            throw format_error(source + ": reading " + what + " failed (" + std::to_string(n) + " bytes)");
    };

    if (file_size < 8)
        throw format_error(source + ": " + std::to_string(file_size) + " bytes, too short for the 8-byte header length");
    std::array<std::byte, 8> first8;
    read(first8.data(), 8, "the header length");
    const std::uint64_t header_size = detail::header_length(first8.data(), file_size, source);
    std::string header_text(static_cast<std::size_t>(header_size), ' ');
    read(reinterpret_cast<std::byte*>(header_text.data()), header_size, "the header");
    detail::Layout layout = detail::parse_layout(header_text, file_size - 8 - header_size, source);

    TensorMap out;
    out.metadata = std::move(layout.metadata);
    for (auto& e : layout.entries) {  // in file order: each starts where the previous ended
        std::vector<std::byte> bytes(static_cast<std::size_t>(e.end - e.begin));
        read(bytes.data(), bytes.size(), "tensor data");
        out.set(e.name, Tensor(e.dtype, std::move(e.shape), std::move(bytes)));
    }
    return out;
}

// ---------------------------------------------------------------------------
// Writing

/// `tensors` as the bytes of a safetensors file.
inline std::vector<std::byte> serialize_safetensors(const TensorMap& tensors) {
    // Data layout: largest element size first, then by name, so every tensor is aligned to its element size.
    std::vector<std::pair<const std::string*, const Tensor*>> order;
    for (const auto& [name, tensor] : tensors) order.emplace_back(&name, &tensor);
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
        return dtype_size(a.second->dtype()) > dtype_size(b.second->dtype());
    });

    nlohmann::json header = nlohmann::json::object();
    if (!tensors.metadata.empty()) header[std::string(metadata_key)] = tensors.metadata;
    std::uint64_t offset = 0;
    for (const auto& [name, tensor] : order) {
        const std::uint64_t end = offset + tensor->bytes().size();
        header[*name] = {{"dtype", dtype_name(tensor->dtype())}, {"shape", tensor->shape()}, {"data_offsets", {offset, end}}};
        offset = end;
    }
    std::string text;
    try {
        text = header.dump();
    } catch (const nlohmann::json::exception& e) {  // a name or metadata string that is not UTF-8
        throw format_error(std::string("safetensors: cannot write the header: ") + e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');

    std::vector<std::byte> out(8 + text.size() + offset);
    detail::store_le<std::uint64_t>(text.size(), out.data());
    std::memcpy(out.data() + 8, text.data(), text.size());
    std::byte* data = out.data() + 8 + text.size();
    for (const auto& [name, tensor] : order) {
        const auto bytes = tensor->bytes();
        if (!bytes.empty()) std::memcpy(data, bytes.data(), bytes.size());
        data += bytes.size();
    }
    return out;
}

namespace detail {

// A name for a temporary file beside `path` that no other file has yet: "<path>.tmp-<16 hex
// digits>", the digits random. Callers create it with O_EXCL and try another on EEXIST.
inline std::filesystem::path temporary_beside(const std::filesystem::path& path) {
    static std::atomic<std::uint64_t> counter{0};
    std::random_device device;
    const std::uint64_t bits = (std::uint64_t(device()) << 32) ^ std::uint64_t(device()) ^
                               (counter.fetch_add(1) * 0x9e3779b97f4a7c15ULL) ^ std::uint64_t(::getpid());
    char digits[17];
    std::snprintf(digits, sizeof digits, "%016llx", static_cast<unsigned long long>(bits));
    std::filesystem::path temporary = path;
    temporary += ".tmp-";
    temporary += digits;
    return temporary;
}

// fsync of the directory that holds `path`, so that a rename into it is durable.
inline bool sync_directory_of(const std::filesystem::path& path) {
    std::filesystem::path dir = path.parent_path();
    if (dir.empty()) dir = ".";
    FileHandle handle(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    return handle.get() >= 0 && ::fsync(handle.get()) == 0;
}

}  // namespace detail

/// Writes `tensors` to `path` as safetensors, atomically and durably:
///   - the bytes go to a new temporary file beside `path`, created exclusively
///     (O_CREAT | O_EXCL | O_NOFOLLOW, a random name): an existing file, symlink or FIFO of
///     any name is never opened, followed or overwritten;
///   - the temporary file is flushed to disk (fsync), renamed over `path`, and the directory
///     is flushed, so once this returns the new file survives a crash;
///   - a crash or an error before the rename leaves `path` as it was (the temporary file is
///     removed on error).
/// format_error on failure.
inline void save_safetensors(const std::filesystem::path& path, const TensorMap& tensors) {
    const std::vector<std::byte> bytes = serialize_safetensors(tensors);
    std::filesystem::path temporary;
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
        temporary = detail::temporary_beside(path);
        fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            throw format_error(path.string() + ": cannot open a new temporary file beside it for writing (" + temporary.string() +
                               "): " + detail::errno_text());
    }
    if (fd < 0) throw format_error(path.string() + ": cannot find a free temporary file name beside it");
    detail::FileHandle file(fd);
    const auto give_up = [&](const std::string& what) {
        const std::string reason = detail::errno_text();
        std::error_code ignored;
        std::filesystem::remove(temporary, ignored);
        throw format_error(path.string() + ": " + what + ": " + reason);
    };
    if (!detail::write_fully(file.get(), bytes.data(), bytes.size()))
        give_up("writing " + std::to_string(bytes.size()) + " bytes to " + temporary.string() + " failed");
    if (::fsync(file.get()) != 0) give_up("flushing " + temporary.string() + " to disk failed");
    if (!file.close()) give_up("closing " + temporary.string() + " failed");
    if (::rename(temporary.c_str(), path.c_str()) != 0) give_up("cannot move the written file into place");
    if (!detail::sync_directory_of(path))
        throw format_error(path.string() + ": written, but flushing its directory to disk failed: " +
                           detail::errno_text());
}

}  // namespace seqnn::io
