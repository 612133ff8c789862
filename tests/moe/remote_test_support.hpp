// Helpers of the remote mixture-of-experts tests: a directory from a list of experts, and an expert server with
// injected faults (experts that are slow, that fail, or whose server is gone).
#pragma once

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/moe/beam_search.hpp>
#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/net/rpc_server.hpp>
#include <dmoe/nn/experts.hpp>

#include <boost/test/unit_test.hpp>

#include "net/rpc_test_support.hpp"  // with_server: serve, run a body, close and stop

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dmoe_test {

// A directory that knows a fixed list of experts, as honest servers would have declared them (one entry per
// (prefix, next coordinate): the first uid given).
class list_directory final : public dmoe::moe::expert_directory {
 public:
  list_directory() = default;
  void add(const std::string& uid, const dmoe::endpoint& server) {
    for (const auto& p : dmoe::moe::uid_prefixes(uid)) {
      auto& entry = prefixes_[p.prefix];
      if (!entry) entry = std::make_shared<dmoe::moe::prefix_successors>();
      entry->found = true;
      entry->next.emplace(static_cast<std::uint32_t>(std::stoul(p.next)), dmoe::moe::expert_declaration{uid, server, 0});
    }
  }
  dmoe::task<std::vector<dmoe::moe::successors_ref>> successors(std::vector<std::string> prefixes,
                                                                dmoe::steady_time) override {
    ++queries;
    std::vector<dmoe::moe::successors_ref> out;
    for (const auto& p : prefixes) {
      asked.push_back(p);
      const auto it = prefixes_.find(p);
      out.push_back(it == prefixes_.end() ? std::make_shared<const dmoe::moe::prefix_successors>() : it->second);
    }
    co_return out;
  }

  std::size_t queries = 0;
  std::vector<std::string> asked;

 private:
  std::map<std::string, std::shared_ptr<dmoe::moe::prefix_successors>> prefixes_;
};

// How an expert of a faulty_expert_server behaves.
enum class expert_fault { none, slow, fails };

// An rpc_server on the test's io_context answering the expert protocol with registry experts (kind, hidden,
// expert_seed(uid, seed): the same as local_mixture_of_experts and the real server make), with faults per uid. It
// computes backward with the parameters it has (it does not step an optimizer). Serve it inside run().
class faulty_expert_server {
 public:
  faulty_expert_server(dmoe::io_context& ctx, std::string kind, std::int64_t hidden, std::uint64_t seed)
      : server_(ctx, dmoe::endpoint::loopback_v4(0)), kind_(std::move(kind)), hidden_(hidden), seed_(seed) {
    server_.add_handler(dmoe::moe::forward_method, [this](dmoe::net::rpc_request& r) { return handle(r, false); });
    server_.add_handler(dmoe::moe::backward_method, [this](dmoe::net::rpc_request& r) { return handle(r, true); });
  }

  void set_fault(const std::string& uid, expert_fault fault) { faults_[uid] = fault; }
  const dmoe::endpoint& address() const noexcept { return server_.local_endpoint(); }
  dmoe::net::rpc_server& rpc() noexcept { return server_; }
  std::size_t forward_requests = 0, backward_requests = 0, cancelled = 0;
  std::multiset<std::string> backward_uids;

 private:
  dmoe::nn::module& expert(const std::string& uid) {
    auto& m = experts_[uid];
    if (!m) m = dmoe::nn::make_expert<dmoe::ops::cpu_t>(kind_, hidden_, dmoe::moe::expert_seed(uid, seed_));
    return *m;
  }

  dmoe::task<dmoe::net::rpc_response> handle(dmoe::net::rpc_request& request, bool backward) {
    auto req = dmoe::moe::decode_expert_request(request.payload, backward ? dmoe::moe::expert_direction::backward
                                                                          : dmoe::moe::expert_direction::forward);
    ++(backward ? backward_requests : forward_requests);
    if (backward) backward_uids.insert(req.uid);
    const auto it = faults_.find(req.uid);
    const expert_fault fault = it == faults_.end() ? expert_fault::none : it->second;
    if (fault == expert_fault::fails) throw dmoe::error(dmoe::errc::io, "injected failure of " + req.uid);
    if (fault == expert_fault::slow) {
      try {
        co_await dmoe::sleep_for(std::chrono::seconds(60));  // until the caller gives up (a cancel frame)
      } catch (const dmoe::cancelled_error&) {
        ++cancelled;
        throw;
      }
    }
    dmoe::nn::module& m = expert(req.uid);
    dmoe::tensor out = m.forward(req.inputs);
    if (backward) out = m.backward(req.grad_outputs);
    co_return dmoe::net::rpc_response(dmoe::encode_tensor(out, req.response_codec));
  }

  dmoe::net::rpc_server server_;
  std::string kind_;
  std::int64_t hidden_;
  std::uint64_t seed_;
  std::unordered_map<std::string, expert_fault> faults_;
  std::unordered_map<std::string, std::unique_ptr<dmoe::nn::module>> experts_;
};

// The largest |a - b| over two tensors of one shape.
inline float max_difference(const dmoe::tensor& a, const dmoe::tensor& b) {
  BOOST_REQUIRE(a.shape() == b.shape());
  float worst = 0;
  const auto x = a.span<float>();
  const auto y = b.span<float>();
  for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
  return worst;
}

// A parameter's gradient by name.
inline dmoe::tensor grad_of(dmoe::nn::parameter_list params, const std::string& name) {
  for (auto& p : params)
    if (p.name == name) return p.grad->clone();
  BOOST_FAIL("no parameter " + name);
  return {};
}

}  // namespace dmoe_test
