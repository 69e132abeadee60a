// kernels/scan.hpp's and kernels/log_scan.hpp's scans on whole seqnn::Sequence batches:
// scan, scan_grad, log_scan and log_scan_grad allocate and return their outputs, where
// the engine writes into the caller's matrices. A padded batch (the first operand's
// Sequence::lengths) scans each sequence to its own end; the outputs carry its lengths.
#pragma once

#include "seqnn/core/errors.hpp"
#include "seqnn/core/types.hpp"
#include "seqnn/kernels/log_scan.hpp"
#include "seqnn/kernels/scan.hpp"

#include <string>

namespace seqnn {

/// The output of scan() and log_scan(): h for every step, and the last step's h.
template <typename Scalar>
struct ScanResult {
    Sequence<Scalar> h;     ///< (B*T, D)
    Matrix<Scalar> h_last;  ///< (B, D)
};

/// The gradients scan_grad() and log_scan_grad() return: of a, b and h0.
template <typename Scalar>
struct ScanGrad {
    Sequence<Scalar> da;  ///< (B*T, D)
    Sequence<Scalar> db;  ///< (B*T, D)
    Matrix<Scalar> dh0;   ///< (B, D); empty when no h0 was given
};

namespace scan_detail {
// x is a batch of the same B, T and D as ref, itself a well-formed batch, and carries
// ref's lengths or none.
template <typename Scalar>
void check_pair(const std::string& where, const std::string& what, const Sequence<Scalar>& x,
                const Sequence<Scalar>& ref, const std::string& ref_name) {
    check_sequence(where, ref_name, ref, ref.features());
    check_lengths(where, ref.lengths, ref.batch, ref.steps);
    check_sequence(where, what, x, ref.features());
    if (x.batch != ref.batch || x.steps != ref.steps)
        fail(where, what + " " + shape_string(x) + " does not match " + ref_name + " " + shape_string(ref));
    if (x.padded() && x.lengths != ref.lengths)
        fail(where, what + "'s lengths differ from " + ref_name + "'s");
}
// A (B*T, D) result shaped like ref, with its lengths.
template <typename Scalar>
Sequence<Scalar> like(const Sequence<Scalar>& ref) {
    Sequence<Scalar> out(Matrix<Scalar>(ref.data.rows(), ref.features()), ref.batch, ref.steps);
    out.lengths = ref.lengths;
    return out;
}
template <typename Scalar>
ConstMatrixRef<Scalar> optional_ref(const Matrix<Scalar>* m) {
    static const Matrix<Scalar> none;
    return m ? ConstMatrixRef<Scalar>(*m) : ConstMatrixRef<Scalar>(none);
}
}  // namespace scan_detail

/// h_t = a_t * h_{t-1} + b_t; h0 (B, D) or nullptr for zeros. With a.lengths, each
/// sequence stops at its own end: h is zero past it and h_last is its last step's h.
/// options.reverse scans each sequence from its end (kernels/scan.hpp).
template <typename Scalar>
ScanResult<Scalar> scan(const Sequence<Scalar>& a, const Sequence<Scalar>& b, const Matrix<Scalar>* h0 = nullptr,
                        ScanOptions options = {}) {
    scan_detail::check_pair("scan", "b", b, a, "a");
    ScanResult<Scalar> out{scan_detail::like(a), Matrix<Scalar>(a.batch, a.features())};
    scan_forward<Scalar>(out.h.data, out.h_last, a.data, b.data, scan_detail::optional_ref(h0), a.batch, a.steps,
                         options, a.lengths);
    return out;
}

/// Gradients of scan(a, b, h0) given dL/dh and dL/dh_last (nullptr: zero); a.lengths and
/// options as in that call.
template <typename Scalar>
ScanGrad<Scalar> scan_grad(const Sequence<Scalar>& dh, const Matrix<Scalar>* dh_last, const Sequence<Scalar>& a,
                           const Sequence<Scalar>& h, const Matrix<Scalar>* h0 = nullptr, ScanOptions options = {}) {
    scan_detail::check_pair("scan_grad", "h", h, a, "a");
    scan_detail::check_pair("scan_grad", "dh", dh, a, "a");
    ScanGrad<Scalar> out{scan_detail::like(a), scan_detail::like(a),
                         h0 ? Matrix<Scalar>(a.batch, a.features()) : Matrix<Scalar>()};
    scan_backward<Scalar>(out.da.data, out.db.data, out.dh0, dh.data, scan_detail::optional_ref(dh_last), a.data,
                          h.data, scan_detail::optional_ref(h0), a.batch, a.steps, options, a.lengths);
    return out;
}

/// log h from log a, log b and log h0 (nullptr: h0 = 0). h is ScanResult::h, in log space
/// (-inf past each end of a padded batch, log_a.lengths).
template <typename Scalar>
ScanResult<Scalar> log_scan(const Sequence<Scalar>& log_a, const Sequence<Scalar>& log_b,
                            const Matrix<Scalar>* log_h0 = nullptr, ScanOptions options = {}) {
    scan_detail::check_pair("log_scan", "log_b", log_b, log_a, "log_a");
    ScanResult<Scalar> out{scan_detail::like(log_a), Matrix<Scalar>(log_a.batch, log_a.features())};
    log_scan_forward<Scalar>(out.h.data, out.h_last, log_a.data, log_b.data, scan_detail::optional_ref(log_h0),
                             log_a.batch, log_a.steps, options, log_a.lengths);
    return out;
}

/// Gradients of log_scan w.r.t. log a, log b and log h0 (ScanGrad's da, db, dh0);
/// log_a.lengths and options as in that call.
template <typename Scalar>
ScanGrad<Scalar> log_scan_grad(const Sequence<Scalar>& dlog_h, const Matrix<Scalar>* dlog_h_last,
                               const Sequence<Scalar>& log_a, const Sequence<Scalar>& log_b,
                               const Matrix<Scalar>* log_h0 = nullptr, ScanOptions options = {}) {
    scan_detail::check_pair("log_scan_grad", "log_b", log_b, log_a, "log_a");
    scan_detail::check_pair("log_scan_grad", "dlog_h", dlog_h, log_a, "log_a");
    ScanGrad<Scalar> out{scan_detail::like(log_a), scan_detail::like(log_a),
                         log_h0 ? Matrix<Scalar>(log_a.batch, log_a.features()) : Matrix<Scalar>()};
    log_scan_backward<Scalar>(out.da.data, out.db.data, out.dh0, dlog_h.data, scan_detail::optional_ref(dlog_h_last),
                              log_a.data, log_b.data, scan_detail::optional_ref(log_h0), log_a.batch, log_a.steps,
                              options, log_a.lengths);
    return out;
}

}  // namespace seqnn
