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
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dmoe_test {

// A directory that knows a fixed list of experts, as honest servers would have declared them: per prefix, one
// successor set per server under an owner subkey, read back through moe::read_successors.
class list_directory final : public dmoe::moe::expert_directory {
 public:
  list_directory() = default;
  // Declares `uid` at `server`; the first server given for a uid owns its uid record (see owners()).
  void add(const std::string& uid, const dmoe::endpoint& server) {
    owners_.emplace(uid, server);
    const auto chain = dmoe::moe::uid_prefixes(uid);
    for (std::size_t i = 0; i < chain.size(); ++i) {
      auto& sets = prefixes_[chain[i].prefix][server.to_string()];
      sets.server = server;
      (i + 1 == chain.size() ? sets.leaves : sets.inner).insert(static_cast<std::uint32_t>(std::stoul(chain[i].next)));
    }
  }
  dmoe::task<std::vector<dmoe::moe::successors_ref>> successors(std::vector<std::string> prefixes,
                                                                dmoe::steady_time) override {
    ++queries;
    std::vector<dmoe::moe::successors_ref> out;
    for (const auto& p : prefixes) {
      asked.push_back(p);
      const auto it = prefixes_.find(p);
      if (it == prefixes_.end()) {
        out.push_back(std::make_shared<const dmoe::moe::prefix_successors>());
        continue;
      }
      dmoe::dht::record r;
      r.is_dictionary = true;
      for (const auto& [address, sets] : it->second) {
        dmoe::dht::ed25519_public_key owner{};
        const std::size_t h = std::hash<std::string>{}(address);
        for (std::size_t i = 0; i < owner.size(); ++i) owner[i] = static_cast<std::byte>(h >> (8 * (i % 8)));
        const dmoe::moe::successor_set set{
            sets.server, dmoe::moe::ranges_of({sets.leaves.begin(), sets.leaves.end()}),
            dmoe::moe::ranges_of({sets.inner.begin(), sets.inner.end()})};
        r.subkeys.emplace(dmoe::to_buffer(dmoe::dht::owner_tag(owner)),
                          dmoe::dht::timed_value{dmoe::moe::encode_successor_set(set), 1e12, {}});
      }
      out.push_back(std::make_shared<const dmoe::moe::prefix_successors>(dmoe::moe::read_successors(r)));
    }
    co_return out;
  }

  dmoe::task<std::vector<std::optional<dmoe::endpoint>>> owners(std::vector<std::string> uids,
                                                                dmoe::steady_time) override {
    ++owner_queries;
    std::vector<std::optional<dmoe::endpoint>> out;
    for (const auto& uid : uids) {
      const auto it = owners_.find(uid);
      out.push_back(it == owners_.end() ? std::nullopt : std::optional(it->second));
    }
    co_return out;
  }

  std::size_t queries = 0;
  std::size_t owner_queries = 0;
  std::vector<std::string> asked;

 private:
  struct server_sets {
    dmoe::endpoint server;
    std::set<std::uint32_t> leaves, inner;
  };
  std::map<std::string, std::map<std::string, server_sets>> prefixes_;  // prefix -> server address -> its sets
  std::map<std::string, dmoe::endpoint> owners_;
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
