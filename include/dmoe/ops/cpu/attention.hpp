// Causal multi-head self-attention on the CPU: softmax(q k^T / sqrt(d) + causal mask) v per head, and backward.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <string_view>

DMOE_BEGIN_NAMESPACE
namespace ops {

// qkv is [batch, seq, 3 * width] holding q, k and v side by side, each split into `heads` heads of width / heads
// columns. y gets [batch, seq, width] (heads side by side); probs gets the attention weights
// [batch, heads, seq, seq] for backward. Position t attends to positions 0..t only.
DMOE_DECL void causal_attention_forward(cpu_t, const tensor& qkv, std::int64_t heads, tensor& y, tensor& probs);

// dqkv ([batch, seq, 3 * width]) = the gradient of qkv for dy ([batch, seq, width]), given forward's probs.
DMOE_DECL void causal_attention_backward(cpu_t, const tensor& qkv, const tensor& probs, const tensor& dy,
                                         std::int64_t heads, tensor& dqkv);

}  // namespace ops
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/ops/cpu/eigen.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/reduction.hpp>
#include <cmath>
#include <limits>
#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace ops {
namespace detail {

using strided_map = Eigen::Map<row_matrix, 0, Eigen::OuterStride<>>;
using const_strided_map = Eigen::Map<const row_matrix, 0, Eigen::OuterStride<>>;

// Batch, sequence length, model width and head width of a packed qkv [batch, seq, 3 * width].
struct attention_dims {
  std::int64_t batch, seq, width, head_width;
};

inline attention_dims check_attention(std::string_view op, const tensor& qkv, std::int64_t heads) {
  check_cpu_f32(op, "qkv", qkv);
  expect_rank(op, "qkv", qkv, 3);
  const std::int64_t packed = qkv.dim(2);
  if (heads <= 0 || packed % 3 != 0 || (packed / 3) % heads != 0)
    throw shape_error(dmoe::format("{}: qkv is {}: the last dimension must be 3 * heads * head width with {} heads",
                                  op, qkv.shape(), heads));
  return {qkv.dim(0), qkv.dim(1), packed / 3, packed / 3 / heads};
}

}  // namespace detail

DMOE_DEF void causal_attention_forward(cpu_t, const tensor& qkv, std::int64_t heads, tensor& y, tensor& probs) {
  constexpr std::string_view op = "causal_attention_forward";
  const auto d = detail::check_attention(op, qkv, heads);
  detail::prepare_output(op, "y", y, shape{d.batch, d.seq, d.width});
  detail::prepare_output(op, "probs", probs, shape{d.batch, heads, d.seq, d.seq});
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.head_width));
  const float* in = qkv.data<float>();
  float* out = y.data<float>();
  float* p = probs.data<float>();
  const auto T = static_cast<Eigen::Index>(d.seq), D = static_cast<Eigen::Index>(d.head_width);
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 16) / std::max<std::int64_t>(1, d.seq * d.seq * d.head_width));
  detail::parallel_for(d.batch * heads, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t bh = begin; bh < end; ++bh) {
      const std::int64_t b = bh / heads, h = bh % heads;
      const float* base = in + b * d.seq * 3 * d.width + h * d.head_width;
      const detail::const_strided_map q(base, T, D, Eigen::OuterStride<>(3 * d.width));
      const detail::const_strided_map k(base + d.width, T, D, Eigen::OuterStride<>(3 * d.width));
      const detail::const_strided_map v(base + 2 * d.width, T, D, Eigen::OuterStride<>(3 * d.width));
      detail::matrix_map pm(p + bh * d.seq * d.seq, T, T);
      pm.noalias() = scale * (q * k.transpose());
      for (Eigen::Index t = 0; t < T; ++t) {
        auto row = pm.row(t).head(t + 1).array();
        const float m = row.maxCoeff();
        row = (row - m).exp();
        row /= static_cast<float>(detail::sum_f64(&pm(t, 0), t + 1));
        pm.row(t).tail(T - t - 1).setZero();
      }
      detail::strided_map o(out + b * d.seq * d.width + h * d.head_width, T, D, Eigen::OuterStride<>(d.width));
      o.noalias() = pm.triangularView<Eigen::Lower>() * v;
    }
  });
}

DMOE_DEF void causal_attention_backward(cpu_t, const tensor& qkv, const tensor& probs, const tensor& dy,
                                        std::int64_t heads, tensor& dqkv) {
  constexpr std::string_view op = "causal_attention_backward";
  const auto d = detail::check_attention(op, qkv, heads);
  detail::check_cpu_f32(op, "probs", probs);
  expect_shape(op, "probs", probs, shape{d.batch, heads, d.seq, d.seq});
  detail::check_cpu_f32(op, "dy", dy);
  expect_shape(op, "dy", dy, shape{d.batch, d.seq, d.width});
  detail::prepare_output(op, "dqkv", dqkv, qkv.shape());
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.head_width));
  const float* in = qkv.data<float>();
  const float* g = dy.data<float>();
  const float* p = probs.data<float>();
  float* dout = dqkv.data<float>();
  const auto T = static_cast<Eigen::Index>(d.seq), D = static_cast<Eigen::Index>(d.head_width);
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 16) / std::max<std::int64_t>(1, d.seq * d.seq * d.head_width));
  detail::parallel_for(d.batch * heads, grain, [&](std::int64_t begin, std::int64_t end) {
    detail::row_matrix dp(T, T);
    for (std::int64_t bh = begin; bh < end; ++bh) {
      const std::int64_t b = bh / heads, h = bh % heads;
      const std::int64_t offset = b * d.seq * 3 * d.width + h * d.head_width;
      const Eigen::OuterStride<> packed(3 * d.width);
      const detail::const_strided_map q(in + offset, T, D, packed);
      const detail::const_strided_map k(in + offset + d.width, T, D, packed);
      const detail::const_strided_map v(in + offset + 2 * d.width, T, D, packed);
      detail::strided_map dq(dout + offset, T, D, packed);
      detail::strided_map dk(dout + offset + d.width, T, D, packed);
      detail::strided_map dv(dout + offset + 2 * d.width, T, D, packed);
      const detail::const_strided_map go(g + b * d.seq * d.width + h * d.head_width, T, D,
                                         Eigen::OuterStride<>(d.width));
      const detail::const_matrix_map pm(p + bh * d.seq * d.seq, T, T);
      dv.noalias() = pm.transpose() * go;
      dp.noalias() = go * v.transpose();
      // Softmax backward per row; masked entries have p = 0 and so get no gradient.
      for (Eigen::Index t = 0; t < T; ++t) {
        const auto dot = static_cast<float>(detail::dot_f64(pm.data() + t * T, dp.data() + t * T, t + 1));
        dp.row(t).head(t + 1).array() = pm.row(t).head(t + 1).array() * (dp.row(t).head(t + 1).array() - dot) * scale;
        dp.row(t).tail(T - t - 1).setZero();
      }
      dq.noalias() = dp * k;
      dk.noalias() = dp.transpose() * q;
    }
  });
}

}  // namespace ops
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
