// A program of a CUDA project that links dmoe::cuda from the installed package: plain C++ against the declarations.
#include <dmoe/ops/cuda.hpp>
#include <dmoe/tensor/device.hpp>

#include <cstdio>

#if !DMOE_WITH_CUDA
#error "dmoe::cuda did not give its users DMOE_WITH_CUDA"
#endif

int main() {
  std::printf("cuda backend linked, %s\n", dmoe::cuda_available() ? "a GPU is present" : "no GPU is present");
  return 0;
}
