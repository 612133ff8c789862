// nn::adam and nn::adamw: Adam with L2 weight decay, and with decoupled weight decay, over named parameters.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/nn/optimizer.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/optimizer.hpp>
#include <dmoe/ops/optimizer.hpp>

#include <cstdint>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace nn {

// State: "step", then "m.<name>" and "v.<name>" for each parameter.
template <class Backend = ops::cpu_t>
class adam : public optimizer {
 public:
  explicit adam(parameter_list parameters, ops::adam_hyper hyper = {})
      : optimizer(std::move(parameters), hyper.learning_rate), hyper_(hyper) {
    m_.reserve(parameters_.size());
    v_.reserve(parameters_.size());
    for (const parameter& p : parameters_) {
      m_.push_back(zeros_like(p));
      v_.push_back(zeros_like(p));
    }
    for (std::size_t i = 0; i < parameters_.size(); ++i) add_state("m", parameters_[i], m_[i]);
    for (std::size_t i = 0; i < parameters_.size(); ++i) add_state("v", parameters_[i], v_[i]);
  }

  const ops::adam_hyper& hyper() const noexcept { return hyper_; }

 protected:
  void update(float learning_rate, std::int64_t step) override {
    ops::adam_hyper h = hyper_;
    h.learning_rate = learning_rate;
    if constexpr (Backend::device != device::host) {
      // Every parameter in one kernel launch.
      std::vector<tensor*> params, ms, vs;
      std::vector<const tensor*> grads;
      for (std::size_t i = 0; i < parameters_.size(); ++i) {
        params.push_back(parameters_[i].value);
        grads.push_back(parameters_[i].grad);
        ms.push_back(&m_[i]);
        vs.push_back(&v_[i]);
      }
      adam_step_many(Backend{}, std::span<tensor* const>(params), std::span<const tensor* const>(grads),
                          std::span<tensor* const>(ms), std::span<tensor* const>(vs), step, h);
      return;
    }
    for (std::size_t i = 0; i < parameters_.size(); ++i)
      ops::adam_step(Backend{}, *parameters_[i].value, *parameters_[i].grad, m_[i], v_[i], step, h);
  }

 private:
  ops::adam_hyper hyper_;
  std::vector<tensor> m_;
  std::vector<tensor> v_;
};

// Adam with decoupled weight decay (Loshchilov & Hutter); PyTorch's default weight_decay of 0.01.
template <class Backend = ops::cpu_t>
class adamw : public adam<Backend> {
 public:
  explicit adamw(parameter_list parameters, ops::adam_hyper hyper = with_default_decay())
      : adam<Backend>(std::move(parameters), decoupled(hyper)) {}

 private:
  DMOE_LAZY static ops::adam_hyper with_default_decay() {
    ops::adam_hyper h;
    h.weight_decay = 0.01;
    return h;
  }
  DMOE_LAZY static ops::adam_hyper decoupled(ops::adam_hyper h) {
    h.decoupled_weight_decay = true;
    return h;
  }
};

}  // namespace nn
DMOE_END_NAMESPACE
