// dmoe_bench_cuda: the CUDA backend's kernels against the GPU's own limits, and the ffn expert against PyTorch.
//
// Memory-bound kernels: the fraction of a device-to-device copy's speed they reach, for the bytes they must read
// and write at least (a copy of the same bytes, timed in the same run). GEMMs: TFLOP/s against a plain cuBLAS
// SGEMM of the same shape. The ffn expert (forward + backward, batch 4,096, hidden 1,024 and 4,096, f32) against
// the same block in PyTorch eager on the same GPU, run by bench/cuda_torch_ffn.py in the same invocation.
// Every timing: CUDA events around `iterations` launches, best of `repeats`, after a warm-up.
// Prints one JSON line per measurement and a summary last:
// {"bench":"cuda","ffn_ratio_vs_torch":R,"layernorm_fraction_of_copy":L,"min_memory_fraction":M,...}
// (R = PyTorch's time / dmoe's, the lower of the two hidden sizes). Without a GPU it prints why and exits 0.
#include <dmoe/nn.hpp>
#include <dmoe/ops.hpp>
#include <dmoe/ops/cuda.hpp>

#include "bench_env.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

using namespace dmoe;

namespace {

struct settings {
  int iterations = 20;
  int repeats = 3;
  std::string python = "python3";
  std::string script;
};

// Mean milliseconds of one call of f: best of `repeats` runs of `iterations` calls, after one warm-up call.
double time_ms(const settings& s, const std::function<void()>& f) {
  f();
  cuda::synchronize();
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < s.repeats; ++r) {
    cuda::event start, stop;
    start.record();
    for (int i = 0; i < s.iterations; ++i) f();
    stop.record();
    stop.synchronize();
    best = std::min(best, double(stop.elapsed_ms_since(start)) / s.iterations);
  }
  return best;
}

// Milliseconds of a device-to-device copy of `bytes` total traffic (bytes / 2 read, bytes / 2 written).
double copy_ms(const settings& s, std::size_t bytes) {
  const auto n = static_cast<std::int64_t>(bytes / 2 / 4);
  tensor a(shape{n}, dtype::f32, device::cuda), b(shape{n}, dtype::f32, device::cuda);
  return time_ms(s, [&] {
    cudaMemcpyAsync(b.bytes_data(), a.bytes_data(), a.nbytes(), cudaMemcpyDeviceToDevice, cuda::current_stream());
  });
}

struct memory_result {
  std::string name;
  double fraction;
};

memory_result memory_kernel(const settings& s, const std::string& name, std::size_t bytes,
                            const std::function<void()>& f) {
  const double ms = time_ms(s, f);
  const double copy = copy_ms(s, bytes);
  const double fraction = copy / ms;
  fmt::print("{{\"bench\":\"cuda\",\"kernel\":\"{}\",\"bytes\":{},\"ms\":{:.4f},\"gbps\":{:.1f},\"copy_gbps\":{:.1f},"
             "\"fraction_of_copy\":{:.3f}}}\n",
             name, bytes, ms, bytes / ms / 1e6, bytes / copy / 1e6, fraction);
  std::fflush(stdout);
  return {name, fraction};
}

tensor device_normal(shape sh, random_engine& gen, float mean = 0, float stddev = 1) {
  return tensor::normal(sh, gen, mean, stddev).to(device::cuda);
}

// PyTorch's ffn forward+backward in ms, or a negative number and the reason.
std::pair<double, std::string> torch_ffn_ms(const settings& s, std::int64_t hidden, std::int64_t batch, bool tf32) {
  const std::string command = fmt::format("{} {} {} {} {} {} {} 2>&1", s.python, s.script, hidden, batch,
                                          s.iterations, s.repeats, tf32 ? 1 : 0);
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return {-1, "could not start " + s.python};
  std::string output;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe.get())) output += buffer;
  const auto at = output.find("\"ms\":");
  if (at == std::string::npos) {
    std::string reason = output.substr(0, output.find('\n'));
    return {-1, reason.empty() ? "no output" : reason};
  }
  return {std::stod(output.substr(at + 5)), output.substr(0, output.find('\n'))};
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  std::vector<std::int64_t> hiddens{1024, 4096};
  std::int64_t batch = 4096;
  CLI::App app{"dmoe_bench_cuda: CUDA kernels against copy bandwidth and cuBLAS, the ffn expert against PyTorch"};
  app.add_option("--iterations", s.iterations, "launches per timing")->check(CLI::PositiveNumber);
  app.add_option("--repeats", s.repeats, "timings per measurement (the best counts)")->check(CLI::PositiveNumber);
  app.add_option("--hidden", hiddens, "ffn hidden sizes");
  app.add_option("--batch", batch, "ffn batch")->check(CLI::PositiveNumber);
  app.add_option("--python", s.python, "the Python that runs the PyTorch peer");
  s.script = std::string(DMOE_BENCH_SOURCE_DIR) + "/cuda_torch_ffn.py";
  if (!std::filesystem::exists(s.script)) s.script = "bench/cuda_torch_ffn.py";
  app.add_option("--script", s.script, "the PyTorch peer's script");
  CLI11_PARSE(app, argc, argv);

  dmoe_bench::print_environment("cuda");
  if (cuda::device_count() == 0) {
    fmt::print("{{\"bench\":\"cuda\",\"skipped\":\"no CUDA GPU is visible\"}}\n");
    return 0;
  }
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  fmt::print("{{\"bench\":\"cuda\",\"gpu\":\"{}\",\"cuda_runtime\":{},\"cuda_driver\":{},\"tf32\":false}}\n",
             dmoe_bench::json_escape(cuda::device_description(0)), runtime, driver);

  random_engine gen(1);
  std::vector<memory_result> memory;
  const std::int64_t rows = 4096, cols = 4096, n = rows * cols;
  {
    const tensor a = device_normal(shape{rows, cols}, gen), b = device_normal(shape{rows, cols}, gen);
    tensor y(shape{rows, cols}, dtype::f32, device::cuda), z = a.clone(), dz = a.clone();
    const tensor bias = device_normal(shape{cols}, gen), dy = device_normal(shape{rows, cols}, gen);
    tensor dbias(shape{cols}, dtype::f32, device::cuda);
    memory.push_back(memory_kernel(s, "add", 12 * n, [&] { ops::add(ops::cuda, a, b, y); }));
    memory.push_back(memory_kernel(s, "bias_gelu_forward", 12 * n,
                                   [&] { ops::bias_activation_forward(ops::cuda, z, bias, y, ops::activation::gelu); }));
    memory.push_back(memory_kernel(s, "bias_gelu_backward", 12 * n, [&] {
      ops::bias_activation_backward(ops::cuda, z, dy, dz, &dbias, ops::activation::gelu);
    }));
  }
  double layernorm_fraction = 0;
  for (std::int64_t width : {std::int64_t{1024}, std::int64_t{4096}}) {
    const std::int64_t r = n / width;
    const tensor x = device_normal(shape{r, width}, gen, 1, 2), dy = device_normal(shape{r, width}, gen);
    const tensor gamma = device_normal(shape{width}, gen), beta = device_normal(shape{width}, gen);
    tensor y, mean, rstd, dx, dg(shape{width}, dtype::f32, device::cuda), db(shape{width}, dtype::f32, device::cuda);
    const memory_result f = memory_kernel(s, fmt::format("layer_norm_forward_{}", width), 8 * n, [&] {
      ops::layer_norm_forward(ops::cuda, x, gamma, beta, 1e-5f, y, mean, rstd);
    });
    memory.push_back(f);
    if (width == 1024) layernorm_fraction = f.fraction;
    memory.push_back(memory_kernel(s, fmt::format("layer_norm_backward_{}", width), 12 * n, [&] {
      ops::layer_norm_backward(ops::cuda, x, gamma, mean, rstd, dy, dx, dg, db);
    }));
  }
  {
    const std::int64_t classes = 32768, r = n / classes;
    const tensor logits = device_normal(shape{r, classes}, gen);
    tensor labels = tensor::uninitialized(shape{r}, dtype::i64);
    for (std::int64_t i = 0; i < r; ++i) labels.at<std::int64_t>(i) = (i * 7919) % classes;
    const tensor dlabels = labels.to(device::cuda);
    tensor p, g;
    memory.push_back(memory_kernel(s, "softmax_32768", 8 * n, [&] { ops::softmax(ops::cuda, logits, p); }));
    memory.push_back(memory_kernel(s, "cross_entropy_32768", 8 * n,
                                   [&] { ops::cross_entropy(ops::cuda, logits, dlabels, &g); }));
  }
  {
    std::vector<tensor> p, g, m, v;
    for (int i = 0; i < 16; ++i) {  // 16 tensors of 1M parameters
      p.push_back(device_normal(shape{1 << 20}, gen));
      g.push_back(device_normal(shape{1 << 20}, gen));
      m.push_back(tensor(shape{1 << 20}, dtype::f32, device::cuda));
      v.push_back(tensor(shape{1 << 20}, dtype::f32, device::cuda));
    }
    std::vector<tensor*> pp, mp, vp;
    std::vector<const tensor*> gp;
    for (int i = 0; i < 16; ++i) {
      pp.push_back(&p[i]);
      gp.push_back(&g[i]);
      mp.push_back(&m[i]);
      vp.push_back(&v[i]);
    }
    std::int64_t step = 0;
    memory.push_back(memory_kernel(s, "adam_16_tensors", 28 * (16 << 20),
                                   [&] { ops::adam_step_many(ops::cuda, pp, gp, mp, vp, ++step, {}); }));
  }
  {
    const tensor x = device_normal(shape{rows, cols}, gen);
    tensor idx = tensor::uninitialized(shape{rows}, dtype::i64);
    for (std::int64_t i = 0; i < rows; ++i) idx.at<std::int64_t>(i) = (i * 2654435761ll) % rows;
    const tensor didx = idx.to(device::cuda);
    tensor y, h;
    tensor acc(shape{rows, cols}, dtype::f32, device::cuda);
    memory.push_back(memory_kernel(s, "gather_rows", 8 * n, [&] { ops::gather_rows(ops::cuda, x, didx, y); }));
    memory.push_back(memory_kernel(s, "scatter_add_rows", 12 * n,
                                   [&] { ops::scatter_add_rows(ops::cuda, x, didx, tensor(), acc); }));
    memory.push_back(memory_kernel(s, "convert_f32_bf16", 6 * n, [&] { ops::convert(ops::cuda, x, dtype::bf16, h); }));
  }

  // GEMMs: ours (cuBLAS through dmoe, and the fused cuBLASLt linear) against a plain cublasSgemm.
  {
    const std::int64_t m = 4096, k = 4096, nn = 4096;
    const tensor a = device_normal(shape{m, k}, gen), b = device_normal(shape{nn, k}, gen);
    const tensor bias = device_normal(shape{nn}, gen);
    tensor c(shape{m, nn}, dtype::f32, device::cuda), z, y;
    cublasHandle_t handle = nullptr;
    cublasCreate(&handle);
    cublasSetStream(handle, cuda::current_stream());
    cublasSetMathMode(handle, CUBLAS_PEDANTIC_MATH);
    const float one = 1, zero = 0;
    const double flops = 2.0 * m * nn * k;
    const double plain = time_ms(s, [&] {
      cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, nn, m, k, &one, b.device_data<float>(), k, a.device_data<float>(),
                  k, &zero, c.device_data<float>(), nn);
    });
    const double ours = time_ms(s, [&] { ops::gemm(ops::cuda, a, b, c, {.trans_b = true}); });
    const double fused =
        time_ms(s, [&] { ops::linear_forward(ops::cuda, a, b, bias, z, y, ops::activation::gelu); });
    cublasDestroy(handle);
    fmt::print("{{\"bench\":\"cuda\",\"kernel\":\"gemm_4096\",\"tflops\":{:.2f},\"cublas_tflops\":{:.2f},"
               "\"ratio_vs_cublas\":{:.3f}}}\n",
               flops / ours / 1e9, flops / plain / 1e9, plain / ours);
    fmt::print("{{\"bench\":\"cuda\",\"kernel\":\"linear_gelu_4096\",\"tflops\":{:.2f},\"ratio_vs_cublas_gemm\":{:.3f}}}\n",
               flops / fused / 1e9, plain / fused);
  }

  // The ffn expert against PyTorch eager.
  double ffn_ratio = std::numeric_limits<double>::infinity();
  std::string torch_note;
  std::map<std::int64_t, double> ratios;
  std::map<std::int64_t, double> tf32_ratios;
  for (bool tf32 : {false, true})
  for (std::int64_t hidden : hiddens) {
    cuda::set_tf32(tf32);
    auto expert = nn::make_expert<ops::cuda_t>("ffn", hidden, 1);
    const tensor x = device_normal(shape{batch, hidden}, gen), dy = device_normal(shape{batch, hidden}, gen);
    const double ours = time_ms(s, [&] {
      expert->forward(x);
      expert->backward(dy);
    });
    cuda::set_tf32(false);
    const auto [torch_ms, note] = torch_ffn_ms(s, hidden, batch, tf32);
    if (tf32) {
      if (torch_ms > 0) tf32_ratios[hidden] = torch_ms / ours;
      fmt::print("{{\"bench\":\"cuda\",\"ffn_hidden\":{},\"batch\":{},\"tf32\":true,\"dmoe_ms\":{:.3f},\"torch_ms\":{:.3f},"
                 "\"ratio_vs_torch\":{:.3f}}}\n",
                 hidden, batch, ours, torch_ms, torch_ms > 0 ? torch_ms / ours : 0.0);
      continue;
    }
    const double flops = 3 * 2.0 * 2 * batch * hidden * 4 * hidden;  // two GEMMs of h x 4h, forward + 2 backward
    if (torch_ms > 0) {
      ratios[hidden] = torch_ms / ours;
      ffn_ratio = std::min(ffn_ratio, torch_ms / ours);
    } else {
      torch_note = note;
    }
    fmt::print("{{\"bench\":\"cuda\",\"ffn_hidden\":{},\"batch\":{},\"dmoe_ms\":{:.3f},\"dmoe_tflops\":{:.2f},"
               "\"torch_ms\":{:.3f},\"ratio_vs_torch\":{:.3f},\"torch\":\"{}\"}}\n",
               hidden, batch, ours, flops / ours / 1e9, torch_ms, torch_ms > 0 ? torch_ms / ours : 0.0,
               dmoe_bench::json_escape(note));
    std::fflush(stdout);
  }
  double min_fraction = 1e9;
  std::string worst;
  for (const auto& r : memory)
    if (r.fraction < min_fraction) {
      min_fraction = r.fraction;
      worst = r.name;
    }
  const cuda::memory_stats stats = cuda::memory_statistics();
  fmt::print("{{\"bench\":\"cuda\",\"ffn_ratio_vs_torch\":{},\"ffn_ratio_1024\":{:.3f},\"ffn_ratio_4096\":{:.3f},"
             "\"layernorm_fraction_of_copy\":{:.3f},\"min_memory_fraction\":{:.3f},\"min_memory_kernel\":\"{}\","
             "\"ffn_tf32_ratio_1024\":{:.3f},\"ffn_tf32_ratio_4096\":{:.3f},\"peak_device_mib\":{:.0f}{}}}\n",
             std::isfinite(ffn_ratio) ? fmt::format("{:.3f}", ffn_ratio) : std::string("null"),
             ratios.count(1024) ? ratios[1024] : 0.0, ratios.count(4096) ? ratios[4096] : 0.0, layernorm_fraction,
             min_fraction, worst, tf32_ratios.count(1024) ? tf32_ratios[1024] : 0.0,
             tf32_ratios.count(4096) ? tf32_ratios[4096] : 0.0, stats.peak_reserved / 1048576.0,
             torch_note.empty() ? std::string() : ",\"torch_note\":\"" + dmoe_bench::json_escape(torch_note) + "\"");
  return 0;
}
