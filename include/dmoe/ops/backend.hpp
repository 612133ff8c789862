// Backend tags: every op is a free function in dmoe::ops whose first argument names its backend.
//
//   ops::gemm(ops::cpu, ...)    Eigen, in include/dmoe/ops/cpu/
//   ops::gemm(ops::cuda, ...)   cuBLAS + kernels, in include/dmoe/ops/cuda/
//
// nn modules are templated on the tag type (`template <class Backend> class linear`) and call
// `ops::gemm(Backend{}, ...)`, so both backends offer the same signatures.
#pragma once

#include <dmoe/core/config.hpp>

DMOE_BEGIN_NAMESPACE
namespace ops {

struct cpu_t {
  static constexpr const char* name = "cpu";
};
struct cuda_t {
  static constexpr const char* name = "cuda";
};

inline constexpr cpu_t cpu{};
inline constexpr cuda_t cuda{};

}  // namespace ops
DMOE_END_NAMESPACE
