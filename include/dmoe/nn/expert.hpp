// nn::expert: a module a server hosts under a name, stating the schema of its input and output.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/tensor/dtype.hpp>
#include <dmoe/tensor/shape.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <string>
#include <string_view>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace nn {

// One tensor of a batch: its shape without the leading batch dimension, and its dtype.
struct tensor_schema {
  shape sample_shape;
  dtype type = dtype::f32;

  // The full shape of a batch of `batch` samples.
  DMOE_LAZY shape batch_shape(std::int64_t batch) const { return sample_shape.with_leading(batch); }

  // Throws shape_error (invalid_argument_error for the dtype) unless t is a batch of such samples.
  DMOE_LAZY void check(std::string_view what, const tensor& t) const {
    if (t.dtype() != type)
      throw invalid_argument_error(dmoe::format("{}: tensor is {} but the schema says {}", what, t.description(), type));
    if (t.rank() != sample_shape.rank() + 1 || t.shape().without_first() != sample_shape)
      throw shape_error(dmoe::format("{}: tensor is {} but the schema says [batch] + {}", what, t.shape(), sample_shape));
  }

  friend bool operator==(const tensor_schema&, const tensor_schema&) = default;
};

struct expert_schema {
  tensor_schema input;
  tensor_schema output;
};

class expert : public module {
 public:
  // The registry name this expert was made under ("ffn", "transformer", "nop").
  virtual std::string_view kind() const noexcept = 0;
  virtual expert_schema schema() const = 0;
};

}  // namespace nn
DMOE_END_NAMESPACE
