// The expert protocol: the RPC methods a server answers for its experts (`info`, `forward`, `backward`) and their
// messages. Written by trainers (moe/remote_expert) and read by servers (server/server.hpp), so it lives here.
//
// Messages (little-endian; strings are u32 length + bytes; tensors are tensor/wire.hpp's form):
//   info request      u8 version, string uid
//   info response     u8 version, string uid, string kind, schema input, schema output, i64 max_batch_size,
//                     i64 parameter count        (schema: u8 dtype, u8 rank, i64 dims[rank], the batch dim left out)
//   forward request   u8 version, string uid, u8 response codec, tensor inputs [batch, ...]
//   backward request  u8 version, string uid, u8 response codec, tensor inputs, tensor grad_outputs
//   forward response  tensor outputs [batch, ...]; backward response: tensor grad_inputs
// The response codec is the wire codec (tensor/wire.hpp) the caller wants the answer in; requests carry their
// tensors in whatever codec the caller chose. Every length is checked before use (protocol_error).
#pragma once

#include <dmoe/core/binary_reader.hpp>
#include <dmoe/core/binary_writer.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/moe/expert_uid.hpp>
#include <dmoe/net/rpc_method.hpp>
#include <dmoe/nn/expert.hpp>
#include <dmoe/tensor/wire.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

inline constexpr std::uint8_t expert_protocol_version = 1;

inline constexpr net::rpc_method info_method{"dmoe.expert.info"};
inline constexpr net::rpc_method forward_method{"dmoe.expert.forward"};
inline constexpr net::rpc_method backward_method{"dmoe.expert.backward"};

enum class expert_direction : std::uint8_t { forward = 0, backward = 1 };

constexpr std::string_view to_string(expert_direction d) noexcept {
  return d == expert_direction::forward ? "forward" : "backward";
}

// What `info` answers.
struct expert_info {
  std::string uid;
  std::string kind;
  nn::expert_schema schema;
  std::int64_t max_batch_size = 0;
  std::int64_t parameter_count = 0;
};

// A forward or backward request as the server reads it.
struct expert_request {
  std::string uid;
  wire_codec response_codec = wire_codec::none;
  tensor inputs;
  tensor grad_outputs;  // backward only
};

// A request ready to send: `pieces` (for rpc_client::call) point into `head` and the tensors it holds.
struct encoded_expert_request {
  byte_buffer head;
  std::vector<byte_buffer> parts;  // compressed tensors (uncompressed ones are sent from their own storage)
  std::vector<tensor> kept;        // tensors sent without a copy, kept alive with the request
  std::vector<const_byte_span> pieces;
};

namespace detail {

DMOE_LAZY inline void write_schema(binary_writer& w, const nn::tensor_schema& s) {
  w.write<std::uint8_t>(static_cast<std::uint8_t>(s.type));
  w.write<std::uint8_t>(static_cast<std::uint8_t>(s.sample_shape.rank()));
  for (std::int64_t d : s.sample_shape.dims()) w.write<std::int64_t>(d);
}

DMOE_DECL nn::tensor_schema read_schema(binary_reader& r);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF nn::tensor_schema read_schema(binary_reader& r) {
  nn::tensor_schema s;
  const auto code = r.read<std::uint8_t>();
  try {
    s.type = dtype_from_code(code);
  } catch (const error&) {
    throw protocol_error(dmoe::format("expert info: unknown dtype code {}", code));
  }
  const auto rank = r.read<std::uint8_t>();
  if (rank >= shape::max_rank) throw protocol_error(dmoe::format("expert info: schema of rank {} is too large", rank));
  std::vector<std::int64_t> dims(rank);
  for (auto& d : dims) {
    d = r.read<std::int64_t>();
    if (d < 0 || d > (std::int64_t{1} << 40)) throw protocol_error(dmoe::format("expert info: schema dimension {}", d));
  }
  s.sample_shape = shape(dims);
  return s;
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL std::string read_uid(binary_reader& r);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::string read_uid(binary_reader& r) {
  std::string uid = r.read_string(max_uid_length);
  try {
    parse_expert_uid(uid);
  } catch (const error& e) {
    throw protocol_error(e.what());
  }
  return uid;
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL void check_version(binary_reader& r, std::string_view what);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void check_version(binary_reader& r, std::string_view what) {
  const auto version = r.read<std::uint8_t>();
  if (version != expert_protocol_version)
    throw protocol_error(dmoe::format("{}: expert protocol version {} (this side speaks {})", what, version,
                                     expert_protocol_version));
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL wire_codec read_codec(binary_reader& r);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF wire_codec read_codec(binary_reader& r) {
  const auto code = r.read<std::uint8_t>();
  if (code > static_cast<std::uint8_t>(wire_codec::q8_blockwise))
    throw protocol_error(dmoe::format("expert request: unknown response codec {}", code));
  return static_cast<wire_codec>(code);
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL void add_tensor(encoded_expert_request& out, const tensor& t, wire_codec codec);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF void add_tensor(encoded_expert_request& out, const tensor& t, wire_codec codec) {
  if (codec == wire_codec::none) {
    tensor_wire_view view = wire_view(t);
    out.parts.emplace_back(view.header.span().begin(), view.header.span().end());
    out.kept.push_back(t);
    out.pieces.push_back(out.parts.back());
    out.pieces.push_back(view.data);
  } else {
    out.parts.push_back(encode_tensor(t, codec));
    out.pieces.push_back(out.parts.back());
  }
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace detail

DMOE_DECL byte_buffer encode_info_request(std::string_view uid);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode_info_request(std::string_view uid) {
  byte_buffer out;
  out.reserve(1 + 4 + uid.size());  // (exact: g++ 12 warns falsely about growing from a smaller buffer)
  binary_writer w(out);
  w.write<std::uint8_t>(expert_protocol_version);
  w.write_string(uid);
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL std::string decode_info_request(const_byte_span bytes);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF std::string decode_info_request(const_byte_span bytes) {
  binary_reader r(bytes, "expert info request");
  detail::check_version(r, "expert info request");
  std::string uid = detail::read_uid(r);
  r.expect_end();
  return uid;
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL byte_buffer encode_info(const expert_info& info);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer encode_info(const expert_info& info) {
  byte_buffer out;
  out.reserve(64 + info.uid.size() + info.kind.size() + 16 * shape::max_rank);
  binary_writer w(out);
  w.write<std::uint8_t>(expert_protocol_version);
  w.write_string(info.uid);
  w.write_string(info.kind);
  detail::write_schema(w, info.schema.input);
  detail::write_schema(w, info.schema.output);
  w.write<std::int64_t>(info.max_batch_size);
  w.write<std::int64_t>(info.parameter_count);
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

DMOE_DECL expert_info decode_info(const_byte_span bytes);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF expert_info decode_info(const_byte_span bytes) {
  binary_reader r(bytes, "expert info");
  detail::check_version(r, "expert info");
  expert_info info;
  info.uid = detail::read_uid(r);
  info.kind = r.read_string(64);
  info.schema.input = detail::read_schema(r);
  info.schema.output = detail::read_schema(r);
  info.max_batch_size = r.read<std::int64_t>();
  info.parameter_count = r.read<std::int64_t>();
  r.expect_end();
  return info;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// A forward request (no grad_outputs) or a backward request. The tensors are sent as they are with codec none
// (kept alive by the result), else compressed with `codec` (f32 tensors only).
DMOE_DECL encoded_expert_request encode_expert_request(std::string_view uid, const tensor& inputs,
                                                    const tensor* grad_outputs, wire_codec codec = wire_codec::none,
                                                    wire_codec response_codec = wire_codec::none);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF encoded_expert_request encode_expert_request(std::string_view uid, const tensor& inputs,
                                                    const tensor* grad_outputs, wire_codec codec,
                                                    wire_codec response_codec) {
  encoded_expert_request out;
  out.head.reserve(1 + 4 + uid.size() + 1);
  binary_writer w(out.head);
  w.write<std::uint8_t>(expert_protocol_version);
  w.write_string(uid);
  w.write<std::uint8_t>(static_cast<std::uint8_t>(response_codec));
  out.parts.reserve(2);
  detail::add_tensor(out, inputs, codec);
  if (grad_outputs) detail::add_tensor(out, *grad_outputs, codec);
  out.pieces.insert(out.pieces.begin(), const_byte_span(out.head));
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// Reads a forward or backward request; tensors are checked against `limits` (finite values, element counts).
// Throws protocol_error naming the problem (the uid, a codec, a tensor field, a non-finite element, trailing bytes).
DMOE_DECL expert_request decode_expert_request(const_byte_span bytes, expert_direction direction,
                                            const wire_limits& limits = {});
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF expert_request decode_expert_request(const_byte_span bytes, expert_direction direction,
                                            const wire_limits& limits) {
  const std::string_view what = direction == expert_direction::forward ? "expert forward request"
                                                                       : "expert backward request";
  binary_reader r(bytes, what);
  detail::check_version(r, what);
  expert_request req;
  req.uid = detail::read_uid(r);
  req.response_codec = detail::read_codec(r);
  try {
    req.inputs = decode_tensor(r, limits);
    if (direction == expert_direction::backward) req.grad_outputs = decode_tensor(r, limits);
  } catch (const error& e) {
    throw protocol_error(dmoe::format("{} for '{}': {}", what, req.uid, e.what()));
  }
  r.expect_end();
  return req;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The answer to a forward or backward request: one tensor.
DMOE_LAZY inline tensor decode_expert_response(const_byte_span bytes, const wire_limits& limits = {}) {
  return decode_tensor(bytes, limits);
}

}  // namespace moe
DMOE_END_NAMESPACE
