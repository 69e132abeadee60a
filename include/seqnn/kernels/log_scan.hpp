// The log-space form of kernels/scan.hpp's recurrence (Heinsen 2023, "Efficient
// Parallelization of a Ubiquitous Sequential Computation"), for a in (0, 1] and b > 0:
//   a*_t = sum_{s<=t} log a_s,   v_s = log b_s - a*_s   (v_{-1} = log h0, a*_{-1} = 0),
//   log h_t = a*_t + LSE_t,      LSE_t = log sum_{-1<=s<=t} exp(v_s)  (logcumsumexp).
// Sequential in time per channel (as the paper's cumsum/logcumsumexp evaluate it on
// a CPU), vectorised over channels and parallel across (sequence, channel block).
//
// Kept for fidelity to the paper and for comparison: its fp32 error grows with T (see
// tests/test_scan.cpp), where the linear-space scan's does not.
//
// Lengths and ScanOptions::reverse as in kernels/scan.hpp: each sequence is scanned to its
// own end (as if log a = 0 and log b = -inf past it, which log_add_exp carries exactly) and
// log h is -inf (h = 0) past the end; reversed, from its last step down to step 0.
//
//   log_scan_forward   log h, log h_last <- log a, log b, log h0
//   log_scan_backward  dlog_a, dlog_b, dlog_h0 <- dlog_h, dlog_h_last, log a, log b, log h0
//   log_scan_plan      how a call of these sizes runs (sequential, or the channels split)
#pragma once

#include "seqnn/kernels/scan.hpp"

#include <cmath>
#include <limits>
#include <span>
#include <string>

namespace seqnn {

namespace scan_detail {

// acc = log(exp(acc) + exp(v)) = max + log1p(exp(-|acc - v|)), in place, vectorised;
// -inf + -inf = -inf (the formula gives NaN there: such entries are patched afterwards).
// mx is scratch.
template <typename S>
void log_add_exp(Buf<S>& acc, const Buf<S>& v, Buf<S>& mx) {
    constexpr S ninf = -std::numeric_limits<S>::infinity();
    mx = acc.max(v);
    acc = mx + (-(acc - v).abs()).exp().log1p();
    if (std::isnan(acc.sum()))
        for (Index c = 0; c < acc.size(); ++c)
            if (std::isnan(acc[c]) && mx[c] == ninf) acc[c] = ninf;
}

// The forward recurrence over one (sequence, channel block) of n channels: for t = 0..T-1,
// a*_t and LSE_t (with lse starting from log h0 when lh0 is not null), handed to
// row(t, astar, lse). log_scan_forward writes log h_t = a*_t + LSE_t; the backward keeps
// both. row is a lambda: it inlines, so the loop is what it would be written out.
template <typename S, typename Row>
void log_forward_run(Rows<const S> la, Rows<const S> lb, const S* lh0, Index T, Index n, const Row& row) {
    Buf<S> astar = CRow<S>(la.row(0), n);  // a*_0
    Buf<S> lse = CRow<S>(lb.row(0), n) - astar;  // v_0
    Buf<S> v(n), mx(n);
    if (lh0) log_add_exp(lse, v = CRow<S>(lh0, n), mx);
    row(0, astar, lse);
    for (Index t = 1; t < T; ++t) {
        astar += CRow<S>(la.row(t), n);
        v = CRow<S>(lb.row(t), n) - astar;
        log_add_exp(lse, v, mx);
        row(t, astar, lse);
    }
}

}  // namespace scan_detail

/// How log_scan_forward and log_scan_backward, called now with these sizes and options,
/// would run (sequentially, or split by channels: the log-space scan has no time split).
template <typename Scalar>
ScanPlan log_scan_plan(Index B, Index T, Index D, const ScanOptions& options = {}) {
    return scan_detail::make_plan<Scalar>(options, B, T, D, false);
}

///   log_h (B*T, D) out; log_h_last (B, D) out (empty: skipped); log_a, log_b (B*T, D);
///   log_h0 (B, D) or empty (h0 = 0).
///   lengths: empty, or B values in [1, T]: sequence s ends after lengths[s] steps;
///   log_h_last is then log h at its last step and log h is -inf past its end.
///   options.reverse: from each sequence's last step down to step 0 (kernels/scan.hpp).
template <typename Scalar>
void log_scan_forward(MatrixRef<Scalar> log_h, MatrixRef<Scalar> log_h_last, ConstMatrixRef<Scalar> log_a,
                      ConstMatrixRef<Scalar> log_b, ConstMatrixRef<Scalar> log_h0, Index B, Index T,
                      ScanOptions options = {}, std::span<const Index> lengths = {}) {
    using namespace scan_detail;
    const Index D = check_operands("log_scan_forward", B, T, {{"log_a", log_a}, {"log_b", log_b}, {"log_h", log_h}},
                                   {{"log_h0", log_h0}, {"log_h_last", log_h_last}});
    check_scan_lengths("log_scan_forward", lengths, B, T);

    const Layout layout{T, lengths, options.reverse};
    const Rows<Scalar> lhr = rows_of(log_h);
    const Rows<const Scalar> lar = rows_of(log_a), lbr = rows_of(log_b);
    const ScanPlan plan = make_plan<Scalar>(options, B, T, D, false);
    for_each_channel_block(plan, B, D, [&](Index s, Index c, Index n) {
        const Rows<Scalar> lh = layout.rows(lhr, s, c);
        log_forward_run<Scalar>(layout.rows(lar, s, c), layout.rows(lbr, s, c), state_row(log_h0, s, c),
                                layout.length(s), n, [&](Index t, const Buf<Scalar>& astar, const Buf<Scalar>& lse) {
                                    Row<Scalar>(lh.row(t), n) = astar + lse;
                                });
        layout.fill_past_end(lhr, s, c, n, -std::numeric_limits<Scalar>::infinity());
    });
    copy_last(log_h_last, Rows<const Scalar>{lhr.data, lhr.stride}, B, layout);
}

/// Gradients of the log-space scan, as autograd takes them through cumsum and
/// logcumsumexp (the latter in log space, split by the sign of the gradient):
///   dL/dv_s    = sum_{t>=s} G_t exp(v_s - LSE_t),   G_t = dL/dlog h_t
///   dL/dlog b  = dL/dv,   dL/dlog h0 = dL/dv_{-1},
///   dL/dlog a_r = sum_{t>=r} (G_t - dL/dv_t)        (a*_t enters log h_t and v_t).
/// The forward is recomputed (a* and LSE) into the outputs' memory, so nothing is saved.
///   dlog_a, dlog_b (B*T, D) out, distinct from the inputs; dlog_h0 (B, D) out (empty:
///   skipped); dlog_h (B*T, D); dlog_h_last (B, D) or empty; log_a, log_b, log_h0 as in the forward.
///   lengths and options.reverse as in the forward: dlog_h_last enters at each sequence's
///   last step (in scan order), dlog_h is not read past an end, and dlog_a, dlog_b are zero there.
template <typename Scalar>
void log_scan_backward(MatrixRef<Scalar> dlog_a, MatrixRef<Scalar> dlog_b, MatrixRef<Scalar> dlog_h0,
                       ConstMatrixRef<Scalar> dlog_h, ConstMatrixRef<Scalar> dlog_h_last,
                       ConstMatrixRef<Scalar> log_a, ConstMatrixRef<Scalar> log_b, ConstMatrixRef<Scalar> log_h0,
                       Index B, Index T, ScanOptions options = {}, std::span<const Index> lengths = {}) {
    using namespace scan_detail;
    const Index D = check_operands("log_scan_backward", B, T,
                                   {{"log_a", log_a}, {"log_b", log_b}, {"dlog_h", dlog_h}, {"dlog_a", dlog_a},
                                    {"dlog_b", dlog_b}},
                                   {{"log_h0", log_h0}, {"dlog_h_last", dlog_h_last}, {"dlog_h0", dlog_h0}});
    check_scan_lengths("log_scan_backward", lengths, B, T);

    const Layout layout{T, lengths, options.reverse};
    const Rows<Scalar> dar = rows_of(dlog_a), dbr = rows_of(dlog_b);
    const Rows<const Scalar> gr = rows_of(dlog_h), lar = rows_of(log_a), lbr = rows_of(log_b);
    const ScanPlan plan = make_plan<Scalar>(options, B, T, D, false);
    constexpr Scalar ninf = -std::numeric_limits<Scalar>::infinity();
    for_each_channel_block(plan, B, D, [&](Index s, Index c, Index n) {
        const Index L = layout.length(s);  // the steps of this sequence, in scan order
        const Rows<Scalar> da = layout.rows(dar, s, c), db = layout.rows(dbr, s, c);
        const Rows<const Scalar> g = layout.rows(gr, s, c), la = layout.rows(lar, s, c), lb = layout.rows(lbr, s, c);
        const Scalar* lh0 = state_row(log_h0, s, c);
        const Scalar* glast = state_row(dlog_h_last, s, c);
        layout.fill_past_end(dar, s, c, n, Scalar(0));
        layout.fill_past_end(dbr, s, c, n, Scalar(0));
        // Recompute the forward: a*_t into dlog_a, LSE_t into dlog_b.
        log_forward_run<Scalar>(la, lb, lh0, L, n, [&](Index t, const Buf<Scalar>& astar, const Buf<Scalar>& lse) {
            Row<Scalar>(da.row(t), n) = astar;
            Row<Scalar>(db.row(t), n) = lse;
        });
        // Reverse: R+-_s = log sum_{t>=s, +-G_t>0} |G_t| exp(-LSE_t); dL/dv_s = exp(R+_s + v_s) - exp(R-_s + v_s).
        // log(max(+-G, 0)) is -inf where G has the other sign (or is 0), so neither sum sees it.
        Buf<Scalar> rpos = Buf<Scalar>::Constant(n, ninf), rneg = rpos, v(n), w(n), mx(n), grad(n), dv(n);
        Buf<Scalar> sum = Buf<Scalar>::Zero(n);
        for (Index t = L - 1; t >= 0; --t) {
            grad = CRow<Scalar>(g.row(t), n);
            if (t == L - 1 && glast) grad += CRow<Scalar>(glast, n);
            v = CRow<Scalar>(lb.row(t), n) - CRow<Scalar>(da.row(t), n);
            w = grad.max(Scalar(0)).log() - CRow<Scalar>(db.row(t), n);
            log_add_exp(rpos, w, mx);
            w = (-grad).max(Scalar(0)).log() - CRow<Scalar>(db.row(t), n);
            log_add_exp(rneg, w, mx);
            dv = (rpos + v).exp() - (rneg + v).exp();
            sum += grad - dv;
            Row<Scalar>(db.row(t), n) = dv;
            Row<Scalar>(da.row(t), n) = sum;
        }
        if (Scalar* out = state_row(dlog_h0, s, c)) {
            if (lh0) {
                const CRow<Scalar> l0(lh0, n);
                Row<Scalar>(out, n) = (rpos + l0).exp() - (rneg + l0).exp();
            } else {
                Row<Scalar>(out, n).setZero();  // h0 = 0 is not a point log space can differentiate at
            }
        }
    });
}

}  // namespace seqnn
