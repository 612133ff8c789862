// moe::remote_mixture_of_experts: the DMoE layer. Grid gating picks, by a beam search over the DHT, the best k live
// experts of each sample; the layer calls them on their servers in parallel and mixes the answers of those that
// answered in time; backward sends each of them its rows' gradients and brings the input gradients back.
//
// Forward (Ryabinin & Gusev 2020, "Towards Crowdsourced Training of Large Neural Networks using Decentralized
// Mixture-of-Experts", section 3):
//   1. the gating projects each sample to grid scores; an expert's score is the sum of its coordinates' scores;
//   2. the beam search (moe/beam_search.hpp) finds each sample's k best live experts, skipping those that failed
//      in the last `avoid_failed_for`;
//   3. the batch's rows are grouped by expert and each expert gets one request with its rows, all at once;
//   4. the layer waits until every sample has k_min answers (or every request has ended), then at most
//      `timeout_after_k_min` more, never past `forward_timeout` from the start of the call (beam search included);
//      requests still running are then cancelled (the server drops them);
//   5. each sample's output is the softmax over the scores of its experts that answered times their outputs. A
//      sample with fewer than k_min answers fails the call (unavailable_error naming it) unless
//      `allow_zero_outputs`: then it uses what it has, and a sample without any answer gets zeros (never NaN).
// Backward sends every expert that answered its rows' inputs and output gradients (weight * dy), waits by the same
// rule with `backward_k_min` and `backward_timeout`, counts missing input gradients as zero, and brings the
// gradients of the mixing weights through the softmax to the gating projection. Servers update their experts on
// backward; the trainer's optimizer updates the gating projection (parameters()).
//
// With every expert answering, outputs and gradients equal those of local_mixture_of_experts on the same experts.
// Use the layer on the io_context thread of the rpc client and the directory's DHT node, one call at a time (a
// second forward or backward while one is in flight is refused with invalid_argument_error).
#pragma once

#include <dmoe/async/async_event.hpp>
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/with_timeout.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/moe/async_module.hpp>
#include <dmoe/moe/beam_search.hpp>
#include <dmoe/moe/gating.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/moe/remote_expert.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/nn/expert.hpp>
#include <dmoe/nn/parameter.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

// What every DMoE layer over remote experts needs to find and call them.
struct dispatch_options {
  std::string uid_prefix = "ffn";           // experts are "<uid_prefix>.<c0>.<c1>..."
  std::vector<std::uint32_t> grid{4, 4};    // the gating's grid
  nn::expert_schema schema{};               // what every expert takes and gives (f32), e.g. ffn_schema(512)
  std::size_t beam_size = 0;                // the beam search's beam; 0: k
  std::chrono::milliseconds forward_timeout{10'000};     // the whole forward, beam search included
  std::chrono::milliseconds timeout_after_k_min{1'000};  // the most a call waits once every sample has k_min
  std::chrono::milliseconds backward_timeout{10'000};
  std::chrono::milliseconds avoid_failed_for{10'000};    // an expert that failed is not chosen again for this long
  expert_call_options call{};               // codecs of the tensors sent and answered, checks on answers
};

// The schema of an ffn expert of width `hidden`: f32 [hidden] -> f32 [hidden].
inline nn::expert_schema ffn_schema(std::int64_t hidden) {
  return {nn::tensor_schema{shape{hidden}, dtype::f32}, nn::tensor_schema{shape{hidden}, dtype::f32}};
}

// Counters of a layer (all calls so far).
struct dispatch_stats {
  std::uint64_t forward_calls = 0;
  std::uint64_t experts_chosen = 0;     // (sample, expert) pairs the beam searches returned
  std::uint64_t experts_answered = 0;   // of those, the pairs whose expert answered forward
  std::uint64_t requests = 0;           // expert requests sent (forward and backward)
  std::uint64_t requests_failed = 0;    // failed, timed out or cancelled after k_min
  std::uint64_t backward_answered = 0;  // backward requests answered
  double last_search_ms = 0.0;          // the last forward's beam search
  double last_forward_ms = 0.0;
};

// One request to one expert with the rows of the batch routed to it.
struct expert_call {
  std::string uid;
  endpoint server;
  std::vector<std::int64_t> samples;  // the batch's rows, in order
  std::vector<std::int64_t> ranks;    // which of each sample's chosen experts this is
  tensor inputs;                      // the rows' inputs
  tensor outputs;                     // forward's answer (kept for backward)
  tensor grad_outputs;                // backward's request
  tensor grad_inputs;                 // backward's answer
  bool answered = false;              // the last request (forward or backward) answered
  bool blamed = false;                // it failed by the expert's fault (not cut off by the layer or a deadline)
  std::string failure;                // why it did not, when it did not
};

// The finding and calling part of a remote DMoE layer: beam search over a directory, requests grouped by expert,
// the k_min waiting rule, and the experts to avoid after a failure. Used on one io_context thread.
class expert_dispatcher {
 public:
  DMOE_LAZY expert_dispatcher(expert_directory& directory, net::rpc_client& client, dispatch_options options)
      : directory_(directory),
        client_(client),
        options_(checked(std::move(options))),
        search_options_{options_.uid_prefix, options_.grid, options_.beam_size} {}

  // Each sample's (at most) k best live experts not avoided, by `deadline`.
  DMOE_DECL task<std::vector<std::vector<found_expert>>> search(const tensor& grid_scores, std::int64_t k, steady_time deadline);

  // The requests for a batch's choices: one per expert, with the rows (in sample order) that chose it.
  DMOE_DECL static std::vector<expert_call> group(const std::vector<std::vector<found_expert>>& chosen, const tensor& x);

  // Sends every call (forward, or backward with grad_outputs) at once. Waits until each sample s has need[s]
  // answers or every call has ended, then at most timeout_after_k_min more, never past `deadline`; cancels what
  // is left. Sets each call's `answered` and its result or `failure`. Experts that failed by their own fault (refused
  // the connection, answered an error or a malformed answer) are avoided from now on; one the layer cut off (after
  // k_min, at the deadline, or because the caller stopped) is not blamed.
  // Errors: cancelled_error when the caller is stopped (every request has ended by then).
  DMOE_DECL task<void> run(std::vector<expert_call>& calls, bool backward, std::vector<std::int64_t> need, steady_time deadline);

  const dispatch_options& options() const noexcept { return options_; }
  dispatch_stats& stats() noexcept { return stats_; }
  const dispatch_stats& stats() const noexcept { return stats_; }
  // Whether `uid` is avoided now (it failed within avoid_failed_for).
  DMOE_DECL bool avoided(const std::string& uid) const;

 private:
  struct progress {
    std::vector<std::int64_t> need;  // answers each sample still waits for
    std::size_t short_samples = 0;   // samples with need > 0
    std::size_t pending = 0;         // calls not ended
    async_event enough;              // short_samples == 0 or pending == 0
    async_event all_done;            // pending == 0
  };

  DMOE_DECL static dispatch_options checked(dispatch_options o);

  DMOE_DECL static task<void> wait_event(async_event& event);
  // Waits for `event` until `until`; returns either way (a stop request still throws cancelled_error).
  DMOE_DECL static task<void> wait_until(async_event& event, steady_time until);

  DMOE_DECL task<void> call_one(expert_call& c, bool backward, steady_time deadline, progress& p);

  expert_directory& directory_;
  net::rpc_client& client_;
  dispatch_options options_;
  beam_search_options search_options_;
  dmoe::detail::boxed<std::unordered_map<std::string, steady_time>> avoided_;
  dispatch_stats stats_;
};

namespace detail {

// The checks every remote layer makes of its options: a grid, 1 <= k <= its experts, k_min and backward_k_min in
// [0, k], a schema. Throws invalid_argument_error naming the layer and the option.
DMOE_DECL void check_routing(std::string_view op, const dispatch_options& o, std::int64_t k, std::int64_t k_min,
                          std::int64_t backward_k_min);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void check_routing(std::string_view op, const dispatch_options& o, std::int64_t k, std::int64_t k_min,
                          std::int64_t backward_k_min) {
  check_grid(op, o.grid);
  const std::int64_t experts = grid_size(o.grid);
  if (k < 1 || k > experts)
    throw invalid_argument_error(dmoe::format("{}: k = {} but grid {} has {} experts", op, k, grid_text(o.grid), experts));
  if (k_min < 0 || k_min > k)
    throw invalid_argument_error(dmoe::format("{}: k_min = {} must be in [0, k = {}]", op, k_min, k));
  if (backward_k_min < 0 || backward_k_min > k)
    throw invalid_argument_error(dmoe::format("{}: backward_k_min = {} must be in [0, k = {}]", op, backward_k_min, k));
  if (o.schema.input.sample_shape.rank() == 0)
    throw invalid_argument_error(dmoe::format("{}: options.schema is not set (e.g. ffn_schema(hidden))", op));
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Marks a layer busy for one forward or backward: a layer runs one call at a time (its routing is the state of the
// last forward), so a second call while one is in flight is refused instead of corrupting it.
class layer_call_guard {
 public:
  DMOE_DECL layer_call_guard(bool& busy, std::string_view op);
  layer_call_guard(const layer_call_guard&) = delete;
  layer_call_guard& operator=(const layer_call_guard&) = delete;
  ~layer_call_guard() { busy_ = false; }

 private:
  bool& busy_;
};

}  // namespace detail

struct remote_mixture_of_experts_options : dispatch_options {
  std::int64_t k = 4;               // experts chosen per sample
  std::int64_t k_min = 1;           // answers each sample needs in forward
  std::int64_t backward_k_min = 1;  // answers each sample needs in backward (at most its forward answers)
  bool allow_zero_outputs = false;  // a sample short of answers uses what it has (zeros for none) instead of failing
};

// How the last forward routed its samples (k slots per sample, in the beam search's order).
struct remote_routing {
  grid_selection selection;               // the chosen experts' coordinates and scores (zeros in empty slots)
  std::vector<std::string> uids;          // [batch * k]: the chosen experts ("" where fewer than k were found)
  std::vector<std::uint8_t> responded;    // [batch * k]: 1 where the expert answered forward
  std::vector<float> weights;             // [batch * k]: softmax over the sample's responders, 0 elsewhere
  std::vector<std::int64_t> responders;   // [batch]
  std::vector<std::int64_t> backward_responders;  // [batch], after backward

  bool answered(std::int64_t sample, std::int64_t rank) const {
    return responded[static_cast<std::size_t>(sample * selection.k + rank)] != 0;
  }
  float weight(std::int64_t sample, std::int64_t rank) const {
    return weights[static_cast<std::size_t>(sample * selection.k + rank)];
  }
};

template <class Backend = ops::cpu_t>
class remote_mixture_of_experts : public async_module {
 public:
  using options = remote_mixture_of_experts_options;

  // A layer over the experts `directory` finds, called through `client`; both must outlive it. Throws
  // invalid_argument_error for unusable options (grid, k, k_min, schema, timeouts).
  remote_mixture_of_experts(expert_directory& directory, net::rpc_client& client, options opts, random_engine& gen)
      : options_(checked(std::move(opts))),
        dispatcher_(directory, client, options_),
        gating_(options_.schema.input.sample_shape.dim(-1), options_.grid, gen) {}

  // x [batch] + input sample shape -> [batch] + output sample shape. Errors: shape_error / invalid_argument_error
  // for x; unavailable_error when a sample has fewer than k_min answers (unless allow_zero_outputs);
  // cancelled_error. Ends within forward_timeout whatever the network does.
  task<tensor> forward_async(const tensor& x_in) override {
    const steady_time started = std::chrono::steady_clock::now();
    const steady_time deadline = deadline_after(options_.forward_timeout);
    const detail::layer_call_guard guard(busy_, op);
    options_.schema.input.check(op, x_in);
    pending_ = false;
    calls_.clear();
    const tensor x = x_in.to(device::host);
    const std::int64_t batch = x.dim(0), k = options_.k;
    const tensor scores = gating_.forward(detail::gating_input(x).to(Backend::device)).to(device::host);
    const auto chosen = co_await dispatcher_.search(scores, k, deadline);

    routing_ = remote_routing{};
    grid_selection& sel = routing_.selection;
    sel.grid = options_.grid;
    sel.batch_size = batch;
    sel.k = k;
    const std::size_t dims = options_.grid.size();
    sel.coordinates.assign(static_cast<std::size_t>(batch * k) * dims, 0);
    sel.scores.assign(static_cast<std::size_t>(batch * k), 0.0f);
    routing_.uids.assign(static_cast<std::size_t>(batch * k), {});
    std::vector<std::int64_t> need(static_cast<std::size_t>(batch));
    for (std::int64_t b = 0; b < batch; ++b) {
      const auto& experts = chosen[static_cast<std::size_t>(b)];
      for (std::size_t j = 0; j < experts.size(); ++j) {
        const auto at = static_cast<std::size_t>(b * k) + j;
        std::copy(experts[j].coordinates.begin(), experts[j].coordinates.end(), sel.coordinates.begin() + at * dims);
        sel.scores[at] = experts[j].score;
        routing_.uids[at] = experts[j].uid;
      }
      need[static_cast<std::size_t>(b)] = std::min<std::int64_t>(options_.k_min, static_cast<std::int64_t>(experts.size()));
      dispatcher_.stats().experts_chosen += experts.size();
    }
    calls_ = expert_dispatcher::group(chosen, x);
    co_await dispatcher_.run(calls_, false, std::move(need), deadline);

    routing_.responded.assign(static_cast<std::size_t>(batch * k), 0);
    routing_.weights.assign(static_cast<std::size_t>(batch * k), 0.0f);
    routing_.responders.assign(static_cast<std::size_t>(batch), 0);
    for (const expert_call& c : calls_) {
      if (!c.answered) continue;
      for (std::size_t r = 0; r < c.samples.size(); ++r) {
        routing_.responded[static_cast<std::size_t>(c.samples[r] * k + c.ranks[r])] = 1;
        ++routing_.responders[static_cast<std::size_t>(c.samples[r])];
      }
    }
    for (std::int64_t b = 0; b < batch; ++b) {
      const std::int64_t got = routing_.responders[static_cast<std::size_t>(b)];
      dispatcher_.stats().experts_answered += static_cast<std::uint64_t>(got);
      if (got < options_.k_min && !options_.allow_zero_outputs)
        throw unavailable_error(dmoe::format(
            "{}: sample {} has {} of its {} chosen experts answering ({} live found) but k_min is {}{}", op, b, got, k,
            chosen[static_cast<std::size_t>(b)].size(), options_.k_min, first_failure()));
      const auto at = static_cast<std::size_t>(b * k);
      detail::responder_softmax(sel.scores.data() + at, routing_.responded.data() + at, k, routing_.weights.data() + at);
    }
    tensor out(options_.schema.output.batch_shape(batch));
    const std::int64_t row = options_.schema.output.sample_shape.numel();
    float* o = out.data<float>();
    for (const expert_call& c : calls_) {
      if (!c.answered) continue;
      const float* y = c.outputs.data<float>();
      for (std::size_t r = 0; r < c.samples.size(); ++r) {
        const float w = routing_.weight(c.samples[r], c.ranks[r]);
        float* dst = o + c.samples[r] * row;
        const float* src = y + static_cast<std::int64_t>(r) * row;
        for (std::int64_t i = 0; i < row; ++i) dst[i] += w * src[i];
      }
    }
    ++dispatcher_.stats().forward_calls;
    dispatcher_.stats().last_forward_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    input_shape_ = x.shape();
    pending_ = true;
    co_return out.to(Backend::device);
  }

  // dy [batch] + output sample shape -> dx [batch] + input sample shape, for the last forward (once). Errors:
  // invalid_argument_error without a forward; shape_error for dy; unavailable_error when a sample has fewer than
  // min(backward_k_min, its forward answers) input gradients back (unless allow_zero_outputs); cancelled_error.
  // Ends within backward_timeout.
  task<tensor> backward_async(const tensor& dy_in) override {
    const steady_time deadline = deadline_after(options_.backward_timeout);
    const detail::layer_call_guard guard(busy_, op);
    if (!pending_) throw invalid_argument_error(dmoe::format("{}: backward without a forward before it", op));
    options_.schema.output.check(std::string(op) + " backward", dy_in);
    const tensor dy = dy_in.to(device::host);
    const std::int64_t batch = input_shape_.dim(0), k = options_.k;
    if (dy.dim(0) != batch)
      throw shape_error(dmoe::format("{}: dy is {} but the forward's batch was {}", op, dy.shape(), batch));
    pending_ = false;
    const std::int64_t out_row = options_.schema.output.sample_shape.numel();
    const std::int64_t in_row = options_.schema.input.sample_shape.numel();
    const float* pdy = dy.data<float>();
    std::vector<double> dweights(static_cast<std::size_t>(batch * k), 0.0);
    std::vector<expert_call> answered;
    for (expert_call& c : calls_) {
      if (!c.answered) continue;
      const auto rows = static_cast<std::int64_t>(c.samples.size());
      const float* y = c.outputs.data<float>();
      c.grad_outputs = tensor::uninitialized(options_.schema.output.batch_shape(rows));
      float* g = c.grad_outputs.data<float>();
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t s = c.samples[static_cast<std::size_t>(r)];
        const float w = routing_.weight(s, c.ranks[static_cast<std::size_t>(r)]);
        double dot = 0.0;
        for (std::int64_t i = 0; i < out_row; ++i) {
          dot += static_cast<double>(pdy[s * out_row + i]) * y[r * out_row + i];
          g[r * out_row + i] = w * pdy[s * out_row + i];
        }
        dweights[static_cast<std::size_t>(s * k + c.ranks[static_cast<std::size_t>(r)])] = dot;
      }
      answered.push_back(std::move(c));
    }
    calls_.clear();
    std::vector<std::int64_t> need(static_cast<std::size_t>(batch));
    for (std::int64_t b = 0; b < batch; ++b)
      need[static_cast<std::size_t>(b)] =
          std::min(options_.backward_k_min, routing_.responders[static_cast<std::size_t>(b)]);
    const std::vector<std::int64_t> wanted = need;
    co_await dispatcher_.run(answered, true, std::move(need), deadline);

    tensor dx(input_shape_);
    float* pdx = dx.data<float>();
    routing_.backward_responders.assign(static_cast<std::size_t>(batch), 0);
    for (const expert_call& c : answered) {
      if (!c.answered) continue;
      ++dispatcher_.stats().backward_answered;
      const float* src = c.grad_inputs.data<float>();
      for (std::size_t r = 0; r < c.samples.size(); ++r) {
        ++routing_.backward_responders[static_cast<std::size_t>(c.samples[r])];
        float* dst = pdx + c.samples[r] * in_row;
        const float* from = src + static_cast<std::int64_t>(r) * in_row;
        for (std::int64_t i = 0; i < in_row; ++i) dst[i] += from[i];
      }
    }
    if (!options_.allow_zero_outputs)
      for (std::int64_t b = 0; b < batch; ++b)
        if (routing_.backward_responders[static_cast<std::size_t>(b)] < wanted[static_cast<std::size_t>(b)]) {
          std::string why;
          for (const expert_call& c : answered)
            if (!c.answered) {
              why = dmoe::format(" (e.g. {}: {})", c.uid, c.failure);
              break;
            }
          throw unavailable_error(dmoe::format("{}: sample {} got {} input gradients back but backward_k_min is {}{}", op,
                                              b, routing_.backward_responders[static_cast<std::size_t>(b)],
                                              options_.backward_k_min, why));
        }
    const tensor dscores = detail::responder_softmax_backward(routing_.weights, routing_.responded, dweights, batch, k);
    detail::add_gating_dx(gating_.backward_selected(routing_.selection, dscores).to(device::host), dx);
    co_return dx.to(Backend::device);
  }

  // "gating.projection.weight", "gating.projection.bias": the trainer's share of the layer.
  nn::parameter_list parameters() override {
    nn::parameter_list out;
    nn::append_parameters(out, "gating", gating_.parameters());
    return out;
  }

  // The last forward's routing (still there after backward).
  const remote_routing& routing() const noexcept { return routing_; }
  grid_gating<Backend>& gating() noexcept { return gating_; }
  const options& config() const noexcept { return options_; }
  const dispatch_stats& stats() const noexcept { return dispatcher_.stats(); }
  expert_dispatcher& dispatcher() noexcept { return dispatcher_; }

 private:
  static constexpr std::string_view op = "remote_mixture_of_experts";

  DMOE_LAZY static options checked(options o) {
    detail::check_routing(op, o, o.k, o.k_min, o.backward_k_min);
    return o;
  }

  DMOE_LAZY std::string first_failure() const {
    for (const expert_call& c : calls_)
      if (!c.answered) return dmoe::format("; e.g. {} at {}: {}", c.uid, c.server, c.failure);
    return {};
  }

  options options_;
  expert_dispatcher dispatcher_;
  grid_gating<Backend> gating_;
  remote_routing routing_;
  std::vector<expert_call> calls_;
  shape input_shape_;
  bool pending_ = false;
  bool busy_ = false;  // a forward or backward is in flight
};

}  // namespace moe
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace moe {

DMOE_DEF auto expert_dispatcher::search(const tensor& grid_scores, std::int64_t k, steady_time deadline)
    -> task<std::vector<std::vector<found_expert>>> {
  const steady_time now = std::chrono::steady_clock::now();
  std::erase_if(*avoided_, [now](const auto& entry) { return entry.second <= now; });
  const auto skip = [this](const std::string& uid) { return avoided_->contains(uid); };
  const auto started = std::chrono::steady_clock::now();
  auto found = co_await beam_search(directory_, grid_scores, search_options_, k, deadline, skip);
  stats_.last_search_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  co_return found;
}

DMOE_DEF auto expert_dispatcher::group(const std::vector<std::vector<found_expert>>& chosen, const tensor& x)
    -> std::vector<expert_call> {
  std::vector<expert_call> calls;
  std::unordered_map<std::string, std::size_t> index;
  for (std::size_t b = 0; b < chosen.size(); ++b)
    for (std::size_t j = 0; j < chosen[b].size(); ++j) {
      const found_expert& e = chosen[b][j];
      const auto [it, added] = index.emplace(e.uid, calls.size());
      if (added) calls.push_back(expert_call{e.uid, e.server, {}, {}, {}, {}, {}, {}, false, false, {}});
      calls[it->second].samples.push_back(static_cast<std::int64_t>(b));
      calls[it->second].ranks.push_back(static_cast<std::int64_t>(j));
    }
  const std::int64_t row = x.numel() / std::max<std::int64_t>(1, x.dim(0));
  const float* px = x.data<float>();
  for (expert_call& c : calls) {
    c.inputs = tensor::uninitialized(x.shape().without_first().with_leading(static_cast<std::int64_t>(c.samples.size())));
    float* dst = c.inputs.data<float>();
    for (std::size_t r = 0; r < c.samples.size(); ++r)
      std::memcpy(dst + static_cast<std::int64_t>(r) * row, px + c.samples[r] * row,
                  static_cast<std::size_t>(row) * sizeof(float));
  }
  return calls;
}

DMOE_DEF auto expert_dispatcher::run(std::vector<expert_call>& calls, bool backward,
    std::vector<std::int64_t> need, steady_time deadline) -> task<void> {
  progress p;
  p.need = std::move(need);
  for (std::int64_t n : p.need) p.short_samples += n > 0 ? 1 : 0;
  p.pending = calls.size();
  if (calls.empty()) co_return;
  task_group group;
  for (expert_call& c : calls) {
    c.answered = false;
    c.blamed = false;
    c.failure.clear();
    group.spawn(call_one(c, backward, deadline, p));
  }
  stats_.requests += calls.size();
  std::exception_ptr stopped;
  try {
    if (p.short_samples > 0) co_await wait_until(p.enough, deadline);
    const steady_time grace = std::min(deadline, deadline_after(options_.timeout_after_k_min));
    if (p.pending > 0) co_await wait_until(p.all_done, grace);
  } catch (...) {
    stopped = std::current_exception();
  }
  group.request_stop();
  co_await group.join();  // call_one never throws
  const steady_time until = deadline_after(options_.avoid_failed_for);
  for (const expert_call& c : calls) {
    if (c.answered) continue;
    ++stats_.requests_failed;
    if (c.blamed) (*avoided_)[c.uid] = until;
  }
  if (stopped) std::rethrow_exception(stopped);
}

DMOE_DEF auto expert_dispatcher::checked(dispatch_options o) -> dispatch_options {
  detail::check_grid("remote mixture of experts", o.grid);
  detail::check_grid_keys("remote mixture of experts", o.grid);
  if (!is_valid_uid_prefix(o.uid_prefix + "."))
    throw invalid_argument_error(dmoe::format("remote mixture of experts: '{}' is not an expert name", o.uid_prefix));
  detail::check_f32_schema("input", o.schema.input);
  detail::check_f32_schema("output", o.schema.output);
  if (o.forward_timeout.count() <= 0 || o.backward_timeout.count() <= 0 || o.timeout_after_k_min.count() < 0 ||
      o.avoid_failed_for.count() < 0)
    throw invalid_argument_error(
        "remote mixture of experts: forward_timeout and backward_timeout must be positive, timeout_after_k_min and "
        "avoid_failed_for not negative");
  return o;
}

DMOE_DEF auto expert_dispatcher::wait_event(async_event& event) -> task<void> { co_await event.wait(); }

DMOE_DEF auto expert_dispatcher::wait_until(async_event& event, steady_time until) -> task<void> {
  try {
    co_await with_deadline(wait_event(event), until);
  } catch (const timeout_error&) {
  }
}

DMOE_DEF auto expert_dispatcher::call_one(expert_call& c, bool backward, steady_time deadline, progress& p)
    -> task<void> {
  try {
    if (backward) {
      c.grad_inputs = co_await call_expert(client_, c.server, c.uid, c.inputs, &c.grad_outputs,
                                           &options_.schema.input, deadline, {}, options_.call);
    } else {
      c.outputs = co_await call_expert(client_, c.server, c.uid, c.inputs, nullptr, &options_.schema.output,
                                       deadline, {}, options_.call);
    }
    c.answered = true;
    for (std::int64_t s : c.samples) {
      auto& need = p.need[static_cast<std::size_t>(s)];
      if (need > 0 && --need == 0) --p.short_samples;
    }
  } catch (const cancelled_error& e) {
    c.failure = e.what();  // cut off by the layer (k_min reached) or by the caller
  } catch (const timeout_error& e) {
    c.failure = e.what();  // the call's deadline: maybe the beam search used it up; nobody is blamed
  } catch (const std::exception& e) {
    c.failure = e.what();
    c.blamed = true;
  }
  --p.pending;
  if (p.short_samples == 0 || p.pending == 0) p.enough.set();
  if (p.pending == 0) p.all_done.set();
}

DMOE_DEF bool expert_dispatcher::avoided(const std::string& uid) const {
  const auto it = avoided_->find(uid);
  return it != avoided_->end() && it->second > std::chrono::steady_clock::now();
}

}  // namespace moe

namespace moe::detail {

DMOE_DEF layer_call_guard::layer_call_guard(bool& busy, std::string_view op) : busy_(busy) {
  if (busy_)
    throw invalid_argument_error(dmoe::format(
        "{}: another forward or backward of this layer is in flight (a layer runs one call at a time)", op));
  busy_ = true;
}

}  // namespace moe::detail
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
