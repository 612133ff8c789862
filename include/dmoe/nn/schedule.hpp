// Learning-rate schedules: pure functions of the optimizer step (1 for the first update).
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace nn {

// Any callable `float(std::int64_t step)`; the optimizers take one to set the rate of each step.
using learning_rate_schedule = std::function<float(std::int64_t)>;

// The same rate at every step, after an optional linear warmup (rate*step/warmup_steps).
struct constant_schedule {
  float learning_rate = 1e-3f;
  std::int64_t warmup_steps = 0;

  float operator()(std::int64_t step) const noexcept {
    step = std::max<std::int64_t>(step, 1);
    if (step >= warmup_steps) return learning_rate;
    return static_cast<float>(static_cast<double>(learning_rate) * static_cast<double>(step) /
                              static_cast<double>(warmup_steps));
  }
};

// Rises linearly from peak/warmup_steps at step 1 to `peak` at step `warmup_steps`, then falls
// linearly to `final_rate` at `total_steps` and stays there.
struct linear_warmup_decay {
  float peak = 1e-3f;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;
  float final_rate = 0.0f;

  DMOE_LAZY linear_warmup_decay(float peak_rate, std::int64_t warmup, std::int64_t total, float final_value = 0.0f)
      : peak(peak_rate), warmup_steps(warmup), total_steps(total), final_rate(final_value) {
    if (warmup < 0 || total < 1 || warmup > total)
      throw invalid_argument_error(dmoe::format(
          "linear_warmup_decay: needs 0 <= warmup_steps ({}) <= total_steps ({}) and total_steps >= 1", warmup,
          total));
  }

  float operator()(std::int64_t step) const noexcept {
    step = std::max<std::int64_t>(step, 1);
    // Computed in double so that long runs do not lose the small fractions.
    if (step <= warmup_steps)
      return static_cast<float>(static_cast<double>(peak) * static_cast<double>(step) /
                                static_cast<double>(warmup_steps));
    if (step >= total_steps) return final_rate;
    double fraction =
        static_cast<double>(total_steps - step) / static_cast<double>(total_steps - warmup_steps);
    return static_cast<float>(static_cast<double>(final_rate) +
                              (static_cast<double>(peak) - static_cast<double>(final_rate)) * fraction);
  }
};

}  // namespace nn
DMOE_END_NAMESPACE
