// nn::embedding: maps integer ids (i64) to rows of a learned table.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/ops/cuda.hpp>  // the CUDA overloads (declarations; defined by dmoe::cuda)
#include <dmoe/ops/cpu/embedding.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>

DMOE_BEGIN_NAMESPACE
namespace nn {

template <class Backend = ops::cpu_t>
class embedding : public module {
 public:
  // The table [vocabulary, dim] starts as N(0, 1), as in the usual embedding layers.
  embedding(std::int64_t vocabulary, std::int64_t dim, random_engine& gen)
      : table_(tensor::normal(shape{vocabulary, dim}, gen).to(Backend::device)),
        table_grad_(shape{vocabulary, dim}, dtype::f32, Backend::device) {}

  // ids (i64, any shape) -> ids.shape + [dim].
  tensor forward(const tensor& ids) override {
    ids_ = ids;
    y_ = tensor();
    ops::embedding_forward(Backend{}, table_, ids, y_);
    return y_;
  }

  // Accumulates the table gradient; ids have no gradient, so the result is an empty tensor.
  tensor backward(const tensor& dy) override {
    detail::check_forward_done("embedding", ids_);
    ops::embedding_backward(Backend{}, ids_, dy, table_grad_);
    ids_ = tensor();
    return tensor();
  }

  parameter_list parameters() override { return {{"weight", &table_, &table_grad_}}; }
  tensor& table() noexcept { return table_; }

 private:
  tensor table_, table_grad_;
  tensor ids_, y_;
};

}  // namespace nn
DMOE_END_NAMESPACE
