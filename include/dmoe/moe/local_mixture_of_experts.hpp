// moe::local_mixture_of_experts: the whole DMoE layer in one process (gating, top-k routing, experts, backward), the reference for the remote layer.
//
// Forward, for each sample (row) of x:
//   1. the gating projects the sample to grid scores (one score vector per grid dimension); an
//      expert's score is the sum of its coordinates' scores;
//   2. the k best experts are chosen with the exact product-key top-k (or a given selection, e.g.
//      the remote layer's beam search over live experts);
//   3. experts that "failed" in this call are dropped; the weights are the softmax of the
//      responders' scores, and the output is the sum over responders of weight * expert(sample).
// A sample with no responders gets a zero output and a zero gradient (never NaN). Whether a sample
// has enough responders (k_min) is decided per sample, not over the batch.
//
// Each expert runs once per call on the batch of the samples routed to it (rows gathered in
// sample order); backward runs it backward on the same rows and scatter-adds its dx into the
// samples'. Gradients reach every responder's parameters, the gating projection (through the
// softmax weights and the chosen experts' scores) and the input.
//
// Inputs are [batch] + the experts' input sample shape; the gating sees the last dimension,
// averaged over any dimensions in between (a sequence routes as one sample, as in hivemind).
// Routing, gather and scatter run on the host; the experts and the gating use Backend's kernels.
#pragma once

#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/hash.hpp>
#include <dmoe/moe/gating.hpp>
#include <dmoe/nn/expert.hpp>
#include <dmoe/nn/experts.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/nn/parameter.hpp>
#include <dmoe/ops/backend.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

// What forward does when a sample has fewer than k_min responders.
enum class shortfall_policy {
  raise,  // throw unavailable_error naming the first such sample, before any expert runs
  flag,   // go on with the responders it has (zero output for none) and list it in routing().short_samples
};

struct local_mixture_of_experts_options {
  std::vector<std::uint32_t> grid{4, 4};
  std::int64_t k = 2;      // experts chosen per sample
  std::int64_t k_min = 1;  // responders each sample needs (0: a sample may lose all of them)
  shortfall_policy on_shortfall = shortfall_policy::raise;
  std::string uid_prefix{};  // experts are named "<prefix>.<c0>.<c1>"; empty: the expert kind, or "expert"
};

// The conditions of one forward call that the network decides for the remote layer.
struct call_conditions {
  // Experts to use instead of the exact top-k, e.g. a beam search's best live experts; their
  // scores are recomputed from this call's gating (selection->scores is ignored).
  const grid_selection* selection = nullptr;
  // Flat indices (see index_of) of the experts that fail in this call: dropped before the softmax.
  std::span<const std::int64_t> failed = {};
};

// How the last forward routed its samples; k is selection.k.
struct moe_routing {
  grid_selection selection;                  // chosen experts and their scores under this call's gating
  std::vector<std::uint8_t> responded;       // [batch * k]: 1 where the chosen expert answered
  std::vector<float> weights;                // [batch * k]: softmax over the sample's responders, 0 elsewhere
  std::vector<std::int64_t> responders;      // [batch]: how many of the sample's experts answered
  std::vector<std::int64_t> short_samples;   // samples with fewer than k_min responders (shortfall_policy::flag)

  bool answered(std::int64_t sample, std::int64_t rank) const {
    return responded[static_cast<std::size_t>(sample * selection.k + rank)] != 0;
  }
  float weight(std::int64_t sample, std::int64_t rank) const {
    return weights[static_cast<std::size_t>(sample * selection.k + rank)];
  }
};

// Makes the expert of one grid cell from its uid and coordinates.
using expert_maker =
    std::function<std::unique_ptr<nn::module>(const std::string& uid, std::span<const std::uint32_t> coordinates)>;

// The seed of a registry expert's initial parameters: a server hosting the same uid with the same
// base seed starts from the same parameters.
inline std::uint64_t expert_seed(std::string_view uid, std::uint64_t base_seed) noexcept {
  return xxh64(as_bytes(uid), base_seed);
}

namespace detail {

// "ffn.3.1" for prefix "ffn" and coordinates (3, 1).
DMOE_LAZY inline std::string grid_uid(std::string_view prefix, std::span<const std::uint32_t> coordinates) {
  return dmoe::format("{}.{}", prefix, dmoe::detail::join_text(coordinates, "."));
}

// The rows of one expert's sub-batch: which sample and which of its chosen experts each row is.
struct expert_batch {
  std::int64_t expert = 0;
  std::vector<std::int64_t> samples;
  std::vector<std::int64_t> ranks;
  tensor output;  // the expert's output for these rows, kept for the weight gradients
};

// x itself when it is [batch, in], else its mean over the dimensions between the batch and the last (the gating's
// input: a sequence routes as one sample).
DMOE_DECL tensor gating_input(const tensor& x);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF tensor gating_input(const tensor& x) {
  if (x.rank() == 2) return x;
  const std::int64_t batch = x.dim(0), in = x.dim(-1), steps = x.numel() / std::max<std::int64_t>(1, batch * in);
  tensor mean(shape{batch, in});
  const float* src = x.data<float>();
  float* dst = mean.data<float>();
  // Summed in double and divided once: an f32 running sum drifts with the sequence length and the magnitude.
  std::vector<double> sum(static_cast<std::size_t>(in));
  for (std::int64_t b = 0; b < batch; ++b) {
    std::fill(sum.begin(), sum.end(), 0.0);
    for (std::int64_t t = 0; t < steps; ++t)
      for (std::int64_t i = 0; i < in; ++i)
        sum[static_cast<std::size_t>(i)] += static_cast<double>(src[(b * steps + t) * in + i]);
    for (std::int64_t i = 0; i < in; ++i)
      dst[b * in + i] = static_cast<float>(sum[static_cast<std::size_t>(i)] / static_cast<double>(steps));
  }
  return mean;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Adds the gating input's gradient [batch, in] into dx (spread evenly over a sequence's steps).
DMOE_DECL void add_gating_dx(const tensor& dgate, tensor& dx);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void add_gating_dx(const tensor& dgate, tensor& dx) {
  const std::int64_t batch = dx.dim(0), in = dx.dim(-1), steps = dx.numel() / std::max<std::int64_t>(1, batch * in);
  const float scale = 1.0f / static_cast<float>(steps);
  const float* g = dgate.data<float>();
  float* d = dx.data<float>();
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t t = 0; t < steps; ++t)
      for (std::int64_t i = 0; i < in; ++i) d[(b * steps + t) * in + i] += scale * g[b * in + i];
}
#endif  // DMOE_HEAVY_DEFINITIONS

// One sample's mixing weights: the softmax of its responders' scores (k of them, responded[j] != 0), 0 elsewhere;
// all 0 when none responded (never NaN). Computed in double from the largest score.
DMOE_DECL void responder_softmax(const float* scores, const std::uint8_t* responded, std::int64_t k, float* weights);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void responder_softmax(const float* scores, const std::uint8_t* responded, std::int64_t k, float* weights) {
  double best = -HUGE_VAL;
  for (std::int64_t j = 0; j < k; ++j)
    if (responded[j]) best = std::max(best, static_cast<double>(scores[j]));
  double total = 0.0;
  for (std::int64_t j = 0; j < k; ++j)
    if (responded[j]) total += std::exp(static_cast<double>(scores[j]) - best);
  for (std::int64_t j = 0; j < k; ++j)
    weights[j] = responded[j] ? static_cast<float>(std::exp(static_cast<double>(scores[j]) - best) / total) : 0.0f;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The gradient of the chosen experts' scores [batch, k] from that of the mixing weights (d loss / d w), through the
// softmax over each sample's responders: d score_j = w_j (d w_j - sum_i w_i d w_i); 0 for non-responders.
DMOE_DECL tensor responder_softmax_backward(std::span<const float> weights, std::span<const std::uint8_t> responded,
                                         std::span<const double> dweights, std::int64_t batch, std::int64_t k);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF tensor responder_softmax_backward(std::span<const float> weights, std::span<const std::uint8_t> responded,
                                         std::span<const double> dweights, std::int64_t batch, std::int64_t k) {
  tensor dscores(shape{batch, k});
  float* ds = dscores.data<float>();
  for (std::int64_t b = 0; b < batch; ++b) {
    double mean = 0.0;
    for (std::int64_t j = 0; j < k; ++j) {
      const auto at = static_cast<std::size_t>(b * k + j);
      mean += static_cast<double>(weights[at]) * dweights[at];
    }
    for (std::int64_t j = 0; j < k; ++j) {
      const auto at = static_cast<std::size_t>(b * k + j);
      if (responded[at]) ds[at] = static_cast<float>(weights[at] * (dweights[at] - mean));
    }
  }
  return dscores;
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL void check_f32_schema(std::string_view what, const nn::tensor_schema& schema);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void check_f32_schema(std::string_view what, const nn::tensor_schema& schema) {
  if (schema.type != dtype::f32)
    throw invalid_argument_error(
        dmoe::format("local_mixture_of_experts: expert {} is {} but the layer mixes f32", what, schema.type));
  if (schema.sample_shape.rank() == 0)
    throw invalid_argument_error(dmoe::format("local_mixture_of_experts: expert {} samples are scalars", what));
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace detail

template <class Backend = ops::cpu_t>
class local_mixture_of_experts : public nn::module {
 public:
  using options = local_mixture_of_experts_options;

  // Experts from the registry: make_expert<Backend>(kind, hidden, expert_seed(uid, seed), expert_options).
  local_mixture_of_experts(options opts, std::string_view kind, std::int64_t hidden, std::uint64_t seed,
                           random_engine& gen, const nn::expert_options& expert_options = {})
      : local_mixture_of_experts(construct{}, std::move(opts), std::string(kind), nullptr,
                                 registry_maker(kind, hidden, seed, expert_options), gen) {}

  // Any modules, one per grid cell, taking and giving the schema's batches.
  local_mixture_of_experts(options opts, const nn::expert_schema& schema, const expert_maker& make, random_engine& gen)
      : local_mixture_of_experts(construct{}, std::move(opts), "expert", &schema, make, gen) {}

  // x [batch] + input sample shape -> [batch] + output sample shape, with every expert answering.
  tensor forward(const tensor& x) override { return forward(x, call_conditions{}); }

  // On CUDA the gating and the experts compute on the device; routing and mixing run on the host (one copy of x,
  // the experts' inputs and outputs, and the result cross the bus).
  tensor forward(const tensor& x_in, const call_conditions& call) {
    schema_.input.check(op, x_in);
    pending_ = false;
    batches_.clear();
    const tensor x = x_in.to(device::host);
    const std::int64_t batch = x.dim(0);
    const tensor scores = gating_.forward(detail::gating_input(x).to(Backend::device));
    routing_ = moe_routing{};
    routing_.selection =
        call.selection ? rescored(*call.selection, scores.to(device::host)) : gating_.select(scores, options_.k);
    route(call.failed);
    run_experts(x);
    tensor out(schema_.output.batch_shape(batch));
    const std::int64_t row = schema_.output.sample_shape.numel();
    float* o = out.data<float>();
    for (const detail::expert_batch& eb : batches_) {
      const float* y = eb.output.data<float>();
      for (std::size_t r = 0; r < eb.samples.size(); ++r) {
        const float w = routing_.weight(eb.samples[r], eb.ranks[r]);
        float* dst = o + eb.samples[r] * row;
        const float* src = y + static_cast<std::int64_t>(r) * row;
        for (std::int64_t i = 0; i < row; ++i) dst[i] += w * src[i];
      }
    }
    input_shape_ = x.shape();
    pending_ = true;
    return out.to(Backend::device);
  }

  // dy [batch] + output sample shape -> dx; every responder answers backward.
  tensor backward(const tensor& dy) override { return backward(dy, {}); }

  // As backward(dy), with the experts (flat indices) whose backward fails: their dx counts as zero
  // and their parameters get no gradient; the softmax weights still get theirs (from the outputs).
  // One backward per forward.
  DMOE_LAZY tensor backward(const tensor& dy_in, std::span<const std::int64_t> failed) {
    if (!pending_) throw invalid_argument_error(dmoe::format("{}: backward without a forward before it", op));
    const std::int64_t batch = input_shape_.dim(0);
    schema_.output.check(std::string(op) + " backward", dy_in);
    const tensor dy = dy_in.to(device::host);
    if (dy.dim(0) != batch)
      throw shape_error(dmoe::format("{}: dy is {} but the forward's batch was {}", op, dy.shape(), batch));
    pending_ = false;
    const std::vector<std::uint8_t> failed_mask = mask_of(failed, "failed backward");
    const std::int64_t k = routing_.selection.k;
    const std::int64_t out_row = schema_.output.sample_shape.numel();
    const std::int64_t in_row = schema_.input.sample_shape.numel();
    tensor dx(input_shape_);
    float* pdx = dx.data<float>();
    const float* pdy = dy.data<float>();
    std::vector<double> dweights(static_cast<std::size_t>(batch * k), 0.0);
    for (detail::expert_batch& eb : batches_) {
      const auto rows = static_cast<std::int64_t>(eb.samples.size());
      const float* y = eb.output.data<float>();
      for (std::int64_t r = 0; r < rows; ++r) {
        const float* g = pdy + eb.samples[r] * out_row;
        const float* yr = y + r * out_row;
        double dot = 0.0;
        for (std::int64_t i = 0; i < out_row; ++i) dot += static_cast<double>(g[i]) * yr[i];
        dweights[static_cast<std::size_t>(eb.samples[r] * k + eb.ranks[r])] = dot;
      }
      if (failed_mask[static_cast<std::size_t>(eb.expert)]) continue;
      tensor dy_expert = tensor::uninitialized(schema_.output.batch_shape(rows));
      float* de = dy_expert.data<float>();
      for (std::int64_t r = 0; r < rows; ++r) {
        const float w = routing_.weight(eb.samples[r], eb.ranks[r]);
        const float* g = pdy + eb.samples[r] * out_row;
        for (std::int64_t i = 0; i < out_row; ++i) de[r * out_row + i] = w * g[i];
      }
      const tensor dx_expert =
          experts_[static_cast<std::size_t>(eb.expert)]->backward(dy_expert.to(Backend::device)).to(device::host);
      schema_.input.check(dmoe::format("{}: dx of expert {}", op, uids_[static_cast<std::size_t>(eb.expert)]),
                          dx_expert);
      if (dx_expert.dim(0) != rows)
        throw shape_error(dmoe::format("{}: expert {} gave dx {} for {} rows", op,
                                      uids_[static_cast<std::size_t>(eb.expert)], dx_expert.shape(), rows));
      const float* src = dx_expert.data<float>();
      for (std::int64_t r = 0; r < rows; ++r) {
        float* dst = pdx + eb.samples[r] * in_row;
        for (std::int64_t i = 0; i < in_row; ++i) dst[i] += src[r * in_row + i];
      }
    }
    const tensor dscores =
        detail::responder_softmax_backward(routing_.weights, routing_.responded, dweights, batch, k);
    detail::add_gating_dx(gating_.backward_selected(routing_.selection, dscores).to(device::host), dx);
    for (detail::expert_batch& eb : batches_) eb.output = tensor();
    return dx.to(Backend::device);
  }

  // "gating.projection.weight", "gating.projection.bias", then "experts.<uid>.<name>" for each expert.
  nn::parameter_list parameters() override {
    nn::parameter_list out;
    nn::append_parameters(out, "gating", gating_.parameters());
    for (std::size_t e = 0; e < experts_.size(); ++e)
      nn::append_parameters(out, "experts." + uids_[e], experts_[e]->parameters());
    return out;
  }

  void set_training(bool training) override {
    training_ = training;
    gating_.set_training(training);
    for (auto& expert : experts_) expert->set_training(training);
  }

  // The last forward's routing (still there after backward).
  const moe_routing& routing() const noexcept { return routing_; }

  std::int64_t num_experts() const noexcept { return static_cast<std::int64_t>(experts_.size()); }
  // Expert uids in flat (row-major grid) order.
  const std::vector<std::string>& uids() const noexcept { return uids_; }
  const std::string& uid(std::int64_t index) const { return uids_.at(checked_index(index)); }
  // Flat index of an expert by uid or coordinates; throws invalid_argument_error when there is none.
  DMOE_LAZY std::int64_t index_of(std::string_view uid) const {
    const auto it = index_by_uid_.find(std::string(uid));
    if (it == index_by_uid_.end())
      throw invalid_argument_error(dmoe::format("{}: no expert '{}' (experts are {}.*)", op, uid, options_.uid_prefix));
    return it->second;
  }
  DMOE_LAZY std::int64_t index_of(std::span<const std::uint32_t> coordinates) const {
    if (coordinates.size() != options_.grid.size())
      throw invalid_argument_error(
          dmoe::format("{}: {} coordinates for grid {}", op, coordinates.size(),
                      detail::grid_text(options_.grid)));
    std::int64_t index = 0;
    for (std::size_t d = 0; d < coordinates.size(); ++d) {
      if (coordinates[d] >= options_.grid[d])
        throw invalid_argument_error(dmoe::format("{}: coordinates {} outside grid {}", op,
                                                 detail::grid_text(coordinates), detail::grid_text(options_.grid)));
      index = index * options_.grid[d] + coordinates[d];
    }
    return index;
  }
  DMOE_LAZY std::vector<std::uint32_t> coordinates_of(std::int64_t index) const {
    std::size_t rest = checked_index(index);
    std::vector<std::uint32_t> c(options_.grid.size());
    for (std::size_t d = c.size(); d-- > 0;) {
      c[d] = static_cast<std::uint32_t>(rest % options_.grid[d]);
      rest /= options_.grid[d];
    }
    return c;
  }
  nn::module& expert(std::int64_t index) { return *experts_[checked_index(index)]; }
  nn::module& expert(std::string_view uid) { return *experts_[static_cast<std::size_t>(index_of(uid))]; }

  grid_gating<Backend>& gating() noexcept { return gating_; }
  const nn::expert_schema& schema() const noexcept { return schema_; }
  const options& config() const noexcept { return options_; }

 private:
  static constexpr std::string_view op = "local_mixture_of_experts";
  struct construct {};  // keeps the shared constructor out of the public overloads

  local_mixture_of_experts(construct, options opts, const std::string& default_prefix, const nn::expert_schema* schema,
                           const expert_maker& make, random_engine& gen)
      : options_(checked(std::move(opts), default_prefix)),
        experts_(make_experts(options_, make, uids_)),
        schema_(schema ? *schema : schema_of(*experts_.front())),
        gating_(schema_.input.sample_shape.dim(-1), options_.grid, gen) {
    detail::check_f32_schema("input", schema_.input);
    detail::check_f32_schema("output", schema_.output);
    for (std::size_t e = 0; e < experts_.size(); ++e) {
      index_by_uid_.emplace(uids_[e], static_cast<std::int64_t>(e));
      if (const auto* typed = dynamic_cast<const nn::expert*>(experts_[e].get())) {
        const nn::expert_schema s = typed->schema();
        if (!(s.input == schema_.input) || !(s.output == schema_.output))
          throw invalid_argument_error(dmoe::format("{}: expert {} takes {} and gives {} but the layer's experts take {} "
                                                   "and give {}",
                                                   op, uids_[e], s.input.sample_shape, s.output.sample_shape,
                                                   schema_.input.sample_shape, schema_.output.sample_shape));
      }
    }
  }

  DMOE_LAZY static expert_maker registry_maker(std::string_view kind, std::int64_t hidden, std::uint64_t seed,
                                     const nn::expert_options& expert_options) {
    return [kind = std::string(kind), hidden, seed, expert_options](const std::string& uid,
                                                                    std::span<const std::uint32_t>) {
      return std::unique_ptr<nn::module>(nn::make_expert<Backend>(kind, hidden, expert_seed(uid, seed), expert_options));
    };
  }

  DMOE_LAZY static options checked(options opts, const std::string& default_prefix) {
    detail::check_grid(op, opts.grid);
    const std::int64_t experts = detail::grid_size(opts.grid);
    if (experts > (std::int64_t{1} << 24))
      throw invalid_argument_error(dmoe::format("{}: grid {} has {} experts, too many for one process", op,
                                               detail::grid_text(opts.grid), experts));
    if (opts.k < 1 || opts.k > experts)
      throw invalid_argument_error(dmoe::format("{}: k = {} but grid {} has {} experts", op, opts.k,
                                               detail::grid_text(opts.grid), experts));
    if (opts.k_min < 0 || opts.k_min > opts.k)
      throw invalid_argument_error(dmoe::format("{}: k_min = {} must be in [0, k = {}]", op, opts.k_min, opts.k));
    if (opts.uid_prefix.empty()) opts.uid_prefix = default_prefix;
    return opts;
  }

  DMOE_LAZY static std::vector<std::unique_ptr<nn::module>> make_experts(const options& opts, const expert_maker& make,
                                                               std::vector<std::string>& uids) {
    const std::int64_t n = detail::grid_size(opts.grid);
    std::vector<std::unique_ptr<nn::module>> experts;
    experts.reserve(static_cast<std::size_t>(n));
    std::vector<std::uint32_t> c(opts.grid.size(), 0);
    for (std::int64_t e = 0; e < n; ++e) {
      uids.push_back(detail::grid_uid(opts.uid_prefix, c));
      experts.push_back(make(uids.back(), c));
      if (!experts.back()) throw invalid_argument_error(dmoe::format("{}: no module made for expert {}", op, uids.back()));
      for (std::size_t d = c.size(); d-- > 0;) {  // next coordinates in row-major order
        if (++c[d] < opts.grid[d]) break;
        c[d] = 0;
      }
    }
    return experts;
  }

  DMOE_LAZY static nn::expert_schema schema_of(const nn::module& m) {
    const auto* typed = dynamic_cast<const nn::expert*>(&m);
    if (!typed) throw invalid_argument_error(dmoe::format("{}: the registry made a module that is not an nn::expert", op));
    return typed->schema();
  }

  DMOE_LAZY std::size_t checked_index(std::int64_t index) const {
    if (index < 0 || index >= num_experts())
      throw invalid_argument_error(dmoe::format("{}: expert index {} of {}", op, index, num_experts()));
    return static_cast<std::size_t>(index);
  }

  // 1 for each expert listed (by flat index).
  DMOE_LAZY std::vector<std::uint8_t> mask_of(std::span<const std::int64_t> experts, std::string_view what) const {
    std::vector<std::uint8_t> mask(experts_.size(), 0);
    for (std::int64_t e : experts) {
      if (e < 0 || e >= num_experts())
        throw invalid_argument_error(dmoe::format("{}: {} expert index {} of {}", op, what, e, num_experts()));
      mask[static_cast<std::size_t>(e)] = 1;
    }
    return mask;
  }

  // The given selection checked against this layer and batch, with scores from this call's grid scores
  // (summed in double, dimension by dimension, as the top-k does).
  DMOE_LAZY grid_selection rescored(const grid_selection& given, const tensor& grid_scores) const {
    const std::int64_t batch = grid_scores.dim(0);
    if (given.grid != options_.grid)
      throw invalid_argument_error(
          dmoe::format("{}: selection is over grid {} but the layer's grid is {}", op, detail::grid_text(given.grid),
                      detail::grid_text(options_.grid)));
    if (given.batch_size != batch || given.k < 1 ||
        given.coordinates.size() != static_cast<std::size_t>(batch * given.k) * options_.grid.size())
      throw invalid_argument_error(dmoe::format("{}: selection of batch {}, k {} with {} coordinates for a batch of {}",
                                               op, given.batch_size, given.k, given.coordinates.size(), batch));
    grid_selection out;
    out.grid = options_.grid;
    out.batch_size = batch;
    out.k = given.k;
    out.coordinates = given.coordinates;
    out.scores.resize(static_cast<std::size_t>(batch * given.k));
    const std::vector<std::int64_t> offsets = grid_offsets(options_.grid);
    const float* s = grid_scores.data<float>();
    std::vector<std::int64_t> chosen(static_cast<std::size_t>(given.k));
    for (std::int64_t b = 0; b < batch; ++b) {
      for (std::int64_t j = 0; j < given.k; ++j) {
        const auto c = out.expert(b, j);
        chosen[static_cast<std::size_t>(j)] = index_of(c);
        double sum = 0.0;
        for (std::size_t d = 0; d < c.size(); ++d) sum += static_cast<double>(s[b * offsets.back() + offsets[d] + c[d]]);
        out.scores[static_cast<std::size_t>(b * given.k + j)] = static_cast<float>(sum);
      }
      std::sort(chosen.begin(), chosen.end());
      if (std::adjacent_find(chosen.begin(), chosen.end()) != chosen.end())
        throw invalid_argument_error(dmoe::format("{}: selection chooses an expert twice for sample {}", op, b));
    }
    return out;
  }

  // Responders, softmax weights over them and the k_min check, per sample.
  DMOE_LAZY void route(std::span<const std::int64_t> failed) {
    const std::vector<std::uint8_t> failed_mask = mask_of(failed, "failed");
    const grid_selection& sel = routing_.selection;
    const std::int64_t batch = sel.batch_size, k = sel.k;
    routing_.responded.assign(static_cast<std::size_t>(batch * k), 0);
    routing_.weights.assign(static_cast<std::size_t>(batch * k), 0.0f);
    routing_.responders.assign(static_cast<std::size_t>(batch), 0);
    for (std::int64_t b = 0; b < batch; ++b) {
      std::int64_t count = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        const auto at = static_cast<std::size_t>(b * k + j);
        if (failed_mask[static_cast<std::size_t>(index_of(sel.expert(b, j)))]) continue;
        routing_.responded[at] = 1;
        ++count;
      }
      routing_.responders[static_cast<std::size_t>(b)] = count;
      if (count < options_.k_min) {
        if (options_.on_shortfall == shortfall_policy::raise)
          throw unavailable_error(dmoe::format("{}: sample {} has {} of its {} chosen experts answering but k_min is {}",
                                              op, b, count, k, options_.k_min));
        routing_.short_samples.push_back(b);
      }
      const auto at = static_cast<std::size_t>(b * k);
      detail::responder_softmax(sel.scores.data() + at, routing_.responded.data() + at, k, routing_.weights.data() + at);
    }
  }

  // Groups the responders by expert (samples in order) and runs each expert once on its rows.
  DMOE_LAZY void run_experts(const tensor& x) {
    const grid_selection& sel = routing_.selection;
    struct routed {
      std::int64_t expert, sample, rank;
    };
    std::vector<routed> routes;
    for (std::int64_t b = 0; b < sel.batch_size; ++b)
      for (std::int64_t j = 0; j < sel.k; ++j)
        if (routing_.answered(b, j)) routes.push_back({index_of(sel.expert(b, j)), b, j});
    std::sort(routes.begin(), routes.end(), [](const routed& a, const routed& b) {
      return a.expert < b.expert || (a.expert == b.expert && a.sample < b.sample);
    });
    for (const routed& r : routes) {
      if (batches_.empty() || batches_.back().expert != r.expert) batches_.push_back({r.expert, {}, {}, {}});
      batches_.back().samples.push_back(r.sample);
      batches_.back().ranks.push_back(r.rank);
    }
    const std::int64_t in_row = schema_.input.sample_shape.numel();
    const float* px = x.data<float>();
    for (detail::expert_batch& eb : batches_) {
      const auto rows = static_cast<std::int64_t>(eb.samples.size());
      tensor sub = tensor::uninitialized(schema_.input.batch_shape(rows));
      float* dst = sub.data<float>();
      for (std::int64_t r = 0; r < rows; ++r)
        std::memcpy(dst + r * in_row, px + eb.samples[static_cast<std::size_t>(r)] * in_row,
                    static_cast<std::size_t>(in_row) * sizeof(float));
      const std::string& name = uids_[static_cast<std::size_t>(eb.expert)];
      eb.output = experts_[static_cast<std::size_t>(eb.expert)]->forward(sub.to(Backend::device)).to(device::host);
      schema_.output.check(dmoe::format("{}: output of expert {}", op, name), eb.output);
      if (eb.output.dim(0) != rows)
        throw shape_error(dmoe::format("{}: expert {} gave {} for {} rows", op, name, eb.output.shape(), rows));
    }
  }

  options options_;
  std::vector<std::string> uids_;  // filled by make_experts, before experts_ is initialised
  std::vector<std::unique_ptr<nn::module>> experts_;
  nn::expert_schema schema_;
  grid_gating<Backend> gating_;
  std::unordered_map<std::string, std::int64_t> index_by_uid_;

  moe_routing routing_;
  std::vector<detail::expert_batch> batches_;
  shape input_shape_;
  bool pending_ = false;  // a forward whose backward has not run
};

}  // namespace moe
DMOE_END_NAMESPACE
