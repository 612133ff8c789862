// The CUDA backend's interface: the runtime (devices, streams, events, the caching allocator, pinned buffers,
// asynchronous copies) and every op of ops/cpu/ with the `cuda_t` tag. Plain C++: any translation unit may include
// it (no CUDA headers); the definitions are in include/dmoe/ops/cuda/*.cuh, compiled by nvcc once per program
// (the CMake target dmoe::cuda, or <dmoe/impl/cuda_src.cuh> included by one .cu file of a header-only program).
//
// Tensors given to a cuda op must live on the CUDA device (tensor::to(device::cuda)); a host tensor is refused
// with invalid_argument_error naming the op. Ops run asynchronously on the calling thread's current stream (the
// per-thread default stream unless a cuda::stream_guard says otherwise); ops that return a host value (losses,
// norms, top-k selections) wait for it. CUDA failures throw device_error naming the call, file, line and the
// CUDA error string.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cpu/activation.hpp>
#include <dmoe/ops/cpu/gemm.hpp>
#include <dmoe/ops/optimizer.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

struct CUstream_st;
struct CUevent_st;

DMOE_BEGIN_NAMESPACE
namespace cuda {

// ---- devices ----
// Number of visible CUDA devices; 0 when there is no GPU or no driver (never throws).
int device_count() noexcept;
// The calling thread's current device ordinal.
int current_device();
// Makes the ordinal the calling thread's current device; throws device_error when there is no such device.
void set_device(int index);
// "NVIDIA H200, 132 SMs, 139.8 GiB, compute 9.0"
std::string device_description(int index);
// Waits until every stream of the current device is idle.
void synchronize();
// Lets cuBLAS GEMMs use TF32 tensor cores (about 10 bits of mantissa in the products) on this thread's future
// handles and the existing ones; off by default, so GEMMs compute in full f32 like the CPU backend.
void set_tf32(bool allowed);
bool tf32();

// ---- streams and events ----
using stream_handle = CUstream_st*;

// An owned, non-blocking CUDA stream.
class stream {
 public:
  stream();
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;
  ~stream();
  stream_handle native() const noexcept { return handle_; }
  // Waits for everything queued on the stream.
  void synchronize() const;

 private:
  stream_handle handle_ = nullptr;
};

// The stream cuda ops of the calling thread run on.
stream_handle current_stream() noexcept;

// Makes `s` the calling thread's current stream for its lifetime (and restores the previous one).
class stream_guard {
 public:
  explicit stream_guard(const stream& s) noexcept;
  stream_guard(const stream_guard&) = delete;
  stream_guard& operator=(const stream_guard&) = delete;
  ~stream_guard();

 private:
  stream_handle previous_;
};

// An owned CUDA event with timing.
class event {
 public:
  event();
  event(const event&) = delete;
  event& operator=(const event&) = delete;
  ~event();
  // Records the event on the stream (the current one by default).
  void record(stream_handle on = current_stream());
  // Makes `s` wait for the work recorded before this event.
  void wait_on(stream_handle s) const;
  void synchronize() const;
  // Milliseconds from `start` to this event (both recorded and complete).
  float elapsed_ms_since(const event& start) const;
  CUevent_st* native() const noexcept { return handle_; }

 private:
  CUevent_st* handle_ = nullptr;
};

// ---- memory ----
// The caching allocator behind every device tensor. Freed blocks stay cached for their stream and are reused by
// later allocations of a similar size on it, so a training step in steady state makes no cudaMalloc. When
// cudaMalloc fails, every cached block is returned to the driver and the allocation retried once; if it still
// fails, device_error says how much was asked for, in use and cached.
// Contract (as PyTorch's): a block is reused in the order of the stream it was allocated on; a tensor used on
// another stream must be synchronised with that stream (an event) before it is released.
struct memory_stats {
  std::size_t allocated = 0;       // bytes in live device tensors (rounded sizes)
  std::size_t peak_allocated = 0;  // the most `allocated` has been since the last reset
  std::size_t reserved = 0;        // bytes taken from the driver (live + cached)
  std::size_t peak_reserved = 0;
  std::uint64_t device_mallocs = 0;  // cudaMalloc calls
  std::uint64_t cache_hits = 0;      // allocations served from the cache
};
memory_stats memory_statistics();
// Resets the peaks to the current values.
void reset_peak_memory();
// Returns every cached (free) block to the driver; live tensors stay.
void release_cached_memory();

// Page-locked host memory: host↔device copies from it run asynchronously and overlap with other work.
class pinned_buffer {
 public:
  pinned_buffer() = default;
  explicit pinned_buffer(std::size_t bytes);
  pinned_buffer(pinned_buffer&& other) noexcept;
  pinned_buffer& operator=(pinned_buffer&& other) noexcept;
  ~pinned_buffer();
  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return bytes_; }
  std::span<std::byte> bytes() const noexcept { return {data_, bytes_}; }

 private:
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// Copies bytes between host memory and a device tensor's storage on stream `on`, returning before the copy ends
// (asynchronous when the host memory is pinned); record an event or synchronise the stream before using either
// side. The byte count must equal the tensor's nbytes.
void copy_to_device_async(std::span<const std::byte> host, tensor& device_tensor, stream_handle on = current_stream());
void copy_to_host_async(const tensor& device_tensor, std::span<std::byte> host, stream_handle on = current_stream());

}  // namespace cuda

namespace ops {

// Each op has the contract of its CPU twin in ops/cpu/ (same argument order, shapes, aliasing and errors), with
// tensors on the CUDA device.

// ---- GEMM (cuBLAS; f32 math unless cuda::set_tf32(true)) ----
void gemm(cuda_t, const tensor& a, const tensor& b, tensor& c, const gemm_options& options = {});
tensor matmul(cuda_t, const tensor& a, const tensor& b, bool trans_a = false, bool trans_b = false);
// y = act(x w^T + bias) in one cuBLASLt call with the bias and activation in its epilogue; z receives the
// pre-activation (x w^T + bias) for backward (z may be y for the identity). x [rows, in], w [out, in], bias [out]
// or empty, z and y [rows, out]. The same numbers as gemm + bias_activation_forward up to rounding.
void linear_forward(cuda_t, const tensor& x, const tensor& w, const tensor& bias, tensor& z, tensor& y,
                    activation act);

// ---- bias + activation ----
void bias_activation_forward(cuda_t, tensor& z, const tensor& bias, tensor& y, activation act);
void bias_activation_backward(cuda_t, const tensor& z, const tensor& dy, tensor& dz, tensor* dbias, activation act);
void activation_forward(cuda_t, const tensor& x, tensor& y, activation act);

// ---- elementwise ----
void add(cuda_t, const tensor& a, const tensor& b, tensor& y);
void axpy(cuda_t, float alpha, const tensor& x, tensor& y);
void multiply(cuda_t, const tensor& a, const tensor& b, tensor& y);
void scale(cuda_t, tensor& x, float alpha);
void copy(cuda_t, const tensor& x, tensor& y);
void broadcast_rows(cuda_t, const tensor& row, tensor& y);
void sum_rows(cuda_t, const tensor& x, tensor& sum);

// ---- normalisation, softmax, losses (a warp per row; sums in double) ----
void layer_norm_forward(cuda_t, const tensor& x, const tensor& gamma, const tensor& beta, float eps, tensor& y,
                        tensor& mean, tensor& rstd);
void layer_norm_backward(cuda_t, const tensor& x, const tensor& gamma, const tensor& mean, const tensor& rstd,
                         const tensor& dy, tensor& dx, tensor& dgamma, tensor& dbeta);
void softmax(cuda_t, const tensor& x, tensor& y);
void softmax_backward(cuda_t, const tensor& y, const tensor& dy, tensor& dx);
// Fused softmax + cross-entropy: one pass per row writes the logit gradient (in place when dlogits is &logits).
float cross_entropy(cuda_t, const tensor& logits, const tensor& labels, tensor* dlogits = nullptr);
float mse(cuda_t, const tensor& prediction, const tensor& target, tensor* dprediction = nullptr);

// ---- optimizers ----
void adam_step(cuda_t, tensor& param, const tensor& grad, tensor& m, tensor& v, std::int64_t step,
               const adam_hyper& hyper);
// Adam/AdamW over many parameters in one kernel launch (nn::adam on CUDA uses it): params[i], grads[i], m[i],
// v[i] of one shape each.
void adam_step_many(cuda_t, std::span<tensor* const> params, std::span<const tensor* const> grads,
                    std::span<tensor* const> m, std::span<tensor* const> v, std::int64_t step,
                    const adam_hyper& hyper);
void sgd_step(cuda_t, tensor& param, const tensor& grad, tensor& momentum_buffer, const sgd_hyper& hyper);
double grad_norm(cuda_t, std::span<const tensor> grads);
double clip_grad_norm(cuda_t, std::span<tensor> grads, float max_norm,
                      nonfinite_norm on_nonfinite = nonfinite_norm::error);

// ---- gather / scatter / embedding / top-k / dropout / attention ----
void gather_rows(cuda_t, const tensor& x, const tensor& indices, tensor& y);
void scatter_add_rows(cuda_t, const tensor& x, const tensor& indices, const tensor& scale, tensor& y);
void embedding_forward(cuda_t, const tensor& table, const tensor& ids, tensor& y);
void embedding_backward(cuda_t, const tensor& ids, const tensor& dy, tensor& dtable);
void topk(cuda_t, const tensor& x, std::int64_t k, tensor& values, tensor& indices);
// Fills mask with 0 (probability p) or 1/(1-p) from a counter-based generator (Philox-style hash) seeded by gen:
// the same gen state gives the same mask on every run, not the CPU's mask.
void dropout_mask(cuda_t, tensor& mask, float p, random_engine& gen);
void dropout_apply(cuda_t, const tensor& x, const tensor& mask, tensor& y);
void causal_attention_forward(cuda_t, const tensor& qkv, std::int64_t heads, tensor& y, tensor& probs);
void causal_attention_backward(cuda_t, const tensor& qkv, const tensor& probs, const tensor& dy, std::int64_t heads,
                               tensor& dqkv);

// ---- wire conversions ----
// y = x converted to `target`: f32 to f16 or bf16 (rounded to nearest even; NaN stays NaN, overflow gives inf),
// or f16/bf16 to f32 (exact). y gets x's shape; the wire codec's 16-bit formats on the device.
void convert(cuda_t, const tensor& x, dtype target, tensor& y);

// The k best experts of each row of grid scores f32 [batch, sum(grid)] (see moe::product_key_topk): scores f32
// [batch, k] best first and keys i64 [batch, k], each expert's row-major index in the grid; equal scores order by
// smaller key. A block per row: per-dimension top-k by a bitonic sort in shared memory, then the candidates
// (i+1)(j+1) <= k of each combination step. Limits: k <= 256 and every extent <= 4096 (moe's wrapper falls back to
// the CPU beyond them); non-finite scores throw invalid_argument_error.
void product_key_topk(cuda_t, const tensor& grid_scores, std::span<const std::uint32_t> grid, std::int64_t k,
                      tensor& scores, tensor& keys);
inline constexpr std::int64_t cuda_product_key_max_k = 256;
inline constexpr std::uint32_t cuda_product_key_max_extent = 4096;

}  // namespace ops
DMOE_END_NAMESPACE
