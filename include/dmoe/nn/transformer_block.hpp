// nn::transformer_block: a pre-LN block, x + attention(ln1(x)) then h + mlp(ln2(h)), mlp = width -> 4 width GELU -> width.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/nn/attention.hpp>
#include <dmoe/nn/layer_norm.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/elementwise.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>

DMOE_BEGIN_NAMESPACE
namespace nn {

template <class Backend = ops::cpu_t>
class transformer_block : public module {
 public:
  transformer_block(std::int64_t width, std::int64_t heads, random_engine& gen)
      : ln1_(width), attention_(width, heads, gen), ln2_(width), fc1_(width, 4 * width, gen, ops::activation::gelu),
        fc2_(4 * width, width, gen) {}

  // x [batch, seq, width] -> [batch, seq, width].
  tensor forward(const tensor& x) override {
    const tensor a = attention_.forward(ln1_.forward(x));
    h_.resize(x.shape(), dtype::f32, Backend::device);
    ops::add(Backend{}, x, a, h_);
    const tensor m = fc2_.forward(fc1_.forward(ln2_.forward(h_)));
    y_.resize(x.shape(), dtype::f32, Backend::device);
    ops::add(Backend{}, h_, m, y_);
    return y_;
  }

  tensor backward(const tensor& dy) override {
    // dh = dy + d(mlp branch); dx = dh + d(attention branch). The branches' results are ours to update.
    tensor dh = ln2_.backward(fc1_.backward(fc2_.backward(dy)));
    ops::axpy(Backend{}, 1.0f, dy, dh);
    tensor dx = ln1_.backward(attention_.backward(dh));
    ops::axpy(Backend{}, 1.0f, dh, dx);
    return dx;
  }

  parameter_list parameters() override {
    parameter_list p;
    append_parameters(p, "ln1", ln1_.parameters());
    append_parameters(p, "attention", attention_.parameters());
    append_parameters(p, "ln2", ln2_.parameters());
    append_parameters(p, "fc1", fc1_.parameters());
    append_parameters(p, "fc2", fc2_.parameters());
    return p;
  }

 private:
  layer_norm<Backend> ln1_;
  causal_self_attention<Backend> attention_;
  layer_norm<Backend> ln2_;
  linear<Backend> fc1_, fc2_;
  tensor h_, y_;
};

}  // namespace nn
DMOE_END_NAMESPACE
