// dmoe_bench_echo: loopback echo round trips per second, dmoe's io_uring runtime against Boost.Asio.
//
// Each case (message size x connections) runs both implementations alternately, twice each, and
// keeps each one's best run. Prints one JSON line per case and a summary line
// {"bench":"echo","min_ratio_vs_asio":R,...}; R >= 1.0 means dmoe is at least as fast everywhere.
#include "asio_echo.hpp"
#include "bench_env.hpp"
#include "dmoe_echo.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  using namespace dmoe_bench;
  CLI::App app{"Echo round trips per second over loopback: dmoe against Boost.Asio"};
  double seconds = 1.0;
  int repeats = 2;
  app.add_option("--seconds", seconds, "duration of each run")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "runs of each implementation per case; the best counts")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  print_environment("echo");
  const std::vector<std::pair<std::size_t, int>> cases = {{64, 1}, {64, 64}, {65536, 1}, {65536, 64}};
  double min_ratio = 1e300;
  std::string worst;
  for (auto [size, connections] : cases) {
    echo_case c{size, connections,
                std::chrono::duration_cast<echo_clock::duration>(std::chrono::duration<double>(seconds))};
    double best_dmoe = 0, best_asio = 0;
    for (int i = 0; i < repeats; ++i) {
      best_asio = std::max(best_asio, run_asio_echo(c).per_second());
      best_dmoe = std::max(best_dmoe, run_dmoe_echo(c).per_second());
    }
    const double ratio = best_asio > 0 ? best_dmoe / best_asio : 0;
    const std::string name = fmt::format("{}B x{}", size, connections);
    fmt::print(
        "{{\"bench\":\"echo\",\"case\":\"{}\",\"message_bytes\":{},\"connections\":{},\"dmoe_round_trips_per_s\":{:.0f},"
        "\"asio_round_trips_per_s\":{:.0f},\"ratio\":{:.3f}}}\n",
        name, size, connections, best_dmoe, best_asio, ratio);
    std::fflush(stdout);
    if (ratio < min_ratio) {
      min_ratio = ratio;
      worst = name;
    }
  }
  fmt::print("{{\"bench\":\"echo\",\"min_ratio_vs_asio\":{:.3f},\"worst_case\":\"{}\",\"seconds_per_run\":{},\"repeats\":{}}}\n",
             min_ratio, worst, seconds, repeats);
  return 0;
}
