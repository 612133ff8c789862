// nn::linear: y = act(x W^T + b) over the last dimension, with the bias and activation fused into one pass.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/nn/init.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/activation.hpp>
#include <dmoe/ops/cpu/elementwise.hpp>
#include <dmoe/ops/cpu/gemm.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace nn {

namespace detail {
// The input's shape with the last dimension replaced (x is [..., in], the result [..., out]).
DMOE_LAZY inline shape with_last(const shape& s, std::int64_t last) { return s.with(s.rank() - 1, last); }

DMOE_LAZY inline void check_last_dim(std::string_view module, const tensor& x, std::int64_t expected, std::string_view what) {
  if (x.rank() < 1 || x.dim(-1) != expected)
    throw shape_error(dmoe::format("{}: x is {} but {} needs a last dimension of {}", module, x.shape(), what, expected));
}

DMOE_LAZY inline void check_forward_done(std::string_view module, const tensor& saved) {
  if (saved.empty()) throw invalid_argument_error(dmoe::format("{}: backward without a forward before it", module));
}
}  // namespace detail

template <class Backend = ops::cpu_t>
class linear : public module {
 public:
  // weight [out, in] Xavier-uniform (Kaiming for ReLU/GELU), bias [out] zeros.
  linear(std::int64_t in, std::int64_t out, random_engine& gen, ops::activation act = ops::activation::identity,
         bool with_bias = true)
      : in_(in), out_(out), act_(act), weight_(shape{out, in}), weight_grad_(shape{out, in}, dtype::f32, Backend::device) {
    if (in <= 0 || out <= 0) throw invalid_argument_error(dmoe::format("linear: sizes {} -> {} must be positive", in, out));
    if (act == ops::activation::identity)
      init::xavier_uniform(weight_, gen);
    else
      init::kaiming_uniform(weight_, gen);
    weight_ = weight_.to(Backend::device);  // initialised on the host, with the same numbers on every backend
    if (with_bias) {
      bias_ = tensor(shape{out}, dtype::f32, Backend::device);
      bias_grad_ = tensor(shape{out}, dtype::f32, Backend::device);
    }
  }

  // x [..., in] -> [..., out]. Keeps a handle on x until backward: do not modify x in between.
  tensor forward(const tensor& x) override {
    detail::check_last_dim("linear", x, in_, dmoe::format("weight {}", weight_.shape()));
    const std::int64_t rows = x.shape().outer();
    x_ = x.reshape(shape{rows, in_});
    out_shape_ = detail::with_last(x.shape(), out_);
    z_.resize(shape{rows, out_}, dtype::f32, Backend::device);
    if constexpr (Backend::device != device::host) {
      // One cuBLASLt call with the bias and the activation in its epilogue.
      if (act_ != ops::activation::identity) y_.resize(shape{rows, out_}, dtype::f32, Backend::device);
      tensor& y = act_ == ops::activation::identity ? z_ : y_;
      linear_forward(Backend{}, x_, weight_, bias_, z_, y, act_);  // found by ADL: declared in ops/cuda.hpp
      return y.reshape(out_shape_);
    }
    ops::gemm(Backend{}, x_, weight_, z_, {.trans_b = true});
    if (act_ == ops::activation::identity) {
      if (!bias_.empty()) ops::bias_activation_forward(Backend{}, z_, bias_, z_, act_);
      return z_.reshape(out_shape_);
    }
    y_.resize(shape{rows, out_}, dtype::f32, Backend::device);
    ops::bias_activation_forward(Backend{}, z_, bias_, y_, act_);
    return y_.reshape(out_shape_);
  }

  // dy [..., out] -> dx [..., in]; weight and bias gradients accumulate.
  tensor backward(const tensor& dy) override {
    detail::check_forward_done("linear", x_);
    expect_shape("linear backward", "dy", dy, out_shape_);
    const std::int64_t rows = x_.dim(0);
    const tensor g_in = dy.reshape(shape{rows, out_});
    tensor g = g_in;
    if (act_ != ops::activation::identity) {
      dz_.resize(shape{rows, out_}, dtype::f32, Backend::device);
      ops::bias_activation_backward(Backend{}, z_, g_in, dz_, bias_.empty() ? nullptr : &bias_grad_, act_);
      g = dz_;
    } else if (!bias_.empty()) {
      ops::sum_rows(Backend{}, g_in, bias_grad_);
    }
    ops::gemm(Backend{}, g, x_, weight_grad_, {.trans_a = true, .beta = 1.0f});
    dx_.resize(shape{rows, in_}, dtype::f32, Backend::device);
    ops::gemm(Backend{}, g, weight_, dx_);
    x_ = tensor();
    return dx_.reshape(detail::with_last(out_shape_, in_));
  }

  parameter_list parameters() override {
    parameter_list p{{"weight", &weight_, &weight_grad_}};
    if (!bias_.empty()) p.push_back({"bias", &bias_, &bias_grad_});
    return p;
  }

  tensor& weight() noexcept { return weight_; }
  tensor& bias() noexcept { return bias_; }
  tensor& weight_grad() noexcept { return weight_grad_; }
  tensor& bias_grad() noexcept { return bias_grad_; }
  std::int64_t in_features() const noexcept { return in_; }
  std::int64_t out_features() const noexcept { return out_; }
  ops::activation activation() const noexcept { return act_; }

 private:
  std::int64_t in_, out_;
  ops::activation act_;
  tensor weight_, bias_, weight_grad_, bias_grad_;
  tensor x_;       // the input as [rows, in], until backward
  tensor z_, y_;   // pre-activation (bias included) and output
  tensor dz_, dx_;
  shape out_shape_;
};

}  // namespace nn
DMOE_END_NAMESPACE
