// Hyper-parameters of the optimizer ops, shared by every backend's adam_step / sgd_step / clip_grad_norm.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {

// Adam (Kingma & Ba) with bias correction. weight_decay is an L2 term added to the gradient
// (Adam), or with `decoupled_weight_decay` a shrink of the weights by lr*weight_decay (AdamW,
// Loshchilov & Hutter). Same arithmetic as PyTorch's torch.optim.Adam/AdamW.
// The betas are double so that 1 - beta2 is the intended 0.001, not 1 - 0.999f.
struct adam_hyper {
  float learning_rate = 1e-3f;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;
};

// SGD with optional momentum (heavy ball, or Nesterov) and L2 weight decay, as torch.optim.SGD
// without dampening: buf = momentum*buf + g; step = nesterov ? g + momentum*buf : buf.
struct sgd_hyper {
  float learning_rate = 1e-2f;
  double momentum = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

// What clip_grad_norm does when the norm is NaN or infinite.
enum class nonfinite_norm {
  error,  // throw invalid_argument_error, gradients untouched
  skip,   // return the norm, gradients untouched (the caller skips the step)
};

namespace detail {

// clip_grad_norm's rules, shared by the backends: max_norm must be positive; the factor to scale the gradients by
// for their joint norm (1 when they are within max_norm, or when the norm is not finite and on_nonfinite says skip;
// throws invalid_argument_error when it says error).
DMOE_LAZY inline void check_max_norm(float max_norm) {
  if (!(max_norm > 0.0f))
    throw invalid_argument_error(dmoe::format("clip_grad_norm: max_norm is {} but must be positive", max_norm));
}
DMOE_LAZY inline double clip_coefficient(double norm, std::size_t tensors, float max_norm, nonfinite_norm on_nonfinite) {
  if (!std::isfinite(norm)) {
    if (on_nonfinite == nonfinite_norm::error)
      throw invalid_argument_error(dmoe::format(
          "clip_grad_norm: the gradient norm over {} tensors is {}; gradients left unscaled", tensors, norm));
    return 1.0;
  }
  return std::min(1.0, static_cast<double>(max_norm) / (norm + 1e-6));
}

}  // namespace detail
}  // namespace ops
DMOE_END_NAMESPACE
