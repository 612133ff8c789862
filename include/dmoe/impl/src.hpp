// dmoe's heavy definitions, compiled once: with DMOE_SEPARATE_COMPILATION defined in every translation unit of a
// program, exactly one of them includes this header (the CMake target dmoe::compiled is such a translation unit).
#pragma once

#if !defined(DMOE_SEPARATE_COMPILATION)
#error "<dmoe/impl/src.hpp> is for programs built with DMOE_SEPARATE_COMPILATION defined"
#endif
#if defined(DMOE_HEAVY_DEFINITIONS)
#error "<dmoe/impl/src.hpp> must be the first dmoe header of its translation unit"
#endif

#define DMOE_COMPILING_SOURCE 1
// g++ 12 warns that a coroutine with external linkage keeps a lambda or local type (no linkage) in its frame; the
// frame never leaves this translation unit, so the warning is a false positive (silenced for dmoe's headers only).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsubobject-linkage"
#endif
#include <dmoe/dmoe.hpp>
// Every header with heavy definitions, whether or not an umbrella names it.
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/tcp_listener.hpp>
#include <dmoe/async/tcp_socket.hpp>
#include <dmoe/async/udp_socket.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/async/when_any.hpp>
#include <dmoe/async/with_timeout.hpp>
#include <dmoe/core/hash.hpp>
#include <dmoe/data/idx.hpp>
#include <dmoe/dht/lookup.hpp>
#include <dmoe/dht/messages.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/dht/node_id.hpp>
#include <dmoe/dht/node_thread.hpp>
#include <dmoe/dht/peer_bans.hpp>
#include <dmoe/dht/protocol.hpp>
#include <dmoe/dht/record.hpp>
#include <dmoe/dht/record_validator.hpp>
#include <dmoe/dht/republisher.hpp>
#include <dmoe/dht/routing_table.hpp>
#include <dmoe/dht/storage.hpp>
#include <dmoe/moe/async_module.hpp>
#include <dmoe/moe/beam_search.hpp>
#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/moe/expert_records.hpp>
#include <dmoe/moe/expert_uid.hpp>
#include <dmoe/moe/gating.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/moe/network_thread.hpp>
#include <dmoe/moe/remote_expert.hpp>
#include <dmoe/moe/remote_mixture_of_experts.hpp>
#include <dmoe/net/datagram_endpoint.hpp>
#include <dmoe/net/datagram_message.hpp>
#include <dmoe/net/datagram_reassembler.hpp>
#include <dmoe/net/detail/frame_pieces.hpp>
#include <dmoe/net/detail/send_now.hpp>
#include <dmoe/net/fault.hpp>
#include <dmoe/net/frame.hpp>
#include <dmoe/net/rpc_client.hpp>
#include <dmoe/net/rpc_server.hpp>
#include <dmoe/net/size_text.hpp>
#include <dmoe/nn/checkpoint.hpp>
#include <dmoe/ops/cpu/activation.hpp>
#include <dmoe/ops/cpu/attention.hpp>
#include <dmoe/ops/cpu/cross_entropy.hpp>
#include <dmoe/ops/cpu/dropout.hpp>
#include <dmoe/ops/cpu/elementwise.hpp>
#include <dmoe/ops/cpu/embedding.hpp>
#include <dmoe/ops/cpu/gather.hpp>
#include <dmoe/ops/cpu/gemm.hpp>
#include <dmoe/ops/cpu/layer_norm.hpp>
#include <dmoe/ops/cpu/mse.hpp>
#include <dmoe/ops/cpu/optimizer.hpp>
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/softmax.hpp>
#include <dmoe/ops/cpu/topk.hpp>
#include <dmoe/server/background_server.hpp>
#include <dmoe/server/checkpoint_saver.hpp>
#include <dmoe/server/declarer.hpp>
#include <dmoe/server/expert_backend.hpp>
#include <dmoe/server/runtime.hpp>
#include <dmoe/server/server.hpp>
#include <dmoe/server/task_pool.hpp>
#include <dmoe/tensor/half.hpp>
#include <dmoe/tensor/shape.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
