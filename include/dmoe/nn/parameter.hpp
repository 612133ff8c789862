// A module's named parameter: its value and the gradient backward accumulates into, for optimizers and checkpoints.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <string>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace nn {

// Names are dotted paths from the outermost module: "0.weight", "attention.qkv.bias".
// value and grad point into the module and stay valid while it lives; grad has value's shape.
struct parameter {
  std::string name;
  tensor* value = nullptr;
  tensor* grad = nullptr;
};

using parameter_list = std::vector<parameter>;

// Appends the parameters of a child module under "prefix.".
DMOE_LAZY inline void append_parameters(parameter_list& out, const std::string& prefix, const parameter_list& child) {
  for (const parameter& p : child) out.push_back({prefix.empty() ? p.name : prefix + "." + p.name, p.value, p.grad});
}

}  // namespace nn
DMOE_END_NAMESPACE
