// Learning-rate schedules: a function of the step index (0-based, the step about to
// be taken), set on the optimizer before each step:
//   optimizer.set_lr(schedule(optimizer.steps()));  optimizer.step();
// Because the rate depends only on the step index, a resumed run needs no schedule
// state: the optimizer's step count is enough.
#pragma once

#include "seqnn/core/errors.hpp"

#include <cmath>
#include <numbers>
#include <string>

namespace seqnn {

/// Linear warmup, then cosine decay (nanoGPT's schedule, SGDR without restarts):
///   step < warmup:              peak * (step + 1) / warmup
///   warmup <= step < total:     min + (peak - min) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2
///   step >= total:              min
/// so the first step already trains, the rate reaches peak at step warmup - 1 (or at
/// step 0 without warmup) and decays to min at step total.
struct WarmupCosineSchedule {
    /// The rate after warmup.
    double peak_lr = 1e-3;
    /// The rate at the end of the decay.
    double min_lr = 0.0;
    /// Steps of linear warmup from 0.
    long warmup_steps = 0;
    /// Steps until the decay reaches min_lr.
    long total_steps = 1;

    /// The learning rate at `step`.
    double operator()(long step) const {
        if (warmup_steps < 0 || total_steps < warmup_steps || total_steps <= 0)
            fail("WarmupCosineSchedule", "needs 0 <= warmup_steps <= total_steps and total_steps > 0, got warmup " +
                                             std::to_string(warmup_steps) + ", total " + std::to_string(total_steps));
        if (step < 0) fail("WarmupCosineSchedule", "step must be >= 0, got " + std::to_string(step));
        if (step < warmup_steps) return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
        if (step >= total_steps) return min_lr;
        const double progress =
            static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);  // [0, 1)
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
    }
};

}  // namespace seqnn
