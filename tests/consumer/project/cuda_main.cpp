// A program of a CUDA project that links dmoe::cuda from the installed package: plain C++ against the declarations.
// Its CUDA experts are installed at start-up (what dmoe-server --device cuda:N makes its experts with).
#include <dmoe/ops/cuda.hpp>
#include <dmoe/server/expert_backend.hpp>
#include <dmoe/tensor/device.hpp>

#include <cstdio>

const char* consumer_cuda_library();  // cuda_lib.cpp

#if !DMOE_WITH_CUDA
#error "dmoe::cuda did not give its users DMOE_WITH_CUDA"
#endif

int main() {
  if (!dmoe::server::detail::cuda_expert_backend_maker().load()) {
    std::printf("the CUDA experts were not installed\n");
    return 1;
  }
  std::printf("cuda backend linked (%s), %s\n", consumer_cuda_library(),
              dmoe::cuda_available() ? "a GPU is present" : "no GPU is present");
  return 0;
}
