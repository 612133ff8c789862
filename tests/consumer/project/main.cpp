// A user's program: includes all of dmoe, runs a coroutine on its io_uring runtime and a GEMM on the CPU backend.
#include <dmoe/dmoe.hpp>

#include <chrono>
#include <cstdio>

float gemm_from_another_file();  // other.cpp: the same op from a second translation unit

dmoe::task<int> answer() {
  co_await dmoe::sleep_for(std::chrono::milliseconds(1));
  co_return 42;
}

int main() {
  dmoe::tensor a(dmoe::shape{1, 2}), b(dmoe::shape{2, 1});
  a.data<float>()[0] = 1.0f, a.data<float>()[1] = 2.0f;
  b.data<float>()[0] = 3.0f, b.data<float>()[1] = 4.0f;
  const dmoe::tensor c = dmoe::ops::matmul(dmoe::ops::cpu, a, b);
  std::printf("answer %d gemm %g %g\n", dmoe::sync_wait(answer()), c.data<float>()[0], gemm_from_another_file());
  return 0;
}
