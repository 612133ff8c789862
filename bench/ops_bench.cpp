// dmoe_bench_ops: the CPU compute path against its limits and peers, measured in one run.
//
//   GEMM            dmoe's ops::gemm against OpenBLAS's cblas_sgemm (both on all cores), square n = 256..4096
//   FMA peak        every thread running register-only FMA chains: the ceiling no GEMM passes (ops_peak.hpp)
//   ffn expert      forward+backward at hidden 1024, batch 256/1024/4096, GFLOP/s = 12*b*h*4h (its six GEMMs) / s;
//                   fraction of peak = against the best OpenBLAS square GEMM above (the practical peak); also
//                   against OpenBLAS doing the same six GEMMs in turns with it; ratio = against PyTorch
//                   (bench/torch_ffn.py under /usr/bin/python3, same weights and inputs, checked first), and the
//                   ceiling of that ratio: FMA peak / PyTorch's GFLOP/s
//   memory-bound    layer norm, softmax and Adam in GB/s against memcpy moving the same bytes (ops_memory.hpp)
//   grid gating     product-key top-4 over 256x256 experts against scoring all 65,536 (ops_gating.hpp)
//
// Modes: with no mode flag, Google Benchmark micro-benchmarks (its --benchmark_* flags apply); --summary prints
// JSON lines and a last line {"bench":"ops","ffn_fraction_of_peak":F,"ffn_ratio_vs_torch":T,...} with F and T at
// batch 1024 (--summary --only gating: the gating line alone); --breakdown times each op inside the ffn forward
// and backward. Contenders take turns and keep their best run, since the machine is shared.
//
// Peers at their best (ops_openblas.hpp): OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE from the environment are dropped by a
// restart, so OpenBLAS picks its own kernel; when that choice is older than the best core type this CPU runs, the
// program starts again with OPENBLAS_CORETYPE=best, which the PyTorch peer inherits. Both choices are printed; a
// PyTorch peer also runs on OpenBLAS's own choice (and one with the environment's overrides, when it had them), and
// the fastest PyTorch is the baseline of ffn_ratio_vs_torch. ffn_fraction_of_fma_peak is the physical limit.
#include "bench_env.hpp"
#include "ops_ffn.hpp"
#include "ops_gating.hpp"
#include "ops_memory.hpp"
#include "ops_openblas.hpp"
#include "ops_peak.hpp"
#include "ops_timing.hpp"
#include "ops_torch.hpp"

#include <dmoe/ops/cpu/gemm.hpp>
#include <dmoe/ops/cpu/parallel.hpp>

#include <benchmark/benchmark.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#ifndef DMOE_BENCH_SOURCE_DIR
#define DMOE_BENCH_SOURCE_DIR "bench"
#endif

namespace dmoe_bench {
namespace {

constexpr std::int64_t hidden = 1024;
constexpr std::int64_t representative_batch = 1024;  // F and T in the summary line are taken at this batch

void print_openblas_line(const openblas_choice& choice) {
  const openblas_facts facts = openblas_info();
  fmt::print(
      "{{\"bench\":\"ops\",\"baseline\":\"openblas\",\"corename\":\"{}\",\"own_corename\":\"{}\","
      "\"best_corename\":\"{}\",\"forced_best_coretype\":{},\"config\":\"{}\",\"openblas_threads\":{},"
      "\"dmoe_threads\":{},\"restarted\":{},\"load_average\":{}}}\n",
      json_escape(facts.corename), json_escape(choice.own), json_escape(choice.best), choice.forced ? "true" : "false",
      json_escape(facts.config), facts.threads, dmoe::ops::cpu_threads(), choice.restarted ? "true" : "false",
      json_number(load_average(), 2));
  std::fflush(stdout);
}

struct gemm_line {
  std::int64_t n;
  double dmoe_gflops, openblas_gflops;
};

gemm_line measure_square_gemm(std::int64_t n) {
  dmoe::random_engine gen(static_cast<std::uint64_t>(n));
  const dmoe::tensor a = dmoe::tensor::uniform(dmoe::shape{n, n}, gen, -1, 1);
  const dmoe::tensor b = dmoe::tensor::uniform(dmoe::shape{n, n}, gen, -1, 1);
  dmoe::tensor c(dmoe::shape{n, n}), c_blas(dmoe::shape{n, n});
  const timing_budget budget{.warmups = 1, .min_runs = n >= 4096 ? 2 : 3, .min_seconds = 0.3};
  const std::vector<double> best = take_turns(
      {[&] { dmoe::ops::gemm(dmoe::ops::cpu, a, b, c); },
       [&] {
         openblas_sgemm(false, false, static_cast<int>(n), static_cast<int>(n), static_cast<int>(n), a.data<float>(),
                        b.data<float>(), 0, c_blas.data<float>());
       }},
      budget, 2, [](std::size_t i) {
        if (i == 1) let_openblas_threads_sleep();
      });
  const double dmoe_s = best[0], blas_s = best[1];
  const double flops = 2.0 * n * n * n;
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < n * n; ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(c.data<float>()[i] - c_blas.data<float>()[i])));
    scale = std::max(scale, static_cast<double>(std::abs(c_blas.data<float>()[i])));
  }
  gemm_line line{n, flops / dmoe_s / 1e9, flops / blas_s / 1e9};
  fmt::print(
      "{{\"bench\":\"ops\",\"case\":\"gemm {}\",\"n\":{},\"dmoe_gflops\":{},\"openblas_gflops\":{},\"ratio\":{},"
      "\"max_rel_diff\":{:.2e}}}\n",
      n, n, json_number(line.dmoe_gflops, 1), json_number(line.openblas_gflops, 1),
      json_number(line.dmoe_gflops / line.openblas_gflops), scale > 0 ? diff / scale : diff);
  std::fflush(stdout);
  return line;
}

struct options {
  bool summary = false;
  bool breakdown = false;
  bool no_torch = false;
  std::string only;  // "gating": --summary runs the grid gating case alone
  std::int64_t breakdown_batch = representative_batch;
  int breakdown_iterations = 5;
  std::string python = "/usr/bin/python3";
  std::string torch_script = DMOE_BENCH_SOURCE_DIR "/torch_ffn.py";
};

// Grid gating: product-key top-k against every exhaustive baseline; the speedup is against the fastest of them.
gating_result print_gating_line() {
  const gating_result g = run_gating_bench(1024, 256, 256, 4, {.warmups = 1, .min_runs = 3, .min_seconds = 0.2});
  std::string baselines;
  for (auto [how, s] : g.exhaustive_seconds) baselines += fmt::format(",\"{}_ms\":{}", to_string(how), json_number(s * 1e3));
  const double speedup = g.fastest_exhaustive(true) / g.product_key_seconds;
  const double speedup_sort = g.fastest_exhaustive(false) / g.product_key_seconds;
  fmt::print(
      "{{\"bench\":\"ops\",\"case\":\"gating 256x256 k4\",\"batch\":{},\"experts\":{},\"k\":{},\"product_key_ms\":{},"
      "\"product_key_us_per_sample\":{}{},\"speedup_vs_sort\":{},\"speedup_vs_simd_scan\":{},\"ratio\":{},"
      "\"same_experts\":{},\"load_average\":{}}}\n",
      g.batch, std::int64_t{g.grid_rows} * g.grid_cols, g.k, json_number(g.product_key_seconds * 1e3),
      json_number(g.product_key_seconds * 1e6 / static_cast<double>(g.batch)), baselines, json_number(speedup_sort, 1),
      json_number(speedup, 1), json_number(speedup, 1), g.same_experts ? "true" : "false",
      json_number(load_average(), 2));
  std::fflush(stdout);
  return g;
}

int run_summary(const options& opt, const openblas_choice& choice) {
  print_environment("ops");
  print_openblas_line(choice);
  if (opt.only == "gating") {
    print_gating_line();
    return 0;
  }

  const double fma_peak = fma_peak_gflops(dmoe::ops::cpu_threads());
  fmt::print("{{\"bench\":\"ops\",\"case\":\"fma_peak\",\"threads\":{},\"gflops\":{},\"gemm_kernel\":\"{}\"}}\n",
             dmoe::ops::cpu_threads(), json_number(fma_peak, 1), dmoe::ops::to_string(dmoe::ops::current_gemm_kernel()));
  std::fflush(stdout);

  // GEMM: the peak every GFLOP/s below is a fraction of.
  std::vector<gemm_line> gemms;
  for (std::int64_t n : {256, 512, 1024, 2048, 4096}) gemms.push_back(measure_square_gemm(n));
  double peak = 0, min_gemm_ratio = 1e300, log_ratio_sum = 0;
  std::int64_t worst_n = 0;
  for (const auto& g : gemms) {
    peak = std::max(peak, g.openblas_gflops);
    const double r = g.dmoe_gflops / g.openblas_gflops;
    log_ratio_sum += std::log(r);
    if (r < min_gemm_ratio) {
      min_gemm_ratio = r;
      worst_n = g.n;
    }
  }
  const double gemm_geomean = std::exp(log_ratio_sum / static_cast<double>(gemms.size()));

  // ffn: dmoe's expert, OpenBLAS doing its six GEMMs, and PyTorch take turns for two rounds at each batch, so a
  // change of load on the shared machine hits all three alike; each keeps its best pass.
  auto expert = make_bench_ffn(hidden, 42);
  torch_peer_options topt;
  topt.python = opt.python;
  topt.script = opt.torch_script;
  topt.hidden = hidden;
  topt.threads = dmoe::ops::cpu_threads();
  const auto start_peer = [&](const std::vector<std::string>& env, const char* label) {
    topt.extra_env = env;
    auto peer = std::make_unique<torch_peer>(*expert, topt);
    const torch_peer_result& t = peer->result();
    std::string errors;
    for (const auto& [name, e] : t.relative_errors) errors += fmt::format(",\"{}\":{:.2e}", name, e);
    fmt::print(
        "{{\"bench\":\"ops\",\"case\":\"{}\",\"torch\":{},\"reason\":\"{}\",\"torch_version\":\"{}\","
        "\"torch_threads\":{},\"env\":\"{}\",\"batch\":{},\"tolerance\":{:.0e},\"pass\":{}{}}}\n",
        label, t.available ? "true" : "false", json_escape(t.reason), json_escape(t.version), t.threads,
        json_escape(fmt::format("{}", fmt::join(env, " "))), topt.check_batch, topt.tolerance,
        t.pass ? "true" : "false", errors);
    std::fflush(stdout);
    return peer;
  };
  // PyTorch on this process's OpenBLAS kernel (the best this CPU runs); when that was forced, PyTorch on OpenBLAS's
  // own choice too, and, when the environment forced a core type, PyTorch run as that environment runs it (these
  // two at the representative batch only). The fastest is the baseline.
  std::unique_ptr<torch_peer> torch, torch_env, torch_own;
  const std::vector<std::string> overrides = original_openblas_overrides();
  if (!opt.no_torch) {
    torch = start_peer({}, "torch_check");
    if (torch->available() && choice.forced && !choice.own.empty())
      torch_own = start_peer({"OPENBLAS_CORETYPE=" + choice.own}, "torch_check_own_openblas");
    if (torch->available() && !overrides.empty()) torch_env = start_peer(overrides, "torch_check_env_openblas");
  }
  const std::vector<std::int64_t> batches = {256, 1024, 4096};
  double fraction = NAN, fraction_of_same_gemms = NAN, ratio = NAN, ratio_env = NAN, ratio_own = NAN,
         ratio_ceiling = NAN, fraction_of_fma_peak = NAN;
  std::string torch_baseline = "none";
  double ratio_min = INFINITY, ratio_max = -INFINITY;
  for (std::int64_t b : batches) {
    const ffn_inputs in = make_ffn_inputs(b, hidden, static_cast<std::uint64_t>(b));
    openblas_ffn_gemms blas(b, hidden);
    double dmoe_s = INFINITY, blas_s = INFINITY, torch_s = INFINITY, torch_env_s = INFINITY, torch_own_s = INFINITY;
    for (int round = 0; round < 2; ++round) {
      const timing_budget budget{.warmups = round == 0 ? 1 : 0, .min_runs = b >= 4096 ? 2 : 3, .min_seconds = 1.0};
      dmoe_s = std::min(dmoe_s, best_seconds([&] { ffn_step(*expert, in); }, budget));
      blas_s = std::min(blas_s, best_seconds([&] { blas.run(); }, budget));
      let_openblas_threads_sleep();
      if (torch && torch->available()) {
        torch_s = std::min(torch_s, torch->time(b));
        let_openblas_threads_sleep();  // PyTorch's GEMMs are OpenBLAS's too
      }
      if (torch_env && torch_env->available() && b == representative_batch) {
        torch_env_s = std::min(torch_env_s, torch_env->time(b));
        let_openblas_threads_sleep();
      }
      if (torch_own && torch_own->available() && b == representative_batch) {
        torch_own_s = std::min(torch_own_s, torch_own->time(b));
        let_openblas_threads_sleep();
      }
    }
    // The baseline: the fastest PyTorch at this batch.
    std::string fastest = std::isfinite(torch_s) ? "torch" : "none";
    const double torch_in_use_s = torch_s;
    for (auto [label, s] : {std::pair{"torch_own_openblas", torch_own_s}, std::pair{"torch_env_openblas", torch_env_s}})
      if (std::isfinite(s) && !(s >= torch_s)) {
        torch_s = s;
        fastest = label;
      }
    const double flops = ffn_flops(b, hidden);
    const double dmoe_gflops = flops / dmoe_s / 1e9, blas_gflops = flops / blas_s / 1e9;
    const double torch_gflops = std::isfinite(torch_s) ? flops / torch_s / 1e9 : NAN;
    const double torch_in_use_gflops = std::isfinite(torch_in_use_s) ? flops / torch_in_use_s / 1e9 : NAN;
    const double torch_own_gflops = std::isfinite(torch_own_s) ? flops / torch_own_s / 1e9 : NAN;
    const double torch_env_gflops = std::isfinite(torch_env_s) ? flops / torch_env_s / 1e9 : NAN;
    std::string env_fields =
        std::isfinite(torch_env_s) ? fmt::format(",\"torch_env_openblas_gflops\":{},\"ratio_vs_torch_env_openblas\":{}",
                                                 json_number(torch_env_gflops, 1),
                                                 json_number(dmoe_gflops / torch_env_gflops))
                                   : std::string();
    if (std::isfinite(torch_own_s))
      env_fields += fmt::format(",\"torch_best_openblas_gflops\":{},\"torch_own_openblas_gflops\":{}",
                                json_number(torch_in_use_gflops, 1), json_number(torch_own_gflops, 1));
    env_fields += fmt::format(",\"torch_baseline\":\"{}\"", fastest);
    fmt::print(
        "{{\"bench\":\"ops\",\"case\":\"ffn h{} b{}\",\"hidden\":{},\"batch\":{},\"gflop_per_pass\":{},"
        "\"dmoe_gflops\":{},\"openblas_gemms_gflops\":{},\"fraction_of_peak\":{},\"fraction_of_same_gemms\":{},"
        "\"fraction_of_fma_peak\":{},\"torch_gflops\":{},\"ratio\":{},\"ratio_ceiling\":{}{},\"load_average\":{}}}\n",
        hidden, b, hidden, b, json_number(flops / 1e9, 2), json_number(dmoe_gflops, 1), json_number(blas_gflops, 1),
        json_number(dmoe_gflops / peak), json_number(dmoe_gflops / blas_gflops), json_number(dmoe_gflops / fma_peak),
        json_number(torch_gflops, 1), json_number(dmoe_gflops / torch_gflops), json_number(fma_peak / torch_gflops),
        env_fields, json_number(load_average(), 2));
    std::fflush(stdout);
    if (std::isfinite(torch_gflops)) {
      ratio_min = std::min(ratio_min, dmoe_gflops / torch_gflops);
      ratio_max = std::max(ratio_max, dmoe_gflops / torch_gflops);
    }
    if (b == representative_batch) {
      fraction = dmoe_gflops / peak;
      fraction_of_same_gemms = dmoe_gflops / blas_gflops;
      ratio = dmoe_gflops / torch_gflops;
      ratio_env = dmoe_gflops / torch_env_gflops;
      ratio_own = dmoe_gflops / torch_own_gflops;
      ratio_ceiling = fma_peak / torch_gflops;
      fraction_of_fma_peak = dmoe_gflops / fma_peak;
      torch_baseline = fastest;
    }
  }
  const bool torch_available = torch && torch->available();
  const bool torch_pass = torch && torch->result().pass;
  torch.reset();
  torch_env.reset();
  torch_own.reset();

  // Memory-bound ops against memcpy.
  std::map<std::string, double> mem_fraction;
  for (const auto& r : memory_bench{}.run()) {
    mem_fraction[r.op] = r.gbps() / r.memcpy_gbps();
    fmt::print(
        "{{\"bench\":\"ops\",\"case\":\"{}\",\"rows\":{},\"cols\":{},\"bytes\":{:.0f},\"threads\":{},\"gbps\":{},"
        "\"memcpy_gbps\":{},\"memcpy_threads\":{},\"ratio\":{}}}\n",
        r.op, r.rows, r.cols, r.bytes, r.threads, json_number(r.gbps(), 2), json_number(r.memcpy_gbps(), 2),
        r.memcpy_threads, json_number(mem_fraction[r.op]));
    std::fflush(stdout);
  }

  const gating_result g = print_gating_line();
  const double speedup = g.fastest_exhaustive(true) / g.product_key_seconds;
  const double speedup_sort = g.fastest_exhaustive(false) / g.product_key_seconds;

  fmt::print(
      "{{\"bench\":\"ops\",\"ffn_fraction_of_peak\":{},\"ffn_fraction_of_fma_peak\":{},\"ffn_ratio_vs_torch\":{},"
      "\"gating_speedup_vs_full\":{},"
      "\"gating_speedup_vs_sort\":{},\"gemm_ratio_vs_openblas_min\":{},\"gemm_worst_n\":{},"
      "\"gemm_ratio_vs_openblas_geomean\":{},\"layer_norm_forward_fraction_of_memcpy\":{},"
      "\"layer_norm_backward_fraction_of_memcpy\":{},\"softmax_fraction_of_memcpy\":{},"
      "\"adam_fraction_of_memcpy\":{},\"ffn_fraction_of_same_gemms\":{},\"peak_gflops\":{},\"fma_peak_gflops\":{},"
      "\"ffn_ratio_vs_torch_ceiling\":{},\"ffn_ratio_vs_torch_min\":{},\"ffn_ratio_vs_torch_max\":{},"
      "\"ffn_ratio_vs_torch_env_openblas\":{},\"ffn_ratio_vs_torch_own_openblas\":{},\"torch_baseline\":\"{}\","
      "\"openblas_corename\":\"{}\",\"openblas_own_corename\":\"{}\",\"ffn_batch\":{},\"gemm_kernel\":\"{}\","
      "\"torch\":{},"
      "\"torch_check\":{},\"gating_same_experts\":{},\"load_average\":{}}}\n",
      json_number(fraction), json_number(fraction_of_fma_peak), json_number(ratio), json_number(speedup, 1),
      json_number(speedup_sort, 1),
      json_number(min_gemm_ratio), worst_n, json_number(gemm_geomean), json_number(mem_fraction["layer_norm_forward"]),
      json_number(mem_fraction["layer_norm_backward"]), json_number(mem_fraction["softmax"]),
      json_number(mem_fraction["adam_step"]), json_number(fraction_of_same_gemms), json_number(peak, 1),
      json_number(fma_peak, 1),
      json_number(ratio_ceiling), json_number(ratio_min), json_number(ratio_max), json_number(ratio_env),
      json_number(ratio_own), torch_baseline, json_escape(openblas_info().corename), json_escape(choice.own),
      representative_batch, dmoe::ops::to_string(dmoe::ops::current_gemm_kernel()), torch_available ? "true" : "false",
      torch_pass ? "true" : "false", g.same_experts ? "true" : "false",
      json_number(load_average(), 2));
  return 0;
}

int run_breakdown(const options& opt, const openblas_choice& choice) {
  print_environment("ops");
  print_openblas_line(choice);
  auto expert = make_bench_ffn(hidden, 42);
  const ffn_inputs in = make_ffn_inputs(opt.breakdown_batch, hidden, 3);
  const breakdown_result r = ffn_breakdown(*expert, in, opt.breakdown_iterations);
  double ops_total = 0, gemm_total = 0;
  for (const auto& row : r.rows) {
    ops_total += row.total_seconds;
    if (row.flops > 0) gemm_total += row.total_seconds;
  }
  const double n = r.iterations;
  for (const auto& row : r.rows) {
    const double mean = row.total_seconds / n;
    std::string rate;
    if (row.flops > 0)
      rate = fmt::format(",\"gflops\":{},\"openblas_ms\":{},\"openblas_gflops\":{},\"ratio\":{}",
                         json_number(row.flops / mean / 1e9, 1), json_number(row.openblas_seconds * 1e3),
                         json_number(row.flops / row.openblas_seconds / 1e9, 1),
                         json_number(row.openblas_seconds / mean));
    else
      rate = fmt::format(",\"gbps\":{}", json_number(row.bytes / mean / 1e9, 2));
    fmt::print("{{\"bench\":\"ops\",\"case\":\"ffn_breakdown\",\"batch\":{},\"op\":\"{}\",\"mean_ms\":{},\"best_ms\":{},"
               "\"share\":{}{}}}\n",
               opt.breakdown_batch, row.op, json_number(mean * 1e3), json_number(row.best_seconds * 1e3),
               json_number(row.total_seconds / ops_total), rate);
  }
  const double flops = ffn_flops(opt.breakdown_batch, hidden);
  fmt::print(
      "{{\"bench\":\"ops\",\"case\":\"ffn_breakdown_total\",\"batch\":{},\"iterations\":{},\"ops_sum_ms\":{},"
      "\"gemm_ms\":{},\"elementwise_ms\":{},\"gemm_share\":{},\"module_mean_ms\":{},\"module_best_ms\":{},"
      "\"module_overhead_ms\":{},\"module_gflops\":{},\"load_average\":{}}}\n",
      opt.breakdown_batch, r.iterations, json_number(ops_total / n * 1e3), json_number(gemm_total / n * 1e3),
      json_number((ops_total - gemm_total) / n * 1e3), json_number(gemm_total / ops_total),
      json_number(r.module_mean_seconds * 1e3), json_number(r.module_best_seconds * 1e3),
      json_number((r.module_mean_seconds - ops_total / n) * 1e3), json_number(flops / r.module_best_seconds / 1e9, 1),
      json_number(load_average(), 2));
  return 0;
}

// Google Benchmark micro-benchmarks.

void bm_gemm_dmoe(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  dmoe::random_engine gen(1);
  const dmoe::tensor a = dmoe::tensor::uniform(dmoe::shape{n, n}, gen), b = dmoe::tensor::uniform(dmoe::shape{n, n}, gen);
  dmoe::tensor c(dmoe::shape{n, n});
  for (auto _ : state) dmoe::ops::gemm(dmoe::ops::cpu, a, b, c);
  state.counters["FLOPS"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate);
}

void bm_gemm_openblas(benchmark::State& state) {
  const auto n = static_cast<int>(state.range(0));
  dmoe::random_engine gen(1);
  const dmoe::tensor a = dmoe::tensor::uniform(dmoe::shape{n, n}, gen), b = dmoe::tensor::uniform(dmoe::shape{n, n}, gen);
  dmoe::tensor c(dmoe::shape{n, n});
  for (auto _ : state) openblas_sgemm(false, false, n, n, n, a.data<float>(), b.data<float>(), 0, c.data<float>());
  state.counters["FLOPS"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate);
  let_openblas_threads_sleep();
}

void bm_ffn_dmoe(benchmark::State& state) {
  const std::int64_t b = state.range(0);
  auto expert = make_bench_ffn(hidden, 42);
  const ffn_inputs in = make_ffn_inputs(b, hidden, 1);
  for (auto _ : state) ffn_step(*expert, in);
  state.counters["FLOPS"] = benchmark::Counter(ffn_flops(b, hidden), benchmark::Counter::kIsIterationInvariantRate);
}

template <int Which>
void bm_memory(benchmark::State& state) {
  const std::int64_t rows = state.range(0), cols = 1024, n = rows * cols;
  dmoe::random_engine gen(1);
  dmoe::tensor x = dmoe::tensor::normal(dmoe::shape{rows, cols}, gen), y(dmoe::shape{rows, cols});
  dmoe::tensor g = dmoe::tensor::normal(dmoe::shape{rows, cols}, gen), m(dmoe::shape{rows, cols}),
               v(dmoe::shape{rows, cols});
  dmoe::tensor gamma = dmoe::tensor::full(dmoe::shape{cols}, 1.0f), beta(dmoe::shape{cols}), mean(dmoe::shape{rows}),
               rstd(dmoe::shape{rows});
  std::int64_t step = 0, bytes = 0;
  for (auto _ : state) {
    if constexpr (Which == 0) {
      dmoe::ops::layer_norm_forward(dmoe::ops::cpu, x, gamma, beta, 1e-5f, y, mean, rstd);
      bytes = 8 * n;
    } else if constexpr (Which == 1) {
      dmoe::ops::softmax(dmoe::ops::cpu, x, y);
      bytes = 8 * n;
    } else if constexpr (Which == 2) {
      dmoe::ops::adam_step(dmoe::ops::cpu, x, g, m, v, ++step, dmoe::ops::adam_hyper{});
      bytes = 28 * n;
    } else {
      parallel_memcpy(y.data<float>(), x.data<float>(), n, dmoe::ops::cpu_threads());
      bytes = 8 * n;
    }
  }
  state.SetBytesProcessed(state.iterations() * bytes);
}

void bm_product_key_topk(benchmark::State& state) {
  dmoe::random_engine gen(5);
  const dmoe::tensor scores = dmoe::tensor::normal(dmoe::shape{1024, 512}, gen);
  const std::vector<std::uint32_t> grid = {256, 256};
  for (auto _ : state) benchmark::DoNotOptimize(dmoe::moe::product_key_topk(scores, grid, 4));
  state.SetItemsProcessed(state.iterations() * 1024);
}

void bm_exhaustive_topk(benchmark::State& state) {
  dmoe::random_engine gen(5);
  const dmoe::tensor scores = dmoe::tensor::normal(dmoe::shape{1024, 512}, gen);
  std::vector<std::uint32_t> out;
  const auto how = static_cast<exhaustive_select>(state.range(0));
  state.SetLabel(to_string(how));
  for (auto _ : state) {
    exhaustive_topk(scores, 256, 256, 4, how, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * 1024);
}

BENCHMARK(bm_gemm_dmoe)->RangeMultiplier(2)->Range(256, 4096)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bm_gemm_openblas)->RangeMultiplier(2)->Range(256, 4096)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bm_ffn_dmoe)->Arg(256)->Arg(1024)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bm_memory<0>)->Name("bm_layer_norm_forward")->Arg(16384)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bm_memory<1>)->Name("bm_softmax")->Arg(16384)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bm_memory<2>)->Name("bm_adam_step")->Arg(16384)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bm_memory<3>)->Name("bm_memcpy")->Arg(16384)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bm_product_key_topk)->Unit(benchmark::kMillisecond);
BENCHMARK(bm_exhaustive_topk)->DenseRange(0, 2)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace dmoe_bench

int main(int argc, char** argv) {
  using namespace dmoe_bench;
  std::signal(SIGPIPE, SIG_IGN);  // a PyTorch peer that dies shows up as a failed write, not a killed benchmark
  const bool restarted = reexec_without_openblas_overrides(argv);
  const openblas_choice choice = force_best_openblas_core(argv, restarted);
  openblas_set_num_threads(dmoe::ops::cpu_threads());

  CLI::App app{"dmoe's CPU ops against OpenBLAS, memcpy and PyTorch"};
  app.allow_extras();
  options opt;
  app.add_flag("--summary", opt.summary, "print JSON lines and a summary line instead of Google Benchmark's table");
  app.add_flag("--breakdown", opt.breakdown, "time each op inside the ffn expert's forward and backward");
  app.add_option("--batch", opt.breakdown_batch, "batch of --breakdown")->check(CLI::PositiveNumber);
  app.add_option("--iterations", opt.breakdown_iterations, "passes --breakdown averages")->check(CLI::PositiveNumber);
  app.add_flag("--no-torch", opt.no_torch, "skip the PyTorch peer");
  app.add_option("--only", opt.only, "with --summary, run one case alone")->check(CLI::IsMember({"gating"}));
  app.add_option("--python", opt.python, "the interpreter with torch (Debian's python3-torch)");
  app.add_option("--torch-script", opt.torch_script, "path of torch_ffn.py");
  CLI11_PARSE(app, argc, argv);
  if (opt.summary) return run_summary(opt, choice);
  if (opt.breakdown) return run_breakdown(opt, choice);

  print_environment("ops");
  print_openblas_line(choice);
  std::vector<std::string> rest = app.remaining();
  std::vector<char*> args = {argv[0]};
  for (auto& r : rest) args.push_back(r.data());
  int count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
