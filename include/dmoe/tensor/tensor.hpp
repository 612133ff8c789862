// dmoe::tensor: a shape, a dtype and contiguous row-major storage (64-byte aligned) on the host or a device.
//
// A tensor is a handle: copying one shares its storage (like a shared_ptr), and views made by
// rows(), row() and reshape() share it too and keep it alive. clone() makes a deep copy.
// Modules keep buffers between calls and reuse them only while no one else holds them
// (resize() allocates afresh when the storage is shared), so a returned tensor stays valid.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/tensor/device.hpp>
#include <dmoe/tensor/dtype.hpp>
#include <dmoe/tensor/shape.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE

// The seeded generator used by every random initialiser in dmoe.
using random_engine = std::mt19937_64;

namespace detail {

inline constexpr std::size_t tensor_alignment = 64;  // one cache line, one AVX-512 register

// One allocation; tensors and their views share it. Host storage is 64-byte aligned; device storage comes from
// the CUDA backend's caching allocator (256-byte aligned).
class storage {
 public:
  DMOE_LAZY storage(std::size_t bytes, device where) : bytes_(bytes), where_(where) {
    if (where != device::host) {
      const device_memory& memory = require_device_memory(
          dmoe::format("tensor: {} storage of {} bytes", to_string(where), bytes));
      index_ = memory.current();
      data_ = memory.allocate(bytes);
      memory_ = &memory;
      return;
    }
    const std::size_t rounded = (bytes + tensor_alignment - 1) / tensor_alignment * tensor_alignment;
    data_ = std::aligned_alloc(tensor_alignment, rounded == 0 ? tensor_alignment : rounded);
    if (!data_) throw std::bad_alloc();
  }
  storage(const storage&) = delete;
  storage& operator=(const storage&) = delete;
  ~storage() {
    if (memory_)
      memory_->deallocate(data_, bytes_);
    else
      std::free(data_);
  }

  std::byte* data() const noexcept { return static_cast<std::byte*>(data_); }
  std::size_t bytes() const noexcept { return bytes_; }
  device where() const noexcept { return where_; }
  int index() const noexcept { return index_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  device where_ = device::host;
  const device_memory* memory_ = nullptr;  // set for device storage
  int index_ = 0;                          // the CUDA ordinal of device storage
};

}  // namespace detail

class tensor {
 public:
  // An empty tensor: shape [0], f32, no storage.
  tensor() : shape_{0} {}
  // Zero-filled storage for the shape.
  DMOE_LAZY explicit tensor(dmoe::shape s, dmoe::dtype t = dtype::f32, dmoe::device where = device::host)
      : tensor(uninitialized(s, t, where)) {
    // Device zeros are complete on return: another stream (a networking thread's copy) may write the tensor next.
    if (!is_host() && nbytes() > 0)
      detail::require_device_memory("tensor").zero(bytes_data(), nbytes(), true);
    else
      zero();
  }

  // Storage whose contents are unspecified until written (for outputs about to be overwritten).
  DMOE_LAZY static tensor uninitialized(dmoe::shape s, dmoe::dtype t = dtype::f32, dmoe::device where = device::host) {
    tensor r;
    r.shape_ = s;
    r.dtype_ = t;
    r.storage_ = std::make_shared<detail::storage>(static_cast<std::size_t>(s.numel()) * size_of(t), where);
    return r;
  }
  DMOE_LAZY static tensor zeros(dmoe::shape s, dmoe::dtype t = dtype::f32) { return tensor(s, t); }
  DMOE_LAZY static tensor full(dmoe::shape s, float value) {
    tensor r = uninitialized(s);
    r.fill(value);
    return r;
  }
  // Samples from N(mean, stddev^2) with the given generator.
  DMOE_LAZY static tensor normal(dmoe::shape s, random_engine& gen, float mean = 0.0f, float stddev = 1.0f) {
    tensor r = uninitialized(s);
    r.fill_normal(gen, mean, stddev);
    return r;
  }
  // Samples from U[low, high) with the given generator.
  DMOE_LAZY static tensor uniform(dmoe::shape s, random_engine& gen, float low = 0.0f, float high = 1.0f) {
    tensor r = uninitialized(s);
    r.fill_uniform(gen, low, high);
    return r;
  }
  // A tensor holding a copy of the values, with the given shape.
  template <class T>
  static tensor from(dmoe::shape s, std::span<const T> values) {
    if (static_cast<std::int64_t>(values.size()) != s.numel())
      throw shape_error(dmoe::format("tensor::from: {} values for shape {}", values.size(), s));
    tensor r = uninitialized(s, dtype_of_v<T>);
    if (!values.empty()) std::memcpy(r.bytes_data(), values.data(), values.size_bytes());
    return r;
  }
  DMOE_LAZY static tensor from(dmoe::shape s, std::initializer_list<float> values) {
    return from<float>(s, std::span<const float>(values.begin(), values.size()));
  }

  const dmoe::shape& shape() const noexcept { return shape_; }
  dmoe::dtype dtype() const noexcept { return dtype_; }
  dmoe::device device() const noexcept { return storage_ ? storage_->where() : device::host; }
  bool is_host() const noexcept { return device() == device::host; }
  // The CUDA ordinal of device storage (0 on the host).
  int device_index() const noexcept { return storage_ ? storage_->index() : 0; }
  std::size_t rank() const noexcept { return shape_.rank(); }
  // Dimension i, counted from the back when negative.
  DMOE_LAZY std::int64_t dim(std::ptrdiff_t i) const { return shape_.dim(i); }
  std::int64_t numel() const noexcept { return shape_.numel(); }
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(numel()) * size_of(dtype_); }
  // True when there is no storage (a default-constructed tensor).
  bool empty() const noexcept { return !storage_; }
  // True when no other tensor (copy or view) shares this storage. Then this thread may write the storage: the
  // acquire fence orders those writes after everything the other holders did with it before letting go, also on
  // other threads (use_count() alone is a relaxed load; e.g. a server's network thread drops the rows of a batch's
  // output once sent, while its compute thread reuses the module's buffer for the next batch).
  DMOE_LAZY bool unique() const noexcept {
    if (!storage_ || storage_.use_count() != 1) return false;
    std::atomic_thread_fence(std::memory_order_acquire);
    return true;
  }
  bool shares_storage_with(const tensor& other) const noexcept { return storage_ && storage_ == other.storage_; }
  // True when some byte of this tensor's elements is also one of other's (views of disjoint rows do not overlap).
  DMOE_LAZY bool overlaps(const tensor& other) const noexcept {
    if (!shares_storage_with(other) || nbytes() == 0 || other.nbytes() == 0) return false;
    return offset_ < other.offset_ + other.nbytes() && other.offset_ < offset_ + nbytes();
  }

  // Typed element pointer; T must match the dtype and the storage must be on the host (device_data for a device).
  template <class T>
  T* data() {
    check_access<T>();
    return reinterpret_cast<T*>(bytes_data());
  }
  template <class T>
  const T* data() const {
    check_access<T>();
    return reinterpret_cast<const T*>(bytes_data());
  }
  // Typed element pointer on the tensor's device (host or CUDA), for kernels; T must match the dtype.
  template <class T>
  T* device_data() {
    check_dtype<T>();
    return reinterpret_cast<T*>(bytes_data());
  }
  template <class T>
  const T* device_data() const {
    check_dtype<T>();
    return reinterpret_cast<const T*>(bytes_data());
  }
  template <class T>
  std::span<T> span() {
    return {data<T>(), static_cast<std::size_t>(numel())};
  }
  template <class T>
  std::span<const T> span() const {
    return {data<T>(), static_cast<std::size_t>(numel())};
  }
  // Raw bytes, whatever the dtype (for codecs and checkpoints); on a device these are device addresses.
  std::byte* bytes_data() noexcept { return storage_ ? storage_->data() + offset_ : nullptr; }
  const std::byte* bytes_data() const noexcept { return storage_ ? storage_->data() + offset_ : nullptr; }
  std::span<std::byte> bytes() noexcept { return {bytes_data(), nbytes()}; }
  std::span<const std::byte> bytes() const noexcept { return {bytes_data(), nbytes()}; }

  // Element access with one index per dimension, bounds-checked: t.at<float>(i, j).
  template <class T = float, class... Index>
  T& at(Index... index) {
    return data<T>()[flat_index({static_cast<std::int64_t>(index)...})];
  }
  template <class T = float, class... Index>
  const T& at(Index... index) const {
    return data<T>()[flat_index({static_cast<std::int64_t>(index)...})];
  }
  // The single value of a one-element f32 tensor.
  DMOE_LAZY float item() const {
    if (numel() != 1) throw shape_error(dmoe::format("tensor::item: tensor of shape {} is not one value", shape_));
    return *data<float>();
  }

  // Rows [begin, end) of the first dimension, sharing storage.
  DMOE_LAZY tensor rows(std::int64_t begin, std::int64_t end) const {
    if (rank() == 0) throw shape_error("tensor::rows: a scalar has no rows");
    if (begin < 0 || end < begin || end > shape_[0])
      throw shape_error(dmoe::format("tensor::rows: rows [{}, {}) of a tensor of shape {}", begin, end, shape_));
    tensor r = *this;
    r.shape_ = shape_.with(0, end - begin);
    r.offset_ = offset_ + static_cast<std::size_t>(begin) * row_bytes();
    return r;
  }
  // Row i, with the first dimension dropped, sharing storage.
  DMOE_LAZY tensor row(std::int64_t i) const {
    tensor r = rows(i, i + 1);
    r.shape_ = shape_.without_first();
    return r;
  }
  // The same elements with another shape of equal size, sharing storage.
  DMOE_LAZY tensor reshape(dmoe::shape s) const {
    if (s.numel() != numel())
      throw shape_error(dmoe::format("tensor::reshape: {} has {} elements but {} has {}", shape_, numel(), s, s.numel()));
    tensor r = *this;
    r.shape_ = s;
    return r;
  }
  // A 2-d view [outer, inner] (all leading dimensions folded into rows).
  DMOE_LAZY tensor as_matrix() const { return reshape(dmoe::shape{shape_.outer(), shape_.inner()}); }

  // A deep copy with its own storage.
  DMOE_LAZY tensor clone() const {
    if (empty()) return tensor();
    tensor r = uninitialized(shape_, dtype_, device());
    r.copy_from(*this);
    return r;
  }
  // Copies the elements of other, which must have the same shape and dtype, from any device to any device (the
  // explicit way across devices); the copy is complete when it returns.
  DMOE_LAZY void copy_from(const tensor& other) {
    if (other.shape_ != shape_ || other.dtype_ != dtype_)
      throw shape_error(dmoe::format("tensor::copy_from: destination is {} {} but source is {} {}", shape_, dtype_,
                                    other.shape_, other.dtype_));
    if (nbytes() == 0) return;
    if (is_host() && other.is_host()) {
      std::memmove(bytes_data(), other.bytes_data(), nbytes());
      return;
    }
    detail::require_device_memory("tensor::copy_from")
        .copy(bytes_data(), device(), other.bytes_data(), other.device(), nbytes());
  }
  // This tensor on the device: itself (sharing storage) when it is there already, else a copy.
  DMOE_LAZY tensor to(dmoe::device where) const {
    if (empty() || where == device()) return *this;
    tensor r = uninitialized(shape_, dtype_, where);
    r.copy_from(*this);
    return r;
  }
  // Gives this tensor the shape and dtype on the device; keeps the storage when this tensor is its only holder,
  // it is on that device and large enough, else allocates new storage. Contents are unspecified afterwards.
  DMOE_LAZY void resize(dmoe::shape s, dmoe::dtype t = dtype::f32, dmoe::device where = device::host) {
    const std::size_t need = static_cast<std::size_t>(s.numel()) * size_of(t);
    if (unique() && offset_ == 0 && storage_->where() == where && storage_->bytes() >= need) {
      shape_ = s;
      dtype_ = t;
      return;
    }
    *this = uninitialized(s, t, where);
  }

  DMOE_LAZY void fill(float value) {
    for (float& x : span<float>()) x = value;
  }
  DMOE_LAZY void zero() {
    if (nbytes() == 0) return;
    if (is_host())
      std::memset(bytes_data(), 0, nbytes());
    else
      detail::require_device_memory("tensor::zero").zero(bytes_data(), nbytes(), false);
  }
  DMOE_LAZY void fill_normal(random_engine& gen, float mean = 0.0f, float stddev = 1.0f) {
    std::normal_distribution<float> dist(mean, stddev);
    for (float& x : span<float>()) x = dist(gen);
  }
  DMOE_LAZY void fill_uniform(random_engine& gen, float low = 0.0f, float high = 1.0f) {
    std::uniform_real_distribution<float> dist(low, high);
    for (float& x : span<float>()) x = dist(gen);
  }

  // "f32 [3, 4] host"
  DMOE_LAZY std::string description() const {
    if (is_host()) return dmoe::format("{} {} host", dtype_, shape_);
    return dmoe::format("{} {} cuda:{}", dtype_, shape_, device_index());
  }

 private:
  DMOE_LAZY std::size_t row_bytes() const {
    return static_cast<std::size_t>(shape_.without_first().numel()) * size_of(dtype_);
  }
  template <class T>
  void check_dtype() const {
    if (dtype_of_v<T> != dtype_)
      throw invalid_argument_error(
          dmoe::format("tensor: elements of a {} tensor accessed as {}", description(), to_string(dtype_of_v<T>)));
  }
  template <class T>
  void check_access() const {
    check_dtype<T>();
    check_host("element access");
  }
  DMOE_LAZY void check_host(std::string_view what) const {
    if (!is_host())
      throw invalid_argument_error(dmoe::format(
          "tensor {}: {} tensor is not on the host (copy it with to(device::host) first)", what, description()));
  }
  DMOE_LAZY std::size_t flat_index(std::initializer_list<std::int64_t> index) const {
    if (index.size() != rank())
      throw shape_error(dmoe::format("tensor::at: {} indices for a tensor of shape {}", index.size(), shape_));
    std::size_t flat = 0;
    std::size_t i = 0;
    for (std::int64_t v : index) {
      if (v < 0 || v >= shape_[i])
        throw shape_error(dmoe::format("tensor::at: index {} out of range in dimension {} of {}", v, i, shape_));
      flat = flat * static_cast<std::size_t>(shape_[i]) + static_cast<std::size_t>(v);
      ++i;
    }
    return flat;
  }

  dmoe::shape shape_;
  dmoe::dtype dtype_ = dtype::f32;
  std::shared_ptr<detail::storage> storage_;
  std::size_t offset_ = 0;  // bytes from the start of storage_
};

// Throws shape_error "op: name is [3, 4] but should be [3, 5]" unless t has the expected shape.
DMOE_LAZY inline void expect_shape(std::string_view op, std::string_view name, const tensor& t, const shape& expected) {
  if (t.shape() != expected)
    throw shape_error(dmoe::format("{}: {} is {} but should be {}", op, name, t.shape(), expected));
}
// Throws shape_error "op: a is [3, 4] but b is [5, 6]" unless both have the same shape.
DMOE_LAZY inline void expect_same_shape(std::string_view op, std::string_view name_a, const tensor& a, std::string_view name_b,
                              const tensor& b) {
  if (a.shape() != b.shape())
    throw shape_error(dmoe::format("{}: {} is {} but {} is {}", op, name_a, a.shape(), name_b, b.shape()));
}
// Throws invalid_argument_error unless t has the dtype.
DMOE_LAZY inline void expect_dtype(std::string_view op, std::string_view name, const tensor& t, dtype expected) {
  if (t.dtype() != expected)
    throw invalid_argument_error(dmoe::format("{}: {} is {} but should be {}", op, name, t.dtype(), expected));
}
// Throws shape_error unless t has the rank.
DMOE_LAZY inline void expect_rank(std::string_view op, std::string_view name, const tensor& t, std::size_t rank) {
  if (t.rank() != rank)
    throw shape_error(dmoe::format("{}: {} is {} but should have rank {}", op, name, t.shape(), rank));
}

DMOE_END_NAMESPACE
