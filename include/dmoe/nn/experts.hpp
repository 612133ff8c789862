// The built-in experts (ffn, transformer, nop) and the registry that makes experts by name: make_expert("ffn", ...).
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/nn/expert.hpp>
#include <dmoe/nn/layer_norm.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/transformer_block.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/elementwise.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace nn {

// Settings only some experts use.
struct expert_options {
  std::int64_t seq_len = 16;  // transformer: the sequence length its schema states
  std::int64_t heads = 0;     // transformer: attention heads; 0 picks hidden / 64 (or 1 when that does not divide)
};

// ffn: y = LayerNorm(x + Linear(m -> h)(GELU(Linear(h -> m)(x)))); input and output [batch, h]; the inner width m
// is 4h unless given (a dense block of the compute of k experts: m = 4hk). Throws invalid_argument_error for m < 1.
template <class Backend = ops::cpu_t>
class ffn_expert : public expert {
 public:
  ffn_expert(std::int64_t hidden, random_engine& gen, std::int64_t inner = 0)
      : hidden_(hidden), fc1_(hidden, checked_inner(hidden, inner), gen, ops::activation::gelu),
        fc2_(checked_inner(hidden, inner), hidden, gen), norm_(hidden) {}

  tensor forward(const tensor& x) override {
    schema().input.check("ffn expert", x);
    const tensor m = fc2_.forward(fc1_.forward(x));
    residual_.resize(x.shape(), dtype::f32, Backend::device);
    ops::add(Backend{}, x, m, residual_);
    return norm_.forward(residual_);
  }

  tensor backward(const tensor& dy) override {
    const tensor dresidual = norm_.backward(dy);
    tensor dx = fc1_.backward(fc2_.backward(dresidual));  // fc1's own buffer: adding the residual path in place
    ops::axpy(Backend{}, 1.0f, dresidual, dx);
    return dx;
  }

  parameter_list parameters() override {
    parameter_list p;
    append_parameters(p, "fc1", fc1_.parameters());
    append_parameters(p, "fc2", fc2_.parameters());
    append_parameters(p, "norm", norm_.parameters());
    return p;
  }

  std::string_view kind() const noexcept override { return "ffn"; }
  expert_schema schema() const override { return {{shape{hidden_}}, {shape{hidden_}}}; }

 private:
  DMOE_LAZY static std::int64_t checked_inner(std::int64_t hidden, std::int64_t inner) {
    if (inner < 0) throw invalid_argument_error(dmoe::format("ffn expert: inner width {} must be positive", inner));
    return inner == 0 ? 4 * hidden : inner;
  }

  std::int64_t hidden_;
  linear<Backend> fc1_, fc2_;
  layer_norm<Backend> norm_;
  tensor residual_;
};

// transformer: one pre-LN transformer block over [batch, seq_len, h] (causal self-attention, GELU MLP of 4h).
template <class Backend = ops::cpu_t>
class transformer_expert : public expert {
 public:
  transformer_expert(std::int64_t hidden, std::int64_t seq_len, std::int64_t heads, random_engine& gen)
      : hidden_(hidden), seq_len_(seq_len), block_(hidden, heads, gen) {}

  tensor forward(const tensor& x) override {
    schema().input.check("transformer expert", x);
    return block_.forward(x);
  }
  tensor backward(const tensor& dy) override { return block_.backward(dy); }
  parameter_list parameters() override { return block_.parameters(); }

  std::string_view kind() const noexcept override { return "transformer"; }
  expert_schema schema() const override { return {{shape{seq_len_, hidden_}}, {shape{seq_len_, hidden_}}}; }

 private:
  std::int64_t hidden_, seq_len_;
  transformer_block<Backend> block_;
};

// nop: the identity on [batch, h], no parameters (for testing the network path without compute).
template <class Backend = ops::cpu_t>
class nop_expert : public expert {
 public:
  explicit nop_expert(std::int64_t hidden) : hidden_(hidden) {}

  tensor forward(const tensor& x) override {
    schema().input.check("nop expert", x);
    return x;
  }
  tensor backward(const tensor& dy) override {
    schema().output.check("nop expert backward", dy);
    return dy;
  }
  std::string_view kind() const noexcept override { return "nop"; }
  expert_schema schema() const override { return {{shape{hidden_}}, {shape{hidden_}}}; }

 private:
  std::int64_t hidden_;
};

// Makes an expert of one kind from its hidden size, a seed for its initial parameters, and options.
using expert_factory =
    std::function<std::unique_ptr<expert>(std::int64_t hidden, std::uint64_t seed, const expert_options& options)>;

namespace detail {

template <class Backend>
struct expert_registry {
  std::mutex mutex;
  std::map<std::string, expert_factory, std::less<>> factories;

  expert_registry() {
    factories["ffn"] = [](std::int64_t hidden, std::uint64_t seed, const expert_options&) -> std::unique_ptr<expert> {
      random_engine gen(seed);
      return std::make_unique<ffn_expert<Backend>>(hidden, gen);
    };
    factories["transformer"] = [](std::int64_t hidden, std::uint64_t seed,
                                  const expert_options& options) -> std::unique_ptr<expert> {
      random_engine gen(seed);
      std::int64_t heads = options.heads;
      if (heads == 0) heads = hidden % 64 == 0 ? hidden / 64 : 1;
      if (options.seq_len <= 0)
        throw invalid_argument_error(dmoe::format("transformer expert: seq_len {} must be positive", options.seq_len));
      return std::make_unique<transformer_expert<Backend>>(hidden, options.seq_len, heads, gen);
    };
    factories["nop"] = [](std::int64_t hidden, std::uint64_t, const expert_options&) -> std::unique_ptr<expert> {
      return std::make_unique<nop_expert<Backend>>(hidden);
    };
  }

  static expert_registry& instance() {
    static expert_registry registry;
    return registry;
  }
};

}  // namespace detail

// Adds (or replaces) the factory for a kind of expert.
template <class Backend = ops::cpu_t>
void register_expert(std::string kind, expert_factory factory) {
  auto& registry = detail::expert_registry<Backend>::instance();
  std::lock_guard lock(registry.mutex);
  registry.factories[std::move(kind)] = std::move(factory);
}

// The kinds that make_expert knows, sorted.
template <class Backend = ops::cpu_t>
std::vector<std::string> expert_kinds() {
  auto& registry = detail::expert_registry<Backend>::instance();
  std::lock_guard lock(registry.mutex);
  std::vector<std::string> kinds;
  for (const auto& [kind, factory] : registry.factories) kinds.push_back(kind);
  return kinds;
}

// make_expert("ffn", 1024, seed): the same kind, hidden size and seed always give the same initial parameters.
template <class Backend = ops::cpu_t>
std::unique_ptr<expert> make_expert(std::string_view kind, std::int64_t hidden, std::uint64_t seed,
                                    const expert_options& options = {}) {
  if (hidden <= 0) throw invalid_argument_error(dmoe::format("make_expert: hidden size {} must be positive", hidden));
  expert_factory factory;
  {
    auto& registry = detail::expert_registry<Backend>::instance();
    std::lock_guard lock(registry.mutex);
    const auto it = registry.factories.find(kind);
    if (it == registry.factories.end()) {
      std::vector<std::string> known;
      for (const auto& [name, f] : registry.factories) known.push_back(name);
      throw invalid_argument_error(dmoe::format("make_expert: unknown expert kind '{}' (known: {})", kind,
                                               dmoe::detail::join_text(known, ", ")));
    }
    factory = it->second;
  }
  return factory(hidden, seed, options);
}

}  // namespace nn
DMOE_END_NAMESPACE
