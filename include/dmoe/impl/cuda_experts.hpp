// The server's experts on CUDA devices: when the program starts, installs make_expert_backend_on<ops::cuda_t> as
// what server::make_expert_backend (and so a server with `device = "cuda:N"`) uses for a CUDA device. Part of the
// CMake target dmoe::cuda (cmake/dmoe_cuda_experts.cpp); a program that compiles <dmoe/impl/cuda_src.cuh> itself
// includes this header from one .cpp file of its own. Plain C++: the CUDA ops it calls are declarations.
#pragma once

#include <dmoe/ops/cuda.hpp>
#include <dmoe/server/expert_backend.hpp>

#include <atomic>

DMOE_BEGIN_NAMESPACE
namespace server::detail {

// Referenced by every file that includes <dmoe/server/expert_backend.hpp> with DMOE_WITH_CUDA, so that a linker
// taking dmoe::cuda's objects from a static library (a user's library that links dmoe::cuda) keeps this one too.
extern "C" const int dmoe_cuda_experts_anchor = 1;

[[maybe_unused]] static const bool cuda_experts_installed = [] {
  cuda_expert_backend_maker().store(&make_expert_backend_on<ops::cuda_t>, std::memory_order_release);
  return true;
}();

}  // namespace server::detail
DMOE_END_NAMESPACE
