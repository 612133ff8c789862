// Helpers of the server tests: a synchronous expert client over rpc_client, and small tensor helpers.
#pragma once

#include <temp_dir.hpp>

#include <dmoe/async/io_context.hpp>
#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/server/server.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <future>
#include <random>
#include <string>

namespace dmoe_test {

// Calls experts from the test's thread: each call runs the client's io_context until it returns.
class expert_client {
 public:
  expert_client() : client_(ctx_) {}
  ~expert_client() { ctx_.run(client_.close()); }

  dmoe::tensor forward(const dmoe::endpoint& server, const std::string& uid, const dmoe::tensor& x,
                       dmoe::wire_codec codec = dmoe::wire_codec::none,
                       dmoe::wire_codec response_codec = dmoe::wire_codec::none) {
    auto request = dmoe::moe::encode_expert_request(uid, x, nullptr, codec, response_codec);
    return call(server, dmoe::moe::forward_method, request);
  }
  dmoe::tensor backward(const dmoe::endpoint& server, const std::string& uid, const dmoe::tensor& x,
                        const dmoe::tensor& dy) {
    auto request = dmoe::moe::encode_expert_request(uid, x, &dy);
    return call(server, dmoe::moe::backward_method, request);
  }
  dmoe::moe::expert_info info(const dmoe::endpoint& server, const std::string& uid) {
    const dmoe::byte_buffer request = dmoe::moe::encode_info_request(uid);
    return dmoe::moe::decode_info(ctx_.run(client_.call(server, dmoe::moe::info_method, request)));
  }
  // Sends raw bytes (for malformed requests).
  dmoe::byte_buffer raw(const dmoe::endpoint& server, dmoe::net::rpc_method method, const dmoe::byte_buffer& bytes) {
    return ctx_.run(client_.call(server, method, bytes));
  }

  dmoe::io_context& context() noexcept { return ctx_; }
  dmoe::net::rpc_client& rpc() noexcept { return client_; }

 private:
  dmoe::tensor call(const dmoe::endpoint& server, dmoe::net::rpc_method method,
                    dmoe::moe::encoded_expert_request& request) {
    const dmoe::byte_buffer answer = ctx_.run(client_.call(server, method, request.pieces));
    return dmoe::moe::decode_expert_response(answer);
  }

  dmoe::io_context ctx_;
  dmoe::net::rpc_client client_;
};

inline dmoe::tensor random_batch(std::int64_t batch, std::int64_t hidden, std::uint64_t seed) {
  dmoe::random_engine gen(seed);
  return dmoe::tensor::normal(dmoe::shape{batch, hidden}, gen);
}

inline bool bit_equal(const dmoe::tensor& a, const dmoe::tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.bytes_data(), b.bytes_data(), a.nbytes()) == 0;
}

inline float max_abs_diff(const dmoe::tensor& a, const dmoe::tensor& b) {
  BOOST_REQUIRE(a.shape() == b.shape());
  float worst = 0;
  const auto x = a.span<float>();
  const auto y = b.span<float>();
  for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
  return worst;
}

// Blocks the compute thread until release() (so requests pile up in the pools deterministically).
struct compute_gate {
  std::promise<void> opened;
  std::shared_future<void> gate = opened.get_future().share();
  std::promise<void> entered;

  void hold(dmoe::server::runtime& rt) {
    std::future<void> in = entered.get_future();
    BOOST_REQUIRE(rt.post_exclusive([this, open = gate] {
      entered.set_value();
      open.wait();  // (its own copy: the gate may be gone once it opens)
    }));
    in.wait();
  }
  void release() {
    if (!released) opened.set_value();
    released = true;
  }
  // Released on the way out too, so that a failed check never leaves the compute thread held.
  ~compute_gate() { release(); }

  bool released = false;
};

// A small ffn server's options: no DHT, no checkpoints.
inline dmoe::server::server_options small_options(std::vector<std::string> uids, std::int64_t hidden = 16) {
  dmoe::server::server_options o;
  o.experts = std::move(uids);
  o.expert.kind = "ffn";
  o.expert.hidden = hidden;
  o.expert.optimizer.learning_rate = 1e-2f;
  o.seed = 7;
  o.runtime.max_batch_size = 64;
  return o;
}

}  // namespace dmoe_test
