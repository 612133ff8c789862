// Mean squared error on the CPU: the mean over all elements and the gradient of the prediction.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// Returns mean((prediction - target)^2); when dprediction is not null it receives 2 (prediction - target) / n.
DMOE_DECL float mse(cpu_t, const tensor& prediction, const tensor& target, tensor* dprediction = nullptr);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>

DMOE_BEGIN_NAMESPACE
namespace ops {

DMOE_DEF float mse(cpu_t, const tensor& prediction, const tensor& target, tensor* dprediction) {
  constexpr std::string_view op = "mse";
  detail::check_cpu_f32(op, "prediction", prediction);
  detail::check_cpu_f32(op, "target", target);
  expect_same_shape(op, "prediction", prediction, "target", target);
  if (prediction.numel() == 0) throw invalid_argument_error("mse: no elements to average over");
  const auto p = detail::as_vector(prediction);
  const auto t = detail::as_vector(target);
  const auto n = static_cast<double>(prediction.numel());
  // Differences in double: exact, and finite where p - t would overflow f32 (the gradient may still be finite).
  const auto diff = p.cast<double>() - t.cast<double>();
  const double loss = diff.square().sum() / n;
  if (dprediction) {
    detail::prepare_output(op, "dprediction", *dprediction, prediction.shape());
    detail::as_vector(*dprediction) = (diff * (2.0 / n)).cast<float>();
  }
  return static_cast<float>(loss);
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
