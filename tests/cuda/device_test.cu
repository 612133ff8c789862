// CUDA smoke test: finds a GPU (or reports the test skipped), runs a kernel and checks it on the CPU.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

namespace {

constexpr int skipped = 77;

__global__ void axpy(int n, float a, const float* x, float* y) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

bool check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return true;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(status));
  return false;
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: cuda tests skipped\n");
    return skipped;
  }
  cudaDeviceProp prop{};
  if (!check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties")) return 1;
  std::printf("device 0: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
              prop.totalGlobalMem / double(1 << 30));

  const int n = 1 << 20;
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) {
    x[i] = std::sin(float(i));
    y[i] = std::cos(float(i));
  }
  float *dx = nullptr, *dy = nullptr;
  if (!check(cudaMalloc(&dx, n * sizeof(float)), "cudaMalloc") ||
      !check(cudaMalloc(&dy, n * sizeof(float)), "cudaMalloc"))
    return 1;
  check(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice), "copy x");
  check(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice), "copy y");
  axpy<<<(n + 255) / 256, 256>>>(n, 2.0f, dx, dy);
  if (!check(cudaGetLastError(), "axpy launch")) return 1;
  std::vector<float> out(n);
  if (!check(cudaMemcpy(out.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost), "copy out")) return 1;
  cudaFree(dx);
  cudaFree(dy);
  for (int i = 0; i < n; ++i) {
    float expected = 2.0f * x[i] + y[i];
    if (std::fabs(out[i] - expected) > 1e-5f) {
      std::fprintf(stderr, "axpy mismatch at %d: %f vs %f\n", i, out[i], expected);
      return 1;
    }
  }
  std::printf("axpy on %d elements matches the CPU\n", n);
  return 0;
}
