// moe::async_module: a layer whose forward and backward are coroutines (they wait for the network), and
// moe::model, a sequence of such layers and ordinary nn modules trained as one.
#pragma once

#include <dmoe/async/task.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/nn/parameter.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace moe {

// The contract of nn::module (forward remembers what backward needs, for the last call only; backward adds the
// parameter gradients), with coroutines: run them on the io_context that owns the layer's network objects.
class async_module {
 public:
  async_module() = default;
  async_module(const async_module&) = delete;
  async_module& operator=(const async_module&) = delete;
  virtual ~async_module() = default;

  virtual task<tensor> forward_async(const tensor& x) = 0;
  virtual task<tensor> backward_async(const tensor& dy) = 0;
  virtual nn::parameter_list parameters() { return {}; }
  virtual void set_training(bool training) { training_ = training; }
  bool training() const noexcept { return training_; }

 protected:
  bool training_ = true;
};

// A model made of nn modules (run inline) and async modules (awaited), applied in order; backward runs them in
// reverse. Parameters are named "<index>.<name>" as in nn::sequential, so an nn optimizer over parameters() updates
// the local modules and every DMoE layer's gating projection (the experts are updated by their servers).
class model {
 public:
  model() = default;
  model(const model&) = delete;
  model& operator=(const model&) = delete;

  DMOE_DECL nn::module& add(std::unique_ptr<nn::module> m);
  DMOE_DECL async_module& add(std::unique_ptr<async_module> m);
  // Constructs a module in place: `model.emplace<nn::linear<>>(784, 256, gen)`.
  template <class Module, class... Args>
  Module& emplace(Args&&... args) {
    auto m = std::make_unique<Module>(std::forward<Args>(args)...);
    Module& ref = *m;
    if constexpr (std::is_base_of_v<async_module, Module>) add(std::unique_ptr<async_module>(std::move(m)));
    else add(std::unique_ptr<nn::module>(std::move(m)));
    return ref;
  }

  // x -> y through every stage. Errors: those of the stages (a DMoE layer's unavailable_error when too few experts
  // answered, cancelled_error...).
  DMOE_DECL task<tensor> forward(tensor x);
  // dy -> dx for the last forward; parameter gradients accumulate (local ones here, experts' on their servers).
  DMOE_DECL task<tensor> backward(tensor dy);

  DMOE_DECL nn::parameter_list parameters();
  DMOE_LAZY void zero_grad() {
    for (nn::parameter& p : parameters()) p.grad->zero();
  }
  DMOE_LAZY void set_training(bool training) {
    training_ = training;
    for (auto& s : stages_) s.local ? s.local->set_training(training) : s.remote->set_training(training);
  }
  bool training() const noexcept { return training_; }
  std::size_t size() const noexcept { return stages_.size(); }

 private:
  struct stage {
    std::unique_ptr<nn::module> local;
    std::unique_ptr<async_module> remote;
  };
  std::vector<stage> stages_;
  bool training_ = true;
};

}  // namespace moe
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace moe {

DMOE_DEF auto model::add(std::unique_ptr<nn::module> m) -> nn::module& {
  if (!m) throw invalid_argument_error("moe::model: add given no module");
  m->set_training(training_);
  stages_.push_back(stage{std::move(m), nullptr});
  return *stages_.back().local;
}

DMOE_DEF auto model::add(std::unique_ptr<async_module> m) -> async_module& {
  if (!m) throw invalid_argument_error("moe::model: add given no module");
  m->set_training(training_);
  stages_.push_back(stage{nullptr, std::move(m)});
  return *stages_.back().remote;
}

DMOE_DEF auto model::forward(tensor x) -> task<tensor> {
  for (auto& s : stages_) {
    if (s.local) x = s.local->forward(x);
    else x = co_await s.remote->forward_async(x);  // (not in a conditional expression: g++ 12 miscompiles that)
  }
  co_return x;
}

DMOE_DEF auto model::backward(tensor dy) -> task<tensor> {
  for (auto it = stages_.rbegin(); it != stages_.rend(); ++it) {
    if (it->local) dy = it->local->backward(dy);
    else dy = co_await it->remote->backward_async(dy);
  }
  co_return dy;
}

DMOE_DEF auto model::parameters() -> nn::parameter_list {
  nn::parameter_list out;
  for (std::size_t i = 0; i < stages_.size(); ++i)
    nn::append_parameters(out, std::to_string(i),
                          stages_[i].local ? stages_[i].local->parameters() : stages_[i].remote->parameters());
  return out;
}

}  // namespace moe
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
