// nn::causal_self_attention: multi-head self-attention where position t sees positions 0..t (qkv and output linears).
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/attention.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace nn {

template <class Backend = ops::cpu_t>
class causal_self_attention : public module {
 public:
  causal_self_attention(std::int64_t width, std::int64_t heads, random_engine& gen)
      : width_(width), heads_(heads), qkv_(width, 3 * width, gen), proj_(width, width, gen) {
    if (heads <= 0 || width % heads != 0)
      throw invalid_argument_error(dmoe::format("causal_self_attention: width {} is not a multiple of {} heads", width, heads));
  }

  // x [batch, seq, width] -> [batch, seq, width].
  tensor forward(const tensor& x) override {
    if (x.rank() != 3 || x.dim(2) != width_)
      throw shape_error(dmoe::format("causal_self_attention: x is {} but should be [batch, seq, {}]", x.shape(), width_));
    qkv_out_ = qkv_.forward(x);
    attended_.resize(x.shape(), dtype::f32, Backend::device);
    probs_.resize(shape{x.dim(0), heads_, x.dim(1), x.dim(1)}, dtype::f32, Backend::device);
    ops::causal_attention_forward(Backend{}, qkv_out_, heads_, attended_, probs_);
    return proj_.forward(attended_);
  }

  tensor backward(const tensor& dy) override {
    detail::check_forward_done("causal_self_attention", qkv_out_);
    const tensor dattended = proj_.backward(dy);
    dqkv_.resize(qkv_out_.shape(), dtype::f32, Backend::device);
    ops::causal_attention_backward(Backend{}, qkv_out_, probs_, dattended, heads_, dqkv_);
    qkv_out_ = tensor();
    return qkv_.backward(dqkv_);
  }

  parameter_list parameters() override {
    parameter_list p;
    append_parameters(p, "qkv", qkv_.parameters());
    append_parameters(p, "proj", proj_.parameters());
    return p;
  }

  // Attention weights of the last forward: [batch, heads, seq, seq].
  const tensor& probabilities() const noexcept { return probs_; }
  std::int64_t heads() const noexcept { return heads_; }

 private:
  std::int64_t width_, heads_;
  linear<Backend> qkv_, proj_;
  tensor qkv_out_, attended_, probs_, dqkv_;
};

}  // namespace nn
DMOE_END_NAMESPACE
