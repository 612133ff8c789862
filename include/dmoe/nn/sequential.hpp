// nn::sequential: modules applied in order; backward runs them in reverse; parameters are named "<index>.<name>".
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace nn {

class sequential : public module {
 public:
  sequential() = default;

  DMOE_LAZY module& add(std::unique_ptr<module> m) {
    m->set_training(training_);
    modules_.push_back(std::move(m));
    return *modules_.back();
  }
  template <class Module, class... Args>
  Module& emplace(Args&&... args) {
    return static_cast<Module&>(add(std::make_unique<Module>(std::forward<Args>(args)...)));
  }

  tensor forward(const tensor& x) override {
    tensor y = x;
    for (auto& m : modules_) y = m->forward(y);
    return y;
  }
  tensor backward(const tensor& dy) override {
    tensor d = dy;
    for (auto it = modules_.rbegin(); it != modules_.rend(); ++it) d = (*it)->backward(d);
    return d;
  }
  parameter_list parameters() override {
    parameter_list p;
    for (std::size_t i = 0; i < modules_.size(); ++i) append_parameters(p, std::to_string(i), modules_[i]->parameters());
    return p;
  }
  void set_training(bool training) override {
    training_ = training;
    for (auto& m : modules_) m->set_training(training);
  }

  std::size_t size() const noexcept { return modules_.size(); }
  module& operator[](std::size_t i) { return *modules_.at(i); }

 private:
  std::vector<std::unique_ptr<module>> modules_;
};

}  // namespace nn
DMOE_END_NAMESPACE
