// nn::layer_norm: normalises the last dimension, then scales by gamma and shifts by beta.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/layer_norm.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>

DMOE_BEGIN_NAMESPACE
namespace nn {

template <class Backend = ops::cpu_t>
class layer_norm : public module {
 public:
  explicit layer_norm(std::int64_t width, float eps = 1e-5f)
      : width_(width), eps_(eps), gamma_(tensor::full(shape{width}, 1.0f).to(Backend::device)),
        beta_(shape{width}, dtype::f32, Backend::device), gamma_grad_(shape{width}, dtype::f32, Backend::device),
        beta_grad_(shape{width}, dtype::f32, Backend::device) {}

  // Keeps a handle on x until backward: do not modify x in between.
  tensor forward(const tensor& x) override {
    detail::check_last_dim("layer_norm", x, width_, dmoe::format("gamma {}", gamma_.shape()));
    x_ = x;
    y_.resize(x.shape(), dtype::f32, Backend::device);
    mean_.resize(shape{x.shape().outer()}, dtype::f32, Backend::device);
    rstd_.resize(shape{x.shape().outer()}, dtype::f32, Backend::device);
    ops::layer_norm_forward(Backend{}, x, gamma_, beta_, eps_, y_, mean_, rstd_);
    return y_;
  }

  tensor backward(const tensor& dy) override {
    detail::check_forward_done("layer_norm", x_);
    expect_shape("layer_norm backward", "dy", dy, x_.shape());
    dx_.resize(x_.shape(), dtype::f32, Backend::device);
    ops::layer_norm_backward(Backend{}, x_, gamma_, mean_, rstd_, dy, dx_, gamma_grad_, beta_grad_);
    x_ = tensor();
    return dx_;
  }

  parameter_list parameters() override {
    return {{"weight", &gamma_, &gamma_grad_}, {"bias", &beta_, &beta_grad_}};
  }

  tensor& gamma() noexcept { return gamma_; }
  tensor& beta() noexcept { return beta_; }

 private:
  std::int64_t width_;
  float eps_;
  tensor gamma_, beta_, gamma_grad_, beta_grad_;
  tensor x_, y_, mean_, rstd_, dx_;
};

}  // namespace nn
DMOE_END_NAMESPACE
