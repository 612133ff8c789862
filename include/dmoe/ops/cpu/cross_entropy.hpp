// Fused log-softmax + cross-entropy on the CPU: the mean loss over rows and the gradient of the logits.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// logits [rows, classes] (leading dimensions fold into rows), labels i64 with one label per row (any shape with
// `rows` elements, each in [0, classes)). Returns the mean over rows of -log softmax(logits)[label]; when dlogits
// is not null it receives d(loss)/d(logits) = (softmax - onehot) / rows (it may be the logits tensor itself).
DMOE_DECL float cross_entropy(cpu_t, const tensor& logits, const tensor& labels, tensor* dlogits = nullptr);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/reduction.hpp>
#include <atomic>
#include <cmath>
#include <mutex>
#include <vector>
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {

DMOE_DEF float cross_entropy(cpu_t, const tensor& logits, const tensor& labels, tensor* dlogits) {
  constexpr std::string_view op = "cross_entropy";
  detail::check_cpu_f32(op, "logits", logits);
  expect_dtype(op, "labels", labels, dtype::i64);
  const std::int64_t rows = logits.shape().outer(), classes = logits.shape().inner();
  if (labels.numel() != rows)
    throw shape_error(dmoe::format("{}: logits is {} ({} rows) but labels is {}", op, logits.shape(), rows,
                                  labels.shape()));
  if (rows == 0) throw invalid_argument_error(dmoe::format("{}: logits is {}: no rows to average over", op, logits.shape()));
  const std::int64_t* label = labels.data<std::int64_t>();
  for (std::int64_t r = 0; r < rows; ++r)
    if (label[r] < 0 || label[r] >= classes)
      throw invalid_argument_error(
          dmoe::format("{}: label {} of row {} is outside [0, {})", op, label[r], r, classes));
  if (dlogits) detail::prepare_output(op, "dlogits", *dlogits, logits.shape());
  const auto xm = detail::as_array(logits);
  const float inv_rows = 1.0f / static_cast<float>(rows);
  double total = 0.0;
  std::mutex merge;
  detail::parallel_for(rows, detail::row_grain(classes), [&](std::int64_t begin, std::int64_t end) {
    double partial = 0.0;
    Eigen::Array<float, 1, Eigen::Dynamic> exps(classes);
    for (std::int64_t r = begin; r < end; ++r) {
      const auto xr = xm.row(r);
      const float m = xr.maxCoeff();
      const float target = xr(label[r]);
      exps = (xr - m).exp();
      const double sum = detail::sum_f64(exps.data(), classes);
      // log(sum) + (max - target): the small log term is never added to a large logit before the difference.
      partial += std::log(sum) + (static_cast<double>(m) - static_cast<double>(target));
      if (dlogits) {
        auto dr = detail::as_array(*dlogits).row(r);
        dr = exps * static_cast<float>(static_cast<double>(inv_rows) / sum);
        dr(label[r]) -= inv_rows;
      }
    }
    std::lock_guard lock(merge);
    total += partial;
  });
  return static_cast<float>(total / static_cast<double>(rows));
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
