// Mini-batches of labelled images: shuffled anew each epoch and resumable from (epoch, position), or in order.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/data/idx.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace data {

// Inputs and their labels: x is f32 [b, features], labels is i64 [b].
struct batch {
  tensor x;
  tensor labels;
};

// Samples [begin, end) in order, for evaluation. The tensors are views sharing the data set's storage (no copy):
// they keep it alive but must not be written. Throws invalid_argument_error for a range outside [0, size()].
DMOE_LAZY inline batch slice(const labelled_images& data, std::int64_t begin, std::int64_t end) {
  if (begin < 0 || end < begin || end > data.size())
    throw invalid_argument_error(
        dmoe::format("slice: samples [{}, {}) of a data set of {} samples", begin, end, data.size()));
  return {data.images.rows(begin, end), data.labels.rows(begin, end)};
}

// An endless sequence of mini-batches over a data set, each epoch in a fresh random order.
//
// The order of epoch e is a pure function of (seed, e), drawn by our own Fisher-Yates over random_engine (not
// std::shuffle, whose use of the engine differs between standard libraries), so restore(epoch(), position())
// continues exactly where a saved run left off, on any build. The last batch of an epoch is smaller when the
// batch size does not divide the data set, unless drop_last is set (then those samples are skipped that epoch).
// The data set is kept by reference and must outlive this object; next() copies the samples it returns.
class shuffled_batches {
 public:
  // Throws invalid_argument_error for a batch size that is not positive, an empty or inconsistent data set, and
  // with drop_last for a batch size larger than the data set (no batch at all).
  DMOE_LAZY shuffled_batches(const labelled_images& data, std::int64_t batch_size, std::uint64_t seed, bool drop_last = false)
      : data_(data), batch_size_(batch_size), seed_(seed), drop_last_(drop_last) {
    if (batch_size <= 0) throw invalid_argument_error(dmoe::format("shuffled_batches: batch size {}", batch_size));
    if (data.size() == 0) throw invalid_argument_error("shuffled_batches: the data set is empty");
    if (data.images.rank() != 2 || data.labels.rank() != 1 || data.images.dim(0) != data.size())
      throw invalid_argument_error(dmoe::format("shuffled_batches: images {} do not match labels {}",
                                               data.images.description(), data.labels.description()));
    if (batches_per_epoch() == 0)
      throw invalid_argument_error(dmoe::format(
          "shuffled_batches: drop_last with batch size {} leaves no batch of {} samples", batch_size, data.size()));
  }

  // The next batch of the current epoch; the epoch ends (and epoch() counts it) with its last batch.
  DMOE_LAZY batch next() {
    if (order_epoch_ != epoch_) shuffle();
    const std::int64_t count = std::min(batch_size_, samples_per_epoch() - position_);
    const std::int64_t features = data_.images.dim(1);
    batch out{tensor::uninitialized(shape{count, features}), tensor::uninitialized(shape{count}, dtype::i64)};
    const float* images = data_.images.data<float>();
    const std::int64_t* labels = data_.labels.data<std::int64_t>();
    float* x = out.x.data<float>();
    std::int64_t* y = out.labels.data<std::int64_t>();
    for (std::int64_t i = 0; i < count; ++i) {
      const std::int64_t sample = order_[static_cast<std::size_t>(position_ + i)];
      std::memcpy(x + i * features, images + sample * features, static_cast<std::size_t>(features) * sizeof(float));
      y[i] = labels[sample];
    }
    position_ += count;
    if (position_ == samples_per_epoch()) {
      ++epoch_;
      position_ = 0;
    }
    return out;
  }

  // Epochs completed.
  std::int64_t epoch() const noexcept { return epoch_; }
  // Samples already returned in the current epoch, in [0, samples per epoch).
  std::int64_t position() const noexcept { return position_; }
  std::int64_t batches_per_epoch() const noexcept {
    return drop_last_ ? data_.size() / batch_size_ : (data_.size() + batch_size_ - 1) / batch_size_;
  }
  std::int64_t batch_size() const noexcept { return batch_size_; }

  // Continues from a state saved as (epoch(), position()). Throws invalid_argument_error for a negative epoch or
  // a position outside [0, samples per epoch).
  DMOE_LAZY void restore(std::int64_t epoch, std::int64_t position) {
    if (epoch < 0 || position < 0 || position >= samples_per_epoch())
      throw invalid_argument_error(dmoe::format("shuffled_batches::restore: epoch {} position {} ({} samples per epoch)",
                                               epoch, position, samples_per_epoch()));
    epoch_ = epoch;
    position_ = position;
  }

 private:
  std::int64_t samples_per_epoch() const noexcept {
    return drop_last_ ? data_.size() / batch_size_ * batch_size_ : data_.size();
  }

  // Fisher-Yates with unbiased bounded draws (rejection sampling), seeded from (seed, epoch) alone.
  DMOE_LAZY void shuffle() {
    std::seed_seq seq{static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32),
                      static_cast<std::uint32_t>(epoch_), static_cast<std::uint32_t>(epoch_ >> 32)};
    random_engine gen(seq);
    order_.resize(static_cast<std::size_t>(data_.size()));
    for (std::size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<std::int64_t>(i);
    for (std::size_t i = order_.size(); i > 1; --i) {
      const std::uint64_t bound = i;  // draw j uniformly in [0, i)
      const std::uint64_t limit = random_engine::max() - random_engine::max() % bound;
      std::uint64_t r = gen();
      while (r >= limit) r = gen();
      std::swap(order_[i - 1], order_[static_cast<std::size_t>(r % bound)]);
    }
    order_epoch_ = epoch_;
  }

  const labelled_images& data_;
  std::int64_t batch_size_;
  std::uint64_t seed_;
  bool drop_last_;
  std::int64_t epoch_ = 0;
  std::int64_t position_ = 0;
  std::vector<std::int64_t> order_;
  std::int64_t order_epoch_ = -1;
};

}  // namespace data
DMOE_END_NAMESPACE
