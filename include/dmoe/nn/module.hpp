// nn::module: the type-erased layer interface: forward saves what backward needs, backward accumulates gradients.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/nn/parameter.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <string>

DMOE_BEGIN_NAMESPACE
namespace nn {

// Contract: forward(x) returns y and remembers what backward needs (the last call only);
// backward(dy) returns dx for that forward and ADDS the parameter gradients into parameters()[i].grad.
// A returned tensor is never overwritten by a later call (see tensor::resize).
class module {
 public:
  module() = default;
  module(const module&) = delete;
  module& operator=(const module&) = delete;
  virtual ~module() = default;

  virtual tensor forward(const tensor& x) = 0;
  virtual tensor backward(const tensor& dy) = 0;
  virtual parameter_list parameters() { return {}; }
  // Training mode changes dropout; other modules ignore it.
  virtual void set_training(bool training) { training_ = training; }
  bool training() const noexcept { return training_; }

  DMOE_LAZY void zero_grad() {
    for (parameter& p : parameters()) p.grad->zero();
  }
  DMOE_LAZY std::int64_t parameter_count() {
    std::int64_t n = 0;
    for (parameter& p : parameters()) n += p.value->numel();
    return n;
  }

 protected:
  bool training_ = true;
};

}  // namespace nn
DMOE_END_NAMESPACE
