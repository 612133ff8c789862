// nn::optimizer: the interface of the optimizers over a module's named parameters, with state for checkpoints.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/nn/parameter.hpp>
#include <dmoe/nn/schedule.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace nn {

// Holds the parameters it updates and its own state tensors. state() lists those tensors by name
// (always "step", an i64 scalar, then per-parameter buffers such as "m.0.weight"), so a checkpoint
// can save and restore them in place alongside the parameters.
class optimizer {
 public:
  optimizer(const optimizer&) = delete;
  optimizer& operator=(const optimizer&) = delete;
  virtual ~optimizer() = default;

  // One update of every parameter from its gradient, with the schedule's rate for this step if one
  // is set, else the configured rate. Returns the rate used.
  DMOE_LAZY float step() {
    const std::int64_t next = step_count() + 1;
    return step(schedule_ ? schedule_(next) : learning_rate_);
  }
  // One update with an explicit learning rate (overrides schedule and configured rate).
  DMOE_LAZY float step(float learning_rate) {
    const std::int64_t next = step_count() + 1;
    update(learning_rate, next);
    *step_.data<std::int64_t>() = next;
    return learning_rate;
  }

  DMOE_LAZY void zero_grad() {
    for (parameter& p : parameters_) p.grad->zero();
  }

  // Sets the rate of each later step() from the number of that step (1 for the first).
  void set_schedule(learning_rate_schedule schedule) { schedule_ = std::move(schedule); }
  void set_learning_rate(float learning_rate) { learning_rate_ = learning_rate; }
  float learning_rate() const noexcept { return learning_rate_; }

  // Updates done so far (restored with the state by a checkpoint).
  DMOE_LAZY std::int64_t step_count() const { return *step_.data<std::int64_t>(); }
  const parameter_list& parameters() const noexcept { return parameters_; }
  // Named state tensors (value set, grad null); they live as long as the optimizer.
  const parameter_list& state() const noexcept { return state_; }

 protected:
  DMOE_LAZY optimizer(parameter_list parameters, float learning_rate)
      : parameters_(std::move(parameters)), learning_rate_(learning_rate), step_(shape{}, dtype::i64) {
    std::set<std::string> names;
    for (const parameter& p : parameters_) {
      if (!p.value || !p.grad)
        throw invalid_argument_error(dmoe::format("optimizer: parameter '{}' has no value or no gradient", p.name));
      expect_same_shape("optimizer", p.name, *p.value, p.name + " grad", *p.grad);
      if (!names.insert(p.name).second)
        throw invalid_argument_error(dmoe::format("optimizer: two parameters are named '{}'", p.name));
    }
    state_.push_back({"step", &step_, nullptr});
  }

  // Applies update number `step` (1 for the first) with the given rate.
  virtual void update(float learning_rate, std::int64_t step) = 0;

  // Registers a per-parameter state tensor under "prefix.parameter name"; `t` must outlive this.
  DMOE_LAZY void add_state(const std::string& prefix, const parameter& p, tensor& t) {
    state_.push_back({prefix + "." + p.name, &t, nullptr});
  }
  // A zero f32 buffer shaped and placed like the parameter.
  static tensor zeros_like(const parameter& p) { return tensor(p.value->shape(), dtype::f32, p.value->device()); }

  parameter_list parameters_;

 private:
  float learning_rate_;
  learning_rate_schedule schedule_;
  tensor step_;
  parameter_list state_;
};

// Handles on the parameters' gradients (sharing their storage), e.g. for ops::clip_grad_norm.
DMOE_LAZY inline std::vector<tensor> gradients_of(const parameter_list& parameters) {
  std::vector<tensor> out;
  out.reserve(parameters.size());
  for (const parameter& p : parameters) out.push_back(*p.grad);
  return out;
}

}  // namespace nn
DMOE_END_NAMESPACE
