// The exceptions seqnn throws, and size arithmetic that throws instead of overflowing.
// Sizes come from callers (options, batch and step counts, files): every product or sum
// of them that decides an allocation or an index goes through checked_mul / checked_add,
// so that a huge size is a shape_error and never wraps into a small, wrong one.
// errors.hpp includes this header; types.hpp uses it to check Sequence's sizes.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace seqnn {

// Wrong shape, empty batch, a bad hyperparameter or another misuse of a layer's API.
class shape_error : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

// A weight file or checkpoint that cannot be read.
class format_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Throws shape_error("<where>: <what>").
[[noreturn]] inline void fail(const std::string& where, const std::string& what) {
    throw shape_error(where + ": " + what);
}

/// a * b for sizes a, b >= 0; shape_error naming `where` if either is negative or the
/// product does not fit an Eigen::Index.
inline Eigen::Index checked_mul(const std::string& where, Eigen::Index a, Eigen::Index b) {
    if (a < 0 || b < 0)
        fail(where, "size " + std::to_string(a < 0 ? a : b) + " is negative");
    if (a != 0 && b > std::numeric_limits<Eigen::Index>::max() / a)
        fail(where, "size " + std::to_string(a) + " * " + std::to_string(b) + " overflows a 64-bit index");
    return a * b;
}

/// a + b for sizes a, b >= 0, checked as checked_mul.
inline Eigen::Index checked_add(const std::string& where, Eigen::Index a, Eigen::Index b) {
    if (a < 0 || b < 0)
        fail(where, "size " + std::to_string(a < 0 ? a : b) + " is negative");
    if (b > std::numeric_limits<Eigen::Index>::max() - a)
        fail(where, "size " + std::to_string(a) + " + " + std::to_string(b) + " overflows a 64-bit index");
    return a + b;
}

/// The largest element count seqnn allocates for one matrix: 2^48 (far beyond any memory;
/// it keeps products of a few such sizes clear of overflow).
inline constexpr Eigen::Index max_elements = Eigen::Index(1) << 48;

/// A (rows, cols) matrix's element count, checked: shape_error unless both are >= 0 and
/// rows * cols is at most max_elements.
inline Eigen::Index checked_elements(const std::string& where, Eigen::Index rows, Eigen::Index cols) {
    const Eigen::Index n = checked_mul(where, rows, cols);
    if (n > max_elements)
        fail(where, "a (" + std::to_string(rows) + ", " + std::to_string(cols) + ") matrix has more than 2^48 elements");
    return n;
}

/// A number as an error message shows it: integers without a fraction, others in shortest form.
inline std::string number_text(double value) {
    std::ostringstream out;
    out << value;
    return out.str();
}

/// A hyperparameter that must be a finite number (not NaN or infinite).
inline void check_finite(const std::string& where, const std::string& what, double value) {
    if (!std::isfinite(value)) fail(where, what + " must be a finite number, got " + number_text(value));
}

/// floor(base * factor) as a size, e.g. D * expansion: shape_error unless the factor is
/// finite and positive and the result is a positive size of at most max_elements.
inline Eigen::Index checked_scaled_size(const std::string& where, const std::string& what, Eigen::Index base,
                                        double factor) {
    check_finite(where, what, factor);
    const double size = std::floor(static_cast<double>(base) * factor);
    if (!(size >= 1.0) || size > static_cast<double>(max_elements))
        fail(where, what + " " + number_text(factor) + " times " + std::to_string(base) + " gives " +
                        number_text(size) + ", not a size in [1, 2^48]");
    return static_cast<Eigen::Index>(size);
}

}  // namespace seqnn
