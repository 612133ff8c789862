// moe::remote_expert: the client side of one expert hosted on a server (info, forward, backward over the RPC layer).
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/moe/expert_uid.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/nn/expert.hpp>
#include <dmoe/tensor/tensor.hpp>
#include <dmoe/tensor/wire.hpp>

#include <optional>
#include <stop_token>
#include <string>
#include <utility>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

// How tensors cross the wire in expert calls.
struct expert_call_options {
  wire_codec codec = wire_codec::none;           // of the tensors sent (f32 only for the lossy codecs)
  wire_codec response_codec = wire_codec::none;  // asked of the server for its answer
  wire_limits limits{};                          // checks on the answer (element count, finite values)
};

// One forward (grad_outputs == nullptr) or backward call of expert `uid` at `server`, its answer checked: a tensor
// of `expected` samples (its dtype and sample shape when `expected` is given) with as many rows as `inputs`.
// Errors: the rpc client's (timeout_error, unavailable_error, closed_error, remote_error, limit_error,
// cancelled_error), protocol_error for an answer that is malformed, not finite or of the wrong shape.
DMOE_DECL task<tensor> call_expert(net::rpc_client& client, const endpoint& server, const std::string& uid,
                                const tensor& inputs, const tensor* grad_outputs, const nn::tensor_schema* expected,
                                steady_time deadline, std::stop_token stop = {},
                                const expert_call_options& options = {});
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF task<tensor> call_expert(net::rpc_client& client, const endpoint& server, const std::string& uid,
                                const tensor& inputs, const tensor* grad_outputs, const nn::tensor_schema* expected,
                                steady_time deadline, std::stop_token stop,
                                const expert_call_options& options) {
  const encoded_expert_request request =
      encode_expert_request(uid, inputs, grad_outputs, options.codec, options.response_codec);
  const byte_buffer answer =
      co_await client.call(server, grad_outputs ? backward_method : forward_method,
                           std::span<const const_byte_span>(request.pieces), deadline, std::move(stop));
  const std::string_view what = grad_outputs ? "backward" : "forward";
  tensor out;
  try {
    out = decode_expert_response(answer, options.limits);
  } catch (const error& e) {
    throw protocol_error(dmoe::format("expert {} at {}: {} answer: {}", uid, server, what, e.what()));
  }
  if (out.rank() < 1 || out.dim(0) != inputs.dim(0))
    throw protocol_error(dmoe::format("expert {} at {}: {} answer is {} for {} rows", uid, server, what, out.shape(),
                                     inputs.dim(0)));
  if (expected) {
    try {
      expected->check("answer", out);
    } catch (const error& e) {
      throw protocol_error(dmoe::format("expert {} at {}: {} {}", uid, server, what, e.what()));
    }
  }
  co_return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// A stub for one remote expert. The stub holds a reference to the client, so it is used on the client's io_context
// thread and must not outlive it.
class remote_expert {
 public:
  // Throws invalid_argument_error for an invalid uid (see parse_expert_uid).
  DMOE_LAZY remote_expert(net::rpc_client& client, std::string uid, endpoint server, expert_call_options options = {})
      : client_(&client), uid_(std::move(uid)), server_(server), options_(options) {
    parse_expert_uid(uid_);
  }

  const std::string& uid() const noexcept { return uid_; }
  const endpoint& server() const noexcept { return server_; }

  // What the server says about the expert; fetched on the first call and cached (a failed fetch is not). Errors:
  // the rpc client's; protocol_error for a malformed answer or one about another uid.
  DMOE_DECL task<expert_info> info(steady_time deadline = no_deadline, std::stop_token stop = {});

  // inputs [batch] + input sample shape -> outputs [batch] + output sample shape (checked against the cached info
  // when there is one). Errors as call_expert.
  DMOE_DECL task<tensor> forward(const tensor& inputs, steady_time deadline = no_deadline, std::stop_token stop = {});

  // (inputs, d loss / d outputs) -> d loss / d inputs, [batch] + input sample shape; the server also steps the
  // expert's optimizer with the parameter gradients. Errors as call_expert.
  DMOE_DECL task<tensor> backward(const tensor& inputs, const tensor& grad_outputs, steady_time deadline = no_deadline,
                        std::stop_token stop = {});

 private:
  net::rpc_client* client_;
  std::string uid_;
  endpoint server_;
  expert_call_options options_;
  std::optional<expert_info> info_;
};

}  // namespace moe
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace moe {

DMOE_DEF auto remote_expert::info(steady_time deadline, std::stop_token stop) -> task<expert_info> {
  if (info_) co_return *info_;
  const byte_buffer request = encode_info_request(uid_);
  const byte_buffer answer = co_await client_->call(server_, info_method, request, deadline, std::move(stop));
  expert_info got;
  try {
    got = decode_info(answer);
  } catch (const error& e) {
    throw protocol_error(dmoe::format("expert {} at {}: info answer: {}", uid_, server_, e.what()));
  }
  if (got.uid != uid_)
    throw protocol_error(dmoe::format("expert {} at {}: info answer is about '{}'", uid_, server_, got.uid));
  info_ = std::move(got);
  co_return *info_;
}

DMOE_DEF auto remote_expert::forward(const tensor& inputs, steady_time deadline, std::stop_token stop)
    -> task<tensor> {
  co_return co_await call_expert(*client_, server_, uid_, inputs, nullptr, info_ ? &info_->schema.output : nullptr,
                                 deadline, std::move(stop), options_);
}

DMOE_DEF auto remote_expert::backward(const tensor& inputs, const tensor& grad_outputs, steady_time deadline,
                      std::stop_token stop) -> task<tensor> {
  co_return co_await call_expert(*client_, server_, uid_, inputs, &grad_outputs,
                                 info_ ? &info_->schema.input : nullptr, deadline, std::move(stop), options_);
}

}  // namespace moe
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
