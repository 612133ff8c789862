// nn::sgd: stochastic gradient descent with optional (Nesterov) momentum over named parameters.
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

// State: "step", then "momentum.<name>" for each parameter when momentum is used.
template <class Backend = ops::cpu_t>
class sgd : public optimizer {
 public:
  explicit sgd(parameter_list parameters, ops::sgd_hyper hyper = {})
      : optimizer(std::move(parameters), hyper.learning_rate), hyper_(hyper) {
    if (hyper.nesterov && hyper.momentum == 0.0)
      throw invalid_argument_error("sgd: nesterov needs a momentum other than 0");
    buffers_.resize(parameters_.size());
    if (hyper.momentum != 0.0) {
      for (std::size_t i = 0; i < parameters_.size(); ++i) {
        buffers_[i] = zeros_like(parameters_[i]);
        add_state("momentum", parameters_[i], buffers_[i]);
      }
    }
  }

  const ops::sgd_hyper& hyper() const noexcept { return hyper_; }

 protected:
  void update(float learning_rate, std::int64_t /*step*/) override {
    ops::sgd_hyper h = hyper_;
    h.learning_rate = learning_rate;
    for (std::size_t i = 0; i < parameters_.size(); ++i)
      ops::sgd_step(Backend{}, *parameters_[i].value, *parameters_[i].grad, buffers_[i], h);
  }

 private:
  ops::sgd_hyper hyper_;
  std::vector<tensor> buffers_;
};

}  // namespace nn
DMOE_END_NAMESPACE
