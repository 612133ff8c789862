// The CUDA runtime pieces: devices, streams, events, cuBLAS handles per stream, the caching allocator behind device
// tensors (installed as the tensor layer's device memory when the program starts), pinned buffers, async copies.
#pragma once

#include <dmoe/ops/cuda/common.cuh>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace cuda {

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

int current_device() {
  int index = 0;
  DMOE_CUDA_CHECK(cudaGetDevice(&index));
  return index;
}

void set_device(int index) {
  const int count = device_count();
  if (index < 0 || index >= count)
    throw device_error(fmt::format("cuda:{}: {} CUDA device(s) are present", index, count));
  DMOE_CUDA_CHECK(cudaSetDevice(index));
}

std::string device_description(int index) {
  cudaDeviceProp prop{};
  DMOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  return fmt::format("{}, {} SMs, {:.1f} GiB, compute {}.{}", prop.name, prop.multiProcessorCount,
                     static_cast<double>(prop.totalGlobalMem) / (1 << 30), prop.major, prop.minor);
}

void synchronize() { DMOE_CUDA_CHECK(cudaDeviceSynchronize()); }

namespace detail {

inline std::atomic<bool>& tf32_setting() {
  static std::atomic<bool> allowed{false};
  return allowed;
}

inline thread_local stream_handle thread_stream = nullptr;  // null: the per-thread default stream

// One cuBLAS handle per (thread, device, stream), made on first use; cuBLASLt shares one handle per thread.
struct blas_handles {
  std::map<std::pair<int, cudaStream_t>, cublasHandle_t> by_stream;
  cublasLtHandle_t lt = nullptr;
  bool tf32 = false;
  ~blas_handles() {
    for (auto& [key, handle] : by_stream) cublasDestroy(handle);
    if (lt) cublasLtDestroy(lt);
  }
};
inline thread_local blas_handles thread_blas;

inline cublasMath_t math_mode() { return tf32_setting().load() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH; }

}  // namespace detail

void set_tf32(bool allowed) {
  detail::tf32_setting().store(allowed);
  for (auto& [key, handle] : detail::thread_blas.by_stream) DMOE_CUDA_CHECK(cublasSetMathMode(handle, detail::math_mode()));
}
bool tf32() { return detail::tf32_setting().load(); }

stream_handle current_stream() noexcept {
  return detail::thread_stream ? detail::thread_stream : static_cast<stream_handle>(cudaStreamPerThread);
}

stream::stream() { DMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&handle_, cudaStreamNonBlocking)); }
namespace detail {
inline void on_stream_destroyed(cudaStream_t s) noexcept;
}  // namespace detail

stream::~stream() {
  if (!handle_) return;
  detail::on_stream_destroyed(handle_);
  cudaStreamDestroy(handle_);
}
void stream::synchronize() const { DMOE_CUDA_CHECK(cudaStreamSynchronize(handle_)); }

stream_guard::stream_guard(const stream& s) noexcept : previous_(detail::thread_stream) {
  detail::thread_stream = s.native();
}
stream_guard::~stream_guard() { detail::thread_stream = previous_; }

event::event() { DMOE_CUDA_CHECK(cudaEventCreate(&handle_)); }
event::~event() {
  if (handle_) cudaEventDestroy(handle_);
}
void event::record(stream_handle on) { DMOE_CUDA_CHECK(cudaEventRecord(handle_, on)); }
void event::wait_on(stream_handle s) const { DMOE_CUDA_CHECK(cudaStreamWaitEvent(s, handle_, 0)); }
void event::synchronize() const { DMOE_CUDA_CHECK(cudaEventSynchronize(handle_)); }
float event::elapsed_ms_since(const event& start) const {
  float ms = 0;
  DMOE_CUDA_CHECK(cudaEventElapsedTime(&ms, start.handle_, handle_));
  return ms;
}

namespace detail {

// The cuBLAS handle for the calling thread's current device and stream, with the math mode set.
inline cublasHandle_t blas() {
  const int device = current_device();
  const cudaStream_t s = current_stream();
  auto& handles = thread_blas.by_stream;
  auto it = handles.find({device, s});
  if (it == handles.end()) {
    cublasHandle_t h = nullptr;
    DMOE_CUDA_CHECK(cublasCreate(&h));
    DMOE_CUDA_CHECK(cublasSetStream(h, s));
    it = handles.emplace(std::pair{device, s}, h).first;
  }
  DMOE_CUDA_CHECK(cublasSetMathMode(it->second, math_mode()));
  return it->second;
}

inline cublasLtHandle_t blas_lt() {
  if (!thread_blas.lt) DMOE_CUDA_CHECK(cublasLtCreate(&thread_blas.lt));
  return thread_blas.lt;
}

// The caching allocator (see memory_stats in ops/cuda.hpp). Sizes round up to 512 bytes; a cached block serves a
// request when it is at most a quarter larger. Blocks are cached per (device, stream, thread): the per-thread
// default stream is one handle for every thread but a different stream on the GPU, so its blocks stay with the
// thread that freed them.
class caching_allocator {
 public:
  static caching_allocator& instance() {
    static caching_allocator* a = new caching_allocator();  // never destroyed: tensors may outlive statics
    return *a;
  }

  void* allocate(std::size_t bytes) {
    const std::size_t size = round(bytes);
    const int device = current_device();
    const cudaStream_t s = current_stream();
    const pool_key key{device, s, owner_of(s)};
    {
      std::lock_guard lock(mutex_);
      auto& pool = free_[key];
      auto it = pool.lower_bound(size);
      if (it != pool.end() && it->first <= size + size / 4) {
        void* p = it->second;
        live_[p] = block{it->first, key};
        pool.erase(it);
        stats_.allocated += live_[p].size;
        stats_.peak_allocated = std::max(stats_.peak_allocated, stats_.allocated);
        ++stats_.cache_hits;
        return p;
      }
    }
    void* p = nullptr;
    cudaError_t status = cudaMalloc(&p, size);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached();
      status = cudaMalloc(&p, size);
    }
    if (status != cudaSuccess) {
      cudaGetLastError();
      std::size_t free_bytes = 0, total = 0;
      cudaMemGetInfo(&free_bytes, &total);
      const memory_stats s_now = stats();
      throw device_error(fmt::format(
          "cudaMalloc of {} bytes failed ({}): {} bytes in live tensors, {} reserved by dmoe, {} of {} free on cuda:{}",
          size, cudaGetErrorString(status), s_now.allocated, s_now.reserved, free_bytes, total, device));
    }
    std::lock_guard lock(mutex_);
    live_[p] = block{size, key};
    ++stats_.device_mallocs;
    stats_.allocated += size;
    stats_.reserved += size;
    stats_.peak_allocated = std::max(stats_.peak_allocated, stats_.allocated);
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
    return p;
  }

  void deallocate(void* p) noexcept {
    std::lock_guard lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) return;
    const block b = it->second;
    live_.erase(it);
    stats_.allocated -= b.size;
    free_[b.key].emplace(b.size, p);
  }

  // A stream is going away: its cached blocks go back to the driver (live ones return to the cache when freed and
  // serve a later stream with the same handle, which is safe: the old stream's work is complete).
  void forget_stream(cudaStream_t s) noexcept {
    std::lock_guard lock(mutex_);
    bool synced = false;
    for (auto it = free_.begin(); it != free_.end();) {
      if (std::get<1>(it->first) != s) {
        ++it;
        continue;
      }
      if (!synced) {
        cudaStreamSynchronize(s);
        synced = true;
      }
      for (auto& [size, p] : it->second) {
        cudaFree(p);
        stats_.reserved -= size;
      }
      it = free_.erase(it);
    }
    cudaGetLastError();
  }

  void release_cached() noexcept {
    std::lock_guard lock(mutex_);
    if (free_.empty()) return;
    cudaDeviceSynchronize();
    for (auto& [key, pool] : free_)
      for (auto& [size, p] : pool) {
        cudaFree(p);
        stats_.reserved -= size;
      }
    free_.clear();
    cudaGetLastError();
  }

  memory_stats stats() {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  void reset_peaks() {
    std::lock_guard lock(mutex_);
    stats_.peak_allocated = stats_.allocated;
    stats_.peak_reserved = stats_.reserved;
  }

 private:
  using pool_key = std::tuple<int, cudaStream_t, std::thread::id>;
  struct block {
    std::size_t size;
    pool_key key;
  };
  static std::size_t round(std::size_t bytes) { return std::max<std::size_t>(512, (bytes + 511) / 512 * 512); }
  static std::thread::id owner_of(cudaStream_t s) {
    return s == cudaStreamPerThread ? std::this_thread::get_id() : std::thread::id{};
  }

  std::mutex mutex_;
  std::map<pool_key, std::multimap<std::size_t, void*>> free_;
  std::unordered_map<void*, block> live_;
  memory_stats stats_;
};

// This thread's cuBLAS handles for the stream, and every cached block of it, go: a program that makes a stream per
// request does not grow without bound. (Other threads' handles for it stay until those threads end.)
inline void on_stream_destroyed(cudaStream_t s) noexcept {
  auto& handles = thread_blas.by_stream;
  for (auto it = handles.begin(); it != handles.end();) {
    if (it->first.second == s) {
      cublasDestroy(it->second);
      it = handles.erase(it);
    } else {
      ++it;
    }
  }
  caching_allocator::instance().forget_stream(s);
}

inline cudaMemcpyKind copy_kind(device dst, device src) {
  if (dst == device::host) return src == device::host ? cudaMemcpyHostToHost : cudaMemcpyDeviceToHost;
  return src == device::host ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice;
}

// The tensor layer's device memory, backed by the caching allocator on the current stream.
inline const dmoe::detail::device_memory tensor_memory{
    [](std::size_t bytes) { return caching_allocator::instance().allocate(bytes); },
    [](void* p, std::size_t) noexcept { caching_allocator::instance().deallocate(p); },
    [](void* dst, device dst_device, const void* src, device src_device, std::size_t bytes) {
      const cudaStream_t s = current_stream();
      DMOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, copy_kind(dst_device, src_device), s));
      DMOE_CUDA_CHECK(cudaStreamSynchronize(s));
    },
    [](void* p, std::size_t bytes, bool wait) {
      DMOE_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, current_stream()));
      if (wait) DMOE_CUDA_CHECK(cudaStreamSynchronize(current_stream()));
    },
    []() { return device_count(); },
    []() { return current_device(); },
    [](int index) { set_device(index); },
};

[[maybe_unused]] static const bool tensor_memory_installed = [] {
  dmoe::detail::device_memory_hook().store(&tensor_memory, std::memory_order_release);
  return true;
}();

}  // namespace detail

memory_stats memory_statistics() { return detail::caching_allocator::instance().stats(); }
void reset_peak_memory() { detail::caching_allocator::instance().reset_peaks(); }
void release_cached_memory() { detail::caching_allocator::instance().release_cached(); }

pinned_buffer::pinned_buffer(std::size_t bytes) : bytes_(bytes) {
  void* p = nullptr;
  DMOE_CUDA_CHECK(cudaHostAlloc(&p, std::max<std::size_t>(bytes, 1), cudaHostAllocDefault));
  data_ = static_cast<std::byte*>(p);
}
pinned_buffer::pinned_buffer(pinned_buffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
pinned_buffer& pinned_buffer::operator=(pinned_buffer&& other) noexcept {
  if (this != &other) {
    if (data_) cudaFreeHost(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}
pinned_buffer::~pinned_buffer() {
  if (data_) cudaFreeHost(data_);
}

void copy_to_device_async(std::span<const std::byte> host, tensor& device_tensor, stream_handle on) {
  ops::cuda_detail::check_f32("copy_to_device_async", "device_tensor", device_tensor, device_tensor.dtype());
  if (host.size() != device_tensor.nbytes())
    throw shape_error(fmt::format("copy_to_device_async: {} host bytes for {} ({} bytes)", host.size(),
                                  device_tensor.description(), device_tensor.nbytes()));
  DMOE_CUDA_CHECK(
      cudaMemcpyAsync(device_tensor.bytes_data(), host.data(), host.size(), cudaMemcpyHostToDevice, on));
}
void copy_to_host_async(const tensor& device_tensor, std::span<std::byte> host, stream_handle on) {
  ops::cuda_detail::check_f32("copy_to_host_async", "device_tensor", device_tensor, device_tensor.dtype());
  if (host.size() != device_tensor.nbytes())
    throw shape_error(fmt::format("copy_to_host_async: {} host bytes for {} ({} bytes)", host.size(),
                                  device_tensor.description(), device_tensor.nbytes()));
  DMOE_CUDA_CHECK(
      cudaMemcpyAsync(host.data(), device_tensor.bytes_data(), host.size(), cudaMemcpyDeviceToHost, on));
}

}  // namespace cuda
DMOE_END_NAMESPACE
