// Activation modules: nn::relu and nn::gelu (tanh form), elementwise with no parameters.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/activation.hpp>
#include <dmoe/tensor/tensor.hpp>

DMOE_BEGIN_NAMESPACE
namespace nn {

template <class Backend = ops::cpu_t>
class activation_module : public module {
 public:
  explicit activation_module(ops::activation act) : act_(act) {}

  // Keeps a handle on x until backward: do not modify x in between.
  tensor forward(const tensor& x) override {
    x_ = x;
    y_.resize(x.shape(), dtype::f32, Backend::device);
    ops::activation_forward(Backend{}, x, y_, act_);
    return y_;
  }

  tensor backward(const tensor& dy) override {
    detail::check_forward_done(ops::to_string(act_), x_);
    expect_shape("activation backward", "dy", dy, x_.shape());
    dx_.resize(x_.shape(), dtype::f32, Backend::device);
    ops::bias_activation_backward(Backend{}, x_, dy, dx_, nullptr, act_);
    x_ = tensor();
    return dx_;
  }

 private:
  ops::activation act_;
  tensor x_, y_, dx_;
};

template <class Backend = ops::cpu_t>
class relu : public activation_module<Backend> {
 public:
  relu() : activation_module<Backend>(ops::activation::relu) {}
};

template <class Backend = ops::cpu_t>
class gelu : public activation_module<Backend> {
 public:
  gelu() : activation_module<Backend>(ops::activation::gelu) {}
};

}  // namespace nn
DMOE_END_NAMESPACE
