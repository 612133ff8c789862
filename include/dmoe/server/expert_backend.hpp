// server::expert_backend: one hosted expert: its module, optimizer, learning-rate schedule, gradient clipping,
// schema and statistics. Only the server's compute thread calls forward/backward/save/load; statistics may be read
// from any thread.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/hash.hpp>
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/checkpoint.hpp>
#include <dmoe/nn/expert.hpp>
#include <dmoe/nn/experts.hpp>
#include <dmoe/nn/optimizer.hpp>
#include <dmoe/nn/schedule.hpp>
#include <dmoe/nn/sgd.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cpu/optimizer.hpp>
#include <dmoe/tensor/device.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace server {

// How a hosted expert is trained. Every backward batch is one optimizer step (asynchronous training).
struct optimizer_options {
  std::string name = "adam";          // "adam", "adamw" or "sgd"
  float learning_rate = 1e-3f;
  double weight_decay = 0.0;
  double momentum = 0.0;               // sgd only
  double beta1 = 0.9, beta2 = 0.999;   // adam only
  std::int64_t warmup_steps = 0;       // linear warmup to learning_rate
  std::int64_t total_steps = 0;        // > 0: then linear decay to 0 at total_steps (linear_warmup_decay)
  // Gradients are rescaled to this global L2 norm when it is larger (torch.nn.utils.clip_grad_norm_); 0 turns it
  // off. A batch whose gradient norm is NaN or infinite fails and leaves the parameters unchanged either way.
  float clip_grad_norm = 0.0f;
};

// Monotonic counters of one expert (or of all of a server's, summed).
struct expert_stats {
  std::uint64_t forward_requests = 0, backward_requests = 0;
  std::uint64_t forward_samples = 0, backward_samples = 0;
  std::uint64_t forward_batches = 0, backward_batches = 0;
  std::uint64_t failed_batches = 0;
  std::uint64_t updates = 0;               // optimizer steps taken
  std::uint64_t largest_batch = 0;         // samples in the largest batch computed
  std::uint64_t queue_wait_ns = 0;         // summed over requests: arrival to the start of their batch
  std::uint64_t compute_ns = 0;            // summed over batches

  expert_stats& operator+=(const expert_stats& o);
};

class expert_backend {
 public:
  expert_backend(const expert_backend&) = delete;
  expert_backend& operator=(const expert_backend&) = delete;
  virtual ~expert_backend() = default;

  const std::string& uid() const noexcept { return uid_; }
  std::string_view kind() const noexcept { return module_->kind(); }
  const nn::expert_schema& schema() const noexcept { return schema_; }
  nn::expert& module() noexcept { return *module_; }
  nn::optimizer& optimizer() noexcept { return *optimizer_; }
  std::int64_t parameter_count() const noexcept { return parameter_count_; }

  // outputs [batch, ...output schema] of inputs [batch, ...input schema] (host tensors). Throws shape_error or
  // invalid_argument_error for inputs that do not fit the schema.
  DMOE_LAZY tensor forward(const tensor& inputs) {
    schema_.input.check(dmoe::format("expert {} forward inputs", uid_), inputs);
    return to_host(module_->forward(to_device(inputs)));
  }

  // grad_inputs of (inputs, grad_outputs), recomputing the forward pass (the server keeps no per-request state),
  // then one optimizer step over the gradients of this batch alone. A non-finite gradient norm throws
  // invalid_argument_error before the step: the parameters are left as they were.
  DMOE_DECL tensor backward(const tensor& inputs, const tensor& grad_outputs);

  // Parameters and optimizer state to one checkpoint file (nn/checkpoint.hpp: atomic, checksummed).
  DMOE_LAZY void save(const std::filesystem::path& path) const { nn::save_checkpoint(path, parameters_, optimizer_.get()); }
  // Loads a checkpoint made by save(); a corrupt file or a mismatched one throws and leaves the expert unchanged.
  DMOE_LAZY void load(const std::filesystem::path& path) { nn::load_checkpoint(path, parameters_, optimizer_.get()); }

  std::uint64_t updates() const noexcept { return updates_.load(std::memory_order_relaxed); }

 protected:
  DMOE_LAZY expert_backend(std::string uid, std::unique_ptr<nn::expert> module)
      : uid_(std::move(uid)), module_(std::move(module)), schema_(module_->schema()),
        parameters_(module_->parameters()), parameter_count_(module_->parameter_count()) {}

  virtual tensor to_device(const tensor& host) const = 0;
  virtual tensor to_host(const tensor& t) const = 0;
  virtual void clip_gradients() = 0;

  std::string uid_;
  std::unique_ptr<nn::expert> module_;
  nn::expert_schema schema_;
  nn::parameter_list parameters_;
  std::int64_t parameter_count_ = 0;
  std::unique_ptr<nn::optimizer> optimizer_;
  float clip_norm_ = 0.0f;
  std::atomic<std::uint64_t> updates_{0};
};

namespace detail {

template <class Backend>
class expert_backend_on final : public expert_backend {
 public:
  expert_backend_on(std::string uid, std::unique_ptr<nn::expert> module, const optimizer_options& o)
      : expert_backend(std::move(uid), std::move(module)) {
    if (o.name == "adam" || o.name == "adamw") {
      ops::adam_hyper h;
      h.learning_rate = o.learning_rate, h.beta1 = o.beta1, h.beta2 = o.beta2, h.weight_decay = o.weight_decay;
      h.decoupled_weight_decay = o.name == "adamw";
      optimizer_ = std::make_unique<nn::adam<Backend>>(parameters_, h);
    } else if (o.name == "sgd") {
      ops::sgd_hyper h;
      h.learning_rate = o.learning_rate, h.momentum = o.momentum, h.weight_decay = o.weight_decay;
      optimizer_ = std::make_unique<nn::sgd<Backend>>(parameters_, h);
    } else {
      throw invalid_argument_error(dmoe::format("optimizer '{}': expected adam, adamw or sgd", o.name));
    }
    if (!(o.learning_rate > 0.0f) || !std::isfinite(o.learning_rate))
      throw invalid_argument_error(dmoe::format("learning rate {} must be positive and finite", o.learning_rate));
    if (o.clip_grad_norm < 0.0f || !std::isfinite(o.clip_grad_norm))
      throw invalid_argument_error(dmoe::format("clip_grad_norm {} must be 0 (off) or positive", o.clip_grad_norm));
    if (o.total_steps > 0)
      optimizer_->set_schedule(nn::linear_warmup_decay(o.learning_rate, o.warmup_steps, o.total_steps));
    else if (o.warmup_steps > 0)
      optimizer_->set_schedule(nn::constant_schedule{o.learning_rate, o.warmup_steps});
    clip_norm_ = o.clip_grad_norm;
    grads_ = nn::gradients_of(parameters_);
  }

 private:
  tensor to_device(const tensor& host) const override {
    return Backend::device == device::host ? host : host.to(Backend::device);
  }
  tensor to_host(const tensor& t) const override { return t.is_host() ? t : t.to(device::host); }
  void clip_gradients() override {
    if (grads_.empty()) return;
    // Without clipping the norm is still taken: a NaN or infinite gradient must not reach the parameters.
    const float limit = clip_norm_ > 0.0f ? clip_norm_ : std::numeric_limits<float>::max();
    try {
      ops::clip_grad_norm(Backend{}, std::span<tensor>(grads_), limit, ops::nonfinite_norm::error);
    } catch (const invalid_argument_error&) {
      throw invalid_argument_error(dmoe::format(
          "expert {} backward: the gradient norm is not finite; the batch is refused and the parameters are unchanged",
          uid_));
    }
  }

  std::vector<tensor> grads_;
};

}  // namespace detail

// What a server hosts: the expert kind from nn's registry, its size and options, and how it trains.
struct expert_options {
  std::string kind = "ffn";            // nn::make_expert's registry name: ffn, transformer, nop, or one registered
  std::int64_t hidden = 1024;
  nn::expert_options module;           // seq_len and heads of transformer experts
  optimizer_options optimizer;
};

// The seed of expert `uid`'s initial parameters on a server started with `seed` (nn::make_expert's seed).
inline std::uint64_t expert_seed(std::string_view uid, std::uint64_t seed) noexcept { return xxh64(as_bytes(uid), seed); }

// Makes the expert `uid` computing on Backend (ops::cpu_t; ops::cuda_t in a program that links the CUDA backend:
// its parameters land on the calling thread's current device). Its initial parameters derive from (seed, uid), so
// two servers started with the same seed host identical experts, on either backend. Throws invalid_argument_error
// for an unknown kind or optimizer.
template <class Backend>
std::unique_ptr<expert_backend> make_expert_backend_on(std::string uid, const expert_options& options,
                                                       std::uint64_t seed) {
  auto module = nn::make_expert<Backend>(options.kind, options.hidden, expert_seed(uid, seed), options.module);
  return std::make_unique<detail::expert_backend_on<Backend>>(std::move(uid), std::move(module), options.optimizer);
}

namespace detail {

using expert_backend_maker = std::unique_ptr<expert_backend> (*)(std::string uid, const expert_options& options,
                                                                 std::uint64_t seed);

// make_expert_backend_on<ops::cuda_t>, installed when the program starts by the CUDA backend's objects
// (dmoe::cuda, or <dmoe/impl/cuda_experts.hpp> compiled into the program), so that the server's code, compiled
// without CUDA, can host experts on a GPU. nullptr without a CUDA backend.
DMOE_LAZY inline std::atomic<expert_backend_maker>& cuda_expert_backend_maker() noexcept {
  static std::atomic<expert_backend_maker> maker{nullptr};
  return maker;
}

#if DMOE_WITH_CUDA
// Keeps dmoe::cuda's CUDA experts (impl/cuda_experts.hpp, which defines the anchor) in programs that take its
// objects from a static library: their installation has no other reference.
extern "C" const int dmoe_cuda_experts_anchor;
[[gnu::used]] static const int* const cuda_experts_anchor_reference = &dmoe_cuda_experts_anchor;
#endif

}  // namespace detail

// Makes the expert `uid` on `device`: the host, or a CUDA device, which becomes the calling thread's current device
// (use_device) and which the thread computing with the expert must use too (runtime_options::device does it).
// Throws invalid_argument_error for an unknown kind or optimizer, device_error when the program has no CUDA
// backend (it does not link dmoe::cuda) or the device cannot be used.
DMOE_DECL std::unique_ptr<expert_backend> make_expert_backend(std::string uid, const expert_options& options,
                                                              std::uint64_t seed, const device_choice& device = {});

}  // namespace server
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace server {

DMOE_INLINE auto expert_stats::operator+=(const expert_stats& o) -> expert_stats& {
  forward_requests += o.forward_requests, backward_requests += o.backward_requests;
  forward_samples += o.forward_samples, backward_samples += o.backward_samples;
  forward_batches += o.forward_batches, backward_batches += o.backward_batches;
  failed_batches += o.failed_batches, updates += o.updates;
  largest_batch = std::max(largest_batch, o.largest_batch);
  queue_wait_ns += o.queue_wait_ns, compute_ns += o.compute_ns;
  return *this;
}

DMOE_DEF auto expert_backend::backward(const tensor& inputs, const tensor& grad_outputs) -> tensor {
  schema_.input.check(dmoe::format("expert {} backward inputs", uid_), inputs);
  schema_.output.check(dmoe::format("expert {} backward grad_outputs", uid_), grad_outputs);
  if (inputs.dim(0) != grad_outputs.dim(0))
    throw shape_error(dmoe::format("expert {} backward: {} inputs but {} output gradients", uid_, inputs.dim(0),
                                  grad_outputs.dim(0)));
  module_->zero_grad();
  module_->forward(to_device(inputs));
  tensor grad_inputs = module_->backward(to_device(grad_outputs));
  if (!parameters_.empty()) {  // (a parameter-free expert, e.g. nop, has nothing to update)
    clip_gradients();
    optimizer_->step();
    ++updates_;
  }
  return to_host(grad_inputs);
}

DMOE_DEF std::unique_ptr<expert_backend> make_expert_backend(std::string uid, const expert_options& options,
                                                             std::uint64_t seed, const device_choice& device) {
  if (device.kind == dmoe::device::host) return make_expert_backend_on<ops::cpu_t>(std::move(uid), options, seed);
  use_device(device);  // (the parameters land on the calling thread's current device)
  const detail::expert_backend_maker maker = detail::cuda_expert_backend_maker().load(std::memory_order_acquire);
  if (!maker)
    throw device_error(dmoe::format("expert {} on {}: this program has no CUDA experts (it does not link dmoe::cuda)",
                                   uid, device.text()));
  return maker(std::move(uid), options, seed);
}

}  // namespace server
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
