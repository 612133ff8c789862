// moe::switch_mixture_of_experts: the Switch-style DMoE layer (Fedus, Zoph & Shazeer 2021, "Switch Transformers"):
// each sample goes to its best live expert (top-1, or the k best), weighted by that expert's probability under the
// softmax over the whole grid; a load-balancing loss pushes the gating to spread samples evenly; a sample whose
// experts all failed passes through unchanged (the residual path), or gets zeros when the experts change the shape.
//
// On a product grid the softmax over all experts factorises: p(c0, c1, ...) = prod_d softmax_d(scores_d)[c_d]. The
// load-balancing loss is the Switch loss taken per grid dimension, as hivemind's RemoteSwitchMixtureOfExperts does:
//   L = weight * sum_d grid[d] * sum_c f_d(c) * P_d(c),
// with f_d(c) the fraction of the batch whose first chosen expert has coordinate c in dimension d and P_d(c) the
// batch's mean probability of coordinate c; it is 1 per dimension (times weight) when the load is uniform.
// Finding and calling the experts is remote_mixture_of_experts's (moe/remote_mixture_of_experts.hpp).
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/moe/async_module.hpp>
#include <dmoe/moe/gating.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/moe/remote_mixture_of_experts.hpp>
#include <dmoe/nn/parameter.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

struct switch_mixture_of_experts_options : dispatch_options {
  std::int64_t k = 1;                   // experts called per sample (1: Switch's top-1)
  std::int64_t k_min = 0;               // answers each sample waits for (0: the residual path covers failures)
  std::int64_t backward_k_min = 1;      // input gradients each sample waits for (at most its forward answers)
  float balancing_loss_weight = 0.01f;  // the load-balancing loss's coefficient (Switch's alpha)
};

template <class Backend = ops::cpu_t>
class switch_mixture_of_experts : public async_module {
 public:
  using options = switch_mixture_of_experts_options;

  // As remote_mixture_of_experts. Throws invalid_argument_error for unusable options.
  switch_mixture_of_experts(expert_directory& directory, net::rpc_client& client, options opts, random_engine& gen)
      : options_(checked(std::move(opts))),
        dispatcher_(directory, client, options_),
        gating_(options_.schema.input.sample_shape.dim(-1), options_.grid, gen) {}

  // x [batch] + input sample shape -> [batch] + output sample shape; never fails for lack of experts. Errors:
  // shape_error / invalid_argument_error for x; cancelled_error. Ends within forward_timeout.
  task<tensor> forward_async(const tensor& x_in) override {
    const steady_time started = std::chrono::steady_clock::now();
    const steady_time deadline = deadline_after(options_.forward_timeout);
    const detail::layer_call_guard guard(busy_, op);
    options_.schema.input.check(op, x_in);
    pending_ = false;
    calls_.clear();
    const tensor x = x_in.to(device::host);
    batch_ = x.dim(0);
    const std::int64_t k = options_.k;
    const tensor scores = gating_.forward(detail::gating_input(x).to(Backend::device)).to(device::host);
    probabilities(scores);
    const auto chosen = co_await dispatcher_.search(scores, k, deadline);
    coordinates_.assign(static_cast<std::size_t>(batch_ * k) * dims(), 0);
    std::vector<std::int64_t> need(static_cast<std::size_t>(batch_));
    for (std::int64_t b = 0; b < batch_; ++b) {
      const auto& experts = chosen[static_cast<std::size_t>(b)];
      for (std::size_t j = 0; j < experts.size(); ++j)
        std::copy(experts[j].coordinates.begin(), experts[j].coordinates.end(),
                  coordinates_.begin() + static_cast<std::ptrdiff_t>((static_cast<std::size_t>(b * k) + j) * dims()));
      need[static_cast<std::size_t>(b)] = std::min<std::int64_t>(options_.k_min, static_cast<std::int64_t>(experts.size()));
      dispatcher_.stats().experts_chosen += experts.size();
    }
    balancing(chosen);
    calls_ = expert_dispatcher::group(chosen, x);
    co_await dispatcher_.run(calls_, false, std::move(need), deadline);

    weights_.assign(static_cast<std::size_t>(batch_ * k), 0.0f);
    answered_.assign(static_cast<std::size_t>(batch_), 0);
    for (const expert_call& c : calls_) {
      if (!c.answered) continue;
      for (std::size_t r = 0; r < c.samples.size(); ++r) {
        const std::int64_t s = c.samples[r], j = c.ranks[r];
        weights_[static_cast<std::size_t>(s * k + j)] = static_cast<float>(probability(s, j));
        ++answered_[static_cast<std::size_t>(s)];
      }
    }
    const std::int64_t row = options_.schema.output.sample_shape.numel();
    tensor out(options_.schema.output.batch_shape(batch_));
    float* o = out.data<float>();
    for (const expert_call& c : calls_) {
      if (!c.answered) continue;
      const float* y = c.outputs.data<float>();
      for (std::size_t r = 0; r < c.samples.size(); ++r) {
        const float w = weights_[static_cast<std::size_t>(c.samples[r] * k + c.ranks[r])];
        for (std::int64_t i = 0; i < row; ++i) o[c.samples[r] * row + i] += w * y[static_cast<std::int64_t>(r) * row + i];
      }
    }
    const bool residual = options_.schema.input == options_.schema.output;
    const float* px = x.data<float>();
    for (std::int64_t b = 0; b < batch_; ++b) {
      dispatcher_.stats().experts_answered += static_cast<std::uint64_t>(answered_[static_cast<std::size_t>(b)]);
      if (answered_[static_cast<std::size_t>(b)] == 0 && residual)
        std::copy(px + b * row, px + (b + 1) * row, o + b * row);
    }
    ++dispatcher_.stats().forward_calls;
    dispatcher_.stats().last_forward_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    input_shape_ = x.shape();
    pending_ = true;
    co_return out.to(Backend::device);
  }

  // dy -> dx for the last forward (once); the gating gets the gradients of the experts' probabilities and of the
  // load-balancing loss. Missing input gradients count as zero. Errors: invalid_argument_error without a forward,
  // shape_error for dy, cancelled_error. Ends within backward_timeout.
  task<tensor> backward_async(const tensor& dy_in) override {
    const steady_time deadline = deadline_after(options_.backward_timeout);
    const detail::layer_call_guard guard(busy_, op);
    if (!pending_) throw invalid_argument_error(dmoe::format("{}: backward without a forward before it", op));
    options_.schema.output.check(std::string(op) + " backward", dy_in);
    const tensor dy = dy_in.to(device::host);
    if (dy.dim(0) != batch_)
      throw shape_error(dmoe::format("{}: dy is {} but the forward's batch was {}", op, dy.shape(), batch_));
    pending_ = false;
    const std::int64_t k = options_.k, out_row = options_.schema.output.sample_shape.numel(),
                       in_row = options_.schema.input.sample_shape.numel();
    const float* pdy = dy.data<float>();
    const std::vector<std::int64_t> offsets = grid_offsets(options_.grid);
    const std::int64_t width = offsets.back();
    std::vector<double> dlogits(static_cast<std::size_t>(batch_ * width), 0.0);
    std::vector<expert_call> answered;
    for (expert_call& c : calls_) {
      if (!c.answered) continue;
      const auto rows = static_cast<std::int64_t>(c.samples.size());
      const float* y = c.outputs.data<float>();
      c.grad_outputs = tensor::uninitialized(options_.schema.output.batch_shape(rows));
      float* g = c.grad_outputs.data<float>();
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t s = c.samples[static_cast<std::size_t>(r)], j = c.ranks[static_cast<std::size_t>(r)];
        const float w = weights_[static_cast<std::size_t>(s * k + j)];
        double dw = 0.0;
        for (std::int64_t i = 0; i < out_row; ++i) {
          dw += static_cast<double>(pdy[s * out_row + i]) * y[r * out_row + i];
          g[r * out_row + i] = w * pdy[s * out_row + i];
        }
        // w = prod_d p_d(c_d): d w / d logit_d(c') = w (1[c' = c_d] - p_d(c')).
        for (std::size_t d = 0; d < dims(); ++d) {
          const std::uint32_t cd = coordinates_[(static_cast<std::size_t>(s * k + j)) * dims() + d];
          for (std::int64_t c2 = offsets[d]; c2 < offsets[d + 1]; ++c2) {
            const double indicator = c2 - offsets[d] == cd ? 1.0 : 0.0;
            dlogits[static_cast<std::size_t>(s * width + c2)] +=
                dw * w * (indicator - probs_[static_cast<std::size_t>(s * width + c2)]);
          }
        }
      }
      answered.push_back(std::move(c));
    }
    calls_.clear();
    std::vector<std::int64_t> need(static_cast<std::size_t>(batch_));
    for (std::int64_t b = 0; b < batch_; ++b)
      need[static_cast<std::size_t>(b)] = std::min(options_.backward_k_min, answered_[static_cast<std::size_t>(b)]);
    co_await dispatcher_.run(answered, true, std::move(need), deadline);

    tensor dx(input_shape_);
    float* pdx = dx.data<float>();
    for (const expert_call& c : answered) {
      if (!c.answered) continue;
      ++dispatcher_.stats().backward_answered;
      const float* src = c.grad_inputs.data<float>();
      for (std::size_t r = 0; r < c.samples.size(); ++r)
        for (std::int64_t i = 0; i < in_row; ++i) pdx[c.samples[r] * in_row + i] += src[static_cast<std::int64_t>(r) * in_row + i];
    }
    if (options_.schema.input == options_.schema.output)
      for (std::int64_t b = 0; b < batch_; ++b)
        if (answered_[static_cast<std::size_t>(b)] == 0)
          for (std::int64_t i = 0; i < in_row; ++i) pdx[b * in_row + i] += pdy[b * out_row + i];
    // The load-balancing loss: d L / d P_d(c) = weight * grid[d] * f_d(c), and P_d is the batch's mean of p_d.
    for (std::size_t d = 0; d < dims() && batch_ > 0; ++d) {
      const double scale = options_.balancing_loss_weight * options_.grid[d] / static_cast<double>(batch_);
      for (std::int64_t b = 0; b < batch_; ++b) {
        double mean = 0.0;
        for (std::int64_t c = offsets[d]; c < offsets[d + 1]; ++c)
          mean += fractions_[static_cast<std::size_t>(c)] * probs_[static_cast<std::size_t>(b * width + c)];
        for (std::int64_t c = offsets[d]; c < offsets[d + 1]; ++c)
          dlogits[static_cast<std::size_t>(b * width + c)] +=
              scale * probs_[static_cast<std::size_t>(b * width + c)] * (fractions_[static_cast<std::size_t>(c)] - mean);
      }
    }
    tensor grad_scores(shape{batch_, width});
    float* gs = grad_scores.data<float>();
    for (std::size_t i = 0; i < dlogits.size(); ++i) gs[i] = static_cast<float>(dlogits[i]);
    detail::add_gating_dx(gating_.backward(grad_scores.to(Backend::device)).to(device::host), dx);
    co_return dx.to(Backend::device);
  }

  // The last forward's load-balancing loss (already weighted); its gradient is added by backward_async, so add its
  // value to the reported loss only.
  float balancing_loss() const noexcept { return balancing_loss_; }
  // How many experts answered each sample in the last forward.
  const std::vector<std::int64_t>& answered() const noexcept { return answered_; }

  nn::parameter_list parameters() override {
    nn::parameter_list out;
    nn::append_parameters(out, "gating", gating_.parameters());
    return out;
  }
  grid_gating<Backend>& gating() noexcept { return gating_; }
  const dispatch_stats& stats() const noexcept { return dispatcher_.stats(); }
  const options& config() const noexcept { return options_; }

 private:
  static constexpr std::string_view op = "switch_mixture_of_experts";

  DMOE_LAZY static options checked(options o) {
    detail::check_routing(op, o, o.k, o.k_min, o.backward_k_min);
    if (!std::isfinite(o.balancing_loss_weight) || o.balancing_loss_weight < 0)
      throw invalid_argument_error(dmoe::format("{}: balancing_loss_weight = {}", op, o.balancing_loss_weight));
    return o;
  }

  std::size_t dims() const noexcept { return options_.grid.size(); }

  // Each dimension's softmax of the sample's scores, in double.
  DMOE_LAZY void probabilities(const tensor& scores) {
    const std::vector<std::int64_t> offsets = grid_offsets(options_.grid);
    const std::int64_t width = offsets.back();
    probs_.assign(static_cast<std::size_t>(batch_ * width), 0.0);
    const float* s = scores.data<float>();
    for (std::int64_t b = 0; b < batch_; ++b)
      for (std::size_t d = 0; d < dims(); ++d) {
        double best = -HUGE_VAL, total = 0.0;
        for (std::int64_t c = offsets[d]; c < offsets[d + 1]; ++c) best = std::max(best, static_cast<double>(s[b * width + c]));
        for (std::int64_t c = offsets[d]; c < offsets[d + 1]; ++c)
          total += probs_[static_cast<std::size_t>(b * width + c)] = std::exp(static_cast<double>(s[b * width + c]) - best);
        for (std::int64_t c = offsets[d]; c < offsets[d + 1]; ++c) probs_[static_cast<std::size_t>(b * width + c)] /= total;
      }
  }

  // The probability of sample s's j-th chosen expert: the product of its coordinates' probabilities.
  DMOE_LAZY double probability(std::int64_t s, std::int64_t j) const {
    const std::vector<std::int64_t> offsets = grid_offsets(options_.grid);
    double p = 1.0;
    for (std::size_t d = 0; d < dims(); ++d)
      p *= probs_[static_cast<std::size_t>(s * offsets.back() + offsets[d]) +
                  coordinates_[static_cast<std::size_t>(s * options_.k + j) * dims() + d]];
    return p;
  }

  // f_d(c) from each sample's first chosen expert, and the loss's value.
  DMOE_LAZY void balancing(const std::vector<std::vector<found_expert>>& chosen) {
    const std::vector<std::int64_t> offsets = grid_offsets(options_.grid);
    const std::int64_t width = offsets.back();
    fractions_.assign(static_cast<std::size_t>(width), 0.0);
    balancing_loss_ = 0.0f;
    if (batch_ == 0) return;  // no samples, no load
    for (const auto& experts : chosen) {
      if (experts.empty()) continue;
      for (std::size_t d = 0; d < dims(); ++d)
        fractions_[static_cast<std::size_t>(offsets[d]) + experts.front().coordinates[d]] += 1.0 / static_cast<double>(batch_);
    }
    double loss = 0.0;
    for (std::size_t d = 0; d < dims(); ++d)
      for (std::int64_t c = offsets[d]; c < offsets[d + 1]; ++c) {
        double mean = 0.0;
        for (std::int64_t b = 0; b < batch_; ++b) mean += probs_[static_cast<std::size_t>(b * width + c)];
        loss += options_.grid[d] * fractions_[static_cast<std::size_t>(c)] * mean / static_cast<double>(batch_);
      }
    balancing_loss_ = static_cast<float>(options_.balancing_loss_weight * loss);
  }

  options options_;
  expert_dispatcher dispatcher_;
  grid_gating<Backend> gating_;
  std::vector<expert_call> calls_;
  std::vector<double> probs_;                 // [batch, sum(grid)]
  std::vector<double> fractions_;             // [sum(grid)]
  std::vector<std::uint32_t> coordinates_;    // [batch * k * dims]
  std::vector<float> weights_;                // [batch * k]
  std::vector<std::int64_t> answered_;        // [batch]
  std::int64_t batch_ = 0;
  float balancing_loss_ = 0.0f;
  shape input_shape_;
  bool pending_ = false;
  bool busy_ = false;  // a forward or backward is in flight
};

}  // namespace moe
DMOE_END_NAMESPACE
