// Backend tags: every op is a free function in dmoe::ops whose first argument names its backend.
//
//   ops::gemm(ops::cpu, ...)    Eigen, in include/dmoe/ops/cpu/
//   ops::gemm(ops::cuda, ...)   cuBLAS + kernels, declared in <dmoe/ops/cuda.hpp>, defined in include/dmoe/ops/cuda/
//
// nn modules are templated on the tag type (`template <class Backend> class linear`) and call
// `ops::gemm(Backend{}, ...)`, so both backends offer the same signatures.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/tensor/device.hpp>

DMOE_BEGIN_NAMESPACE
namespace ops {

// Each tag names the device its ops take tensors on; modules allocate their parameters and buffers there.
struct cpu_t {
  static constexpr const char* name = "cpu";
  static constexpr dmoe::device device = dmoe::device::host;
};
struct cuda_t {
  static constexpr const char* name = "cuda";
  static constexpr dmoe::device device = dmoe::device::cuda;
};

inline constexpr cpu_t cpu{};
inline constexpr cuda_t cuda{};

}  // namespace ops
DMOE_END_NAMESPACE
