// A user's program: includes all of dmoe and runs a coroutine on its io_uring runtime.
#include <dmoe/dmoe.hpp>

#include <chrono>
#include <cstdio>

dmoe::task<int> answer() {
  co_await dmoe::sleep_for(std::chrono::milliseconds(1));
  co_return 42;
}

int main() {
  std::printf("answer %d\n", dmoe::sync_wait(answer()));
  return 0;
}
