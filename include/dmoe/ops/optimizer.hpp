// Hyper-parameters of the optimizer ops, shared by every backend's adam_step / sgd_step / clip_grad_norm.
#pragma once

#include <dmoe/core/config.hpp>

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

}  // namespace ops
DMOE_END_NAMESPACE
