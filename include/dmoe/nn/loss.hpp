// Losses: nn::cross_entropy_loss (integer labels, mean over rows) and nn::mse_loss (mean over elements).
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/cross_entropy.hpp>
#include <dmoe/ops/cpu/mse.hpp>
#include <dmoe/tensor/tensor.hpp>

DMOE_BEGIN_NAMESPACE
namespace nn {

// forward(logits [rows, classes], labels i64 [rows]) returns the loss; backward() the gradient of the logits.
template <class Backend = ops::cpu_t>
class cross_entropy_loss {
 public:
  float forward(const tensor& logits, const tensor& labels) {
    grad_.resize(logits.shape(), dtype::f32, Backend::device);
    return ops::cross_entropy(Backend{}, logits, labels, &grad_);
  }
  DMOE_LAZY tensor backward() const {
    if (grad_.empty()) throw invalid_argument_error("cross_entropy_loss: backward without a forward before it");
    return grad_;
  }

 private:
  tensor grad_;
};

// forward(prediction, target) returns mean((prediction - target)^2); backward() the gradient of the prediction.
template <class Backend = ops::cpu_t>
class mse_loss {
 public:
  float forward(const tensor& prediction, const tensor& target) {
    grad_.resize(prediction.shape(), dtype::f32, Backend::device);
    return ops::mse(Backend{}, prediction, target, &grad_);
  }
  DMOE_LAZY tensor backward() const {
    if (grad_.empty()) throw invalid_argument_error("mse_loss: backward without a forward before it");
    return grad_;
  }

 private:
  tensor grad_;
};

}  // namespace nn
DMOE_END_NAMESPACE
