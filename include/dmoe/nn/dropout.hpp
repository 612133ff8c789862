// nn::dropout: zeroes each element with probability p while training (scaling the rest by 1/(1-p)); identity in eval.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/dropout.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace nn {

template <class Backend = ops::cpu_t>
class dropout : public module {
 public:
  dropout(float p, std::uint64_t seed) : p_(p), gen_(seed) {
    if (!(p >= 0.0f && p < 1.0f)) throw invalid_argument_error(dmoe::format("dropout: probability {} is outside [0, 1)", p));
  }

  tensor forward(const tensor& x) override {
    active_ = training_ && p_ > 0.0f;
    if (!active_) return x;
    mask_.resize(x.shape(), dtype::f32, Backend::device);
    ops::dropout_mask(Backend{}, mask_, p_, gen_);
    y_.resize(x.shape(), dtype::f32, Backend::device);
    ops::dropout_apply(Backend{}, x, mask_, y_);
    return y_;
  }

  tensor backward(const tensor& dy) override {
    if (!active_) return dy;
    dx_.resize(dy.shape(), dtype::f32, Backend::device);
    ops::dropout_apply(Backend{}, dy, mask_, dx_);
    return dx_;
  }

  // The mask of the last training forward: 0 or 1 / (1 - p) per element.
  const tensor& mask() const noexcept { return mask_; }
  float probability() const noexcept { return p_; }

 private:
  float p_;
  random_engine gen_;
  bool active_ = false;
  tensor mask_, y_, dx_;
};

}  // namespace nn
DMOE_END_NAMESPACE
