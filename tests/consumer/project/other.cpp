// A second translation unit of the user's program: calls the same op as main.cpp, so both modes must link it once.
#include <dmoe/ops.hpp>

float gemm_from_another_file() {
  dmoe::tensor a(dmoe::shape{1, 2}), b(dmoe::shape{2, 1});
  a.data<float>()[0] = 2.0f, a.data<float>()[1] = 1.0f;
  b.data<float>()[0] = 5.0f, b.data<float>()[1] = 1.0f;
  return dmoe::ops::matmul(dmoe::ops::cpu, a, b).data<float>()[0];
}
