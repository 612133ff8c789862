// The demo: prints what dmoe is made of (grows into the demo swarm).
#include <dmoe/dmoe.hpp>

#include <fmt/format.h>

int main() {
  fmt::print("dmoe {}.{}.{}\n", DMOE_VERSION_MAJOR, DMOE_VERSION_MINOR, DMOE_VERSION_PATCH);
  return 0;
}
