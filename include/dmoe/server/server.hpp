// server::server: hosts experts for many trainers. One network thread (the io_context it is made on) holds the RPC
// server and the DHT node; the runtime's compute thread batches and computes. The RPC handlers (moe/expert_protocol:
// info, forward, backward) decode and validate a request, queue it and wait for its batch without blocking the
// network thread. Declarations go to the DHT every update_period, checkpoints to disk every checkpoint_period and on
// shutdown.
#pragma once

#include <dmoe/async/io_context.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/with_stop_token.hpp>
#include <dmoe/async/async_event.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/log.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/moe/expert_uid.hpp>
#include <dmoe/net/rpc_server.hpp>
#include <dmoe/server/checkpoint_saver.hpp>
#include <dmoe/server/declarer.hpp>
#include <dmoe/server/expert_backend.hpp>
#include <dmoe/server/runtime.hpp>
#include <dmoe/tensor/device.hpp>
#include <dmoe/tensor/wire.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace server {

struct server_options {
  std::vector<std::string> experts;  // uids (see moe::expand_expert_pattern for patterns)
  expert_options expert;             // kind, hidden size, optimizer
  std::uint64_t seed = 0;            // initial parameters derive from (seed, uid)
  // Where experts compute: cpu, cuda or cuda:N (a program that links dmoe::cuda; otherwise device_error). Requests
  // and answers stay host tensors; the compute thread copies them. Sets runtime.device.
  std::string device = "cpu";
  runtime_options runtime;           // max_batch_size, min_batch_size, batching window

  endpoint listen = endpoint::loopback_v4(0);  // the RPC address (port 0: any free port)
  // The RPC address declared in the DHT (port 0: the bound port); unset: `listen` as bound (which must then be a
  // specific address).
  std::optional<endpoint> announce;
  net::rpc_server_options rpc;
  // The codec of answers whose caller asked for none (uncompressed): `none` honours the caller, a compressed codec
  // saves the server's upload (f32 outputs only). A caller that asks for a codec always gets it.
  wire_codec response_codec = wire_codec::none;
  std::chrono::milliseconds shutdown_grace{10'000};  // for requests in flight when shutting down

  // The DHT: unset runs no DHT node (no declarations).
  std::optional<dht::node_options> dht;
  std::vector<endpoint> initial_peers;
  std::chrono::milliseconds bootstrap_timeout{10'000};
  declarer_options declarations;     // update_period (default 30 s), expiration (default 2 x update_period)
  std::filesystem::path key_file;    // the ed25519 identity; empty: a new key for this run only

  std::filesystem::path checkpoint_dir;               // empty: no checkpoints
  std::chrono::milliseconds checkpoint_period{600'000};
  std::size_t keep_checkpoints = 3;

  std::chrono::milliseconds stats_period{0};          // > 0: one statistics line in the log each period
};

// A snapshot of what the server did, for logs and tests.
struct server_stats {
  expert_stats experts;
  std::uint64_t rpc_requests = 0, rpc_errors = 0;
  std::uint64_t declarations = 0;  // declaration rounds done
  std::uint64_t checkpoints = 0;   // checkpoint rounds written
};

class server {
 public:
  // Makes the experts (loading each one's newest valid checkpoint), binds the RPC server and the DHT node on `ctx`.
  // Nothing is served until run(). A CUDA `device` becomes the calling thread's device (use_device). Throws
  // invalid_argument_error (options, uids), device_error (a device this program cannot use, a CUDA failure),
  // system_error (a bind, the key file), corrupt_error (the key file).
  DMOE_DECL server(io_context& ctx, server_options options);
  server(const server&) = delete;
  server& operator=(const server&) = delete;
  DMOE_INLINE ~server();

  // Serves until request_shutdown() or a stop request on the awaiting coroutine: the runtime's thread, the RPC
  // server, the DHT bootstrap and declarations, the checkpoint and statistics loops. Then finishes requests in
  // flight (up to shutdown_grace), stops the runtime, writes a final checkpoint and shuts the DHT node down. Call
  // once, on the context's thread; `on_started` is called once it serves.
  DMOE_DECL task<void> run(std::function<void()> on_started = {});

  // Ends run() (on the context's thread). Idempotent.
  DMOE_LAZY void request_shutdown() { shutdown_requested_.set(); }
  // Resumes once run() serves.
  DMOE_DECL task<void> wait_started();

  const endpoint& rpc_endpoint() const noexcept { return rpc_->local_endpoint(); }
  // The address declared in the DHT.
  const endpoint& announce_endpoint() const noexcept { return announce_; }
  std::optional<endpoint> dht_endpoint() const {
    return node_ ? std::optional<endpoint>(node_->local_endpoint()) : std::nullopt;
  }
  dht::node* dht_node() noexcept { return node_ ? &*node_ : nullptr; }
  std::optional<dht::ed25519_public_key> public_key() const {
    return key_ ? std::optional(key_->public_key()) : std::nullopt;
  }
  // Thread-safe: counters, and running work on the compute thread between batches.
  runtime& compute() noexcept { return *runtime_; }
  const std::vector<std::unique_ptr<expert_backend>>& experts() const noexcept { return backends_; }
  // The checkpoint each expert was loaded from at start.
  DMOE_DECL const std::map<std::string, std::filesystem::path>& loaded_checkpoints() const noexcept;
  // Declaration rounds done (thread-safe).
  DMOE_LAZY std::uint64_t declaration_rounds() const {
    std::lock_guard lock(declared_mutex_);
    return declaration_rounds_;
  }
  // Blocks (another thread than the server's) until `rounds` declaration rounds are done or `timeout` passes;
  // returns whether they are.
  DMOE_LAZY bool wait_for_declarations(std::uint64_t rounds, std::chrono::milliseconds timeout) const {
    std::unique_lock lock(declared_mutex_);
    return declared_.wait_for(lock, timeout, [&] { return declaration_rounds_ >= rounds; });
  }
  // Counters (the RPC ones read on the context's thread only).
  DMOE_DECL server_stats stats() const;

 private:
  DMOE_DECL std::int64_t max_sample_elements() const;

  DMOE_DECL task<net::rpc_response> handle_info(net::rpc_request& req);

  // Withdraws a request when its handler ends before the outcome arrived (the caller gave up, or its connection
  // or the server stopped): its tensors leave the queue with it, so requests nobody waits for hold no memory that
  // the RPC server no longer counts.
  struct abandon_on_exit;

  DMOE_DECL task<net::rpc_response> handle_compute(net::rpc_request& req, moe::expert_direction direction);

  DMOE_DECL static net::rpc_response encode_response(tensor result, wire_codec codec);

  DMOE_DECL task<void> declare();

  // Every checkpoint_period: a checkpoint round on the compute thread, between batches (never blocks this thread).
  DMOE_DECL task<void> checkpoint_loop();

  DMOE_DECL void save_checkpoints_now();

  DMOE_DECL task<void> stats_loop();

  io_context& ctx_;
  server_options options_;
  std::vector<std::unique_ptr<expert_backend>> backends_;
  dmoe::detail::boxed<std::map<std::string, expert_backend*, std::less<>>> by_uid_;
  dmoe::detail::boxed<std::map<std::string, std::filesystem::path>> loaded_;
  std::optional<checkpoint_saver> saver_;
  std::optional<runtime> runtime_;
  wire_limits limits_;
  std::optional<net::rpc_server> rpc_;
  endpoint announce_;
  std::optional<dht::ed25519_keypair> key_;
  std::optional<dht::node> node_;
  mutable std::mutex declared_mutex_;
  mutable std::condition_variable declared_;
  std::uint64_t declaration_rounds_ = 0;
  std::atomic<std::uint64_t> checkpoint_rounds_{0};
  async_event shutdown_requested_;
  async_event started_;
};

}  // namespace server
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace server {

DMOE_INLINE server::~server() {
  if (runtime_) runtime_->stop();
}

// Withdraws a request when its handler ends before the outcome arrived (the caller gave up, or its connection
// or the server stopped): its tensors leave the queue with it, so requests nobody waits for hold no memory that
// the RPC server no longer counts.
struct server::abandon_on_exit {
  runtime& rt;
  std::string_view uid;
  moe::expert_direction direction;
  task_completion* completion;
  bool done = false;
  ~abandon_on_exit() {
    if (!done) rt.withdraw(uid, direction, *completion);
  }
};

DMOE_DEF server::server(io_context& ctx, server_options options) : ctx_(ctx), options_(std::move(options)) {
  if (options_.experts.empty()) throw invalid_argument_error("server: no experts to host");
  options_.runtime.device = parse_device(options_.device);
  validate(options_.runtime);  // (and whether the device can be used)
  // The experts' parameters land on the device current while they are made: it becomes this thread's device (the
  // I/O thread's, for a background_server); the compute thread and run() use it too.
  use_device(options_.runtime.device);
  if (options_.checkpoint_period.count() <= 0) throw invalid_argument_error("checkpoint_period must be positive");
  if (!options_.checkpoint_dir.empty()) saver_.emplace(options_.checkpoint_dir, options_.keep_checkpoints);
  for (const auto& uid : options_.experts) {
    moe::parse_expert_uid(uid);
    backends_.push_back(make_expert_backend(uid, options_.expert, options_.seed, options_.runtime.device));
    if (saver_) {
      if (auto loaded = saver_->load_newest(*backends_.back())) {
        (*loaded_)[uid] = *loaded;
        log_info("expert {}: loaded checkpoint {}", uid, loaded->string());
      }
    }
  }
  std::vector<expert_backend*> raw;
  for (auto& b : backends_) {
    raw.push_back(b.get());
    (*by_uid_)[b->uid()] = b.get();
  }
  runtime_.emplace(std::move(raw), options_.runtime);
  // Twice a full batch: a larger request is refused while decoding, a smaller one that is still over
  // max_batch_size reaches the runtime's check (which names max_batch_size).
  // (Saturating: max_batch_size may be as large as an int64 holds.)
  const std::int64_t per_sample = max_sample_elements();
  limits_.max_elements = options_.runtime.max_batch_size > std::numeric_limits<std::int64_t>::max() / 2 / per_sample
                             ? std::numeric_limits<std::int64_t>::max()
                             : 2 * options_.runtime.max_batch_size * per_sample;
  limits_.require_finite = true;
  rpc_.emplace(ctx_, options_.listen, options_.rpc);
  announce_ = options_.announce.value_or(rpc_->local_endpoint());
  if (announce_.port() == 0) announce_ = announce_.with_port(rpc_->local_endpoint().port());
  if (options_.dht) {
    if (!announce_.is_specified() || announce_.address() == "0.0.0.0" || announce_.address() == "::")
      throw invalid_argument_error(dmoe::format(
          "server: the RPC address {} cannot be declared in the DHT; set `announce` to an address trainers reach",
          announce_));
    key_ = options_.key_file.empty() ? dht::ed25519_keypair::generate() : load_or_create_key(options_.key_file);
    node_.emplace(ctx_, *options_.dht);
  }
  rpc_->add_handler(moe::info_method, [this](net::rpc_request& r) { return handle_info(r); });
  rpc_->add_handler(moe::forward_method,
                    [this](net::rpc_request& r) { return handle_compute(r, moe::expert_direction::forward); });
  rpc_->add_handler(moe::backward_method,
                    [this](net::rpc_request& r) { return handle_compute(r, moe::expert_direction::backward); });
}

DMOE_DEF auto server::run(std::function<void()> on_started) -> task<void> {
  use_device(options_.runtime.device);  // (the final checkpoint copies the experts' parameters on this thread)
  runtime_->start();
  task_group serving(ctx_);
  task_group background(ctx_);
  serving.spawn(rpc_->serve());
  if (node_) background.spawn(declare());
  if (saver_) background.spawn(checkpoint_loop());
  if (options_.stats_period.count() > 0) background.spawn(stats_loop());
  log_info("server: {} {} experts ({}) serving on {}{}", backends_.size(), options_.expert.kind,
           backends_.size() == 1 ? backends_[0]->uid() : backends_[0]->uid() + " ... " + backends_.back()->uid(),
           rpc_->local_endpoint(), node_ ? dmoe::format(", DHT on {}", node_->local_endpoint()) : std::string());
  started_.set();
  if (on_started) on_started();
  try {
    co_await shutdown_requested_.wait();
  } catch (const cancelled_error&) {
    // A stop request on run() shuts down too (without the grace: what is in flight is cancelled), and never
    // leaves the task groups running.
  }
  background.request_stop();
  try {
    co_await background.join();
  } catch (const cancelled_error&) {
    // the loops end this way
  } catch (const std::exception& e) {
    log_warn("server: a background task ended with: {}", e.what());
  }
  rpc_->shutdown(options_.shutdown_grace);
  try {
    co_await serving.join();
  } catch (const std::exception& e) {
    log_warn("server: the RPC server ended with: {}", e.what());
  }
  runtime_->stop();
  if (saver_) save_checkpoints_now();
  if (node_) co_await node_->shutdown();
  log_info("server on {} stopped", rpc_->local_endpoint());
}

DMOE_DEF auto server::wait_started() -> task<void> { co_await started_.wait(); }

DMOE_DEF auto server::stats() const -> server_stats {
  server_stats s;
  s.experts = runtime_->total_stats();
  s.rpc_requests = rpc_->stats().requests;
  s.rpc_errors = rpc_->stats().handler_errors;
  s.declarations = declaration_rounds();
  s.checkpoints = checkpoint_rounds_.load();
  return s;
}

DMOE_DEF auto server::max_sample_elements() const -> std::int64_t {
  std::int64_t most = 1;
  for (const auto& b : backends_)
    most = std::max({most, b->schema().input.sample_shape.numel(), b->schema().output.sample_shape.numel()});
  return most;
}

DMOE_DEF auto server::handle_info(net::rpc_request& req) -> task<net::rpc_response> {
  const std::string uid = moe::decode_info_request(req.payload);
  const auto found = by_uid_->find(uid);
  if (found == by_uid_->end()) throw invalid_argument_error(dmoe::format("this server has no expert '{}'", uid));
  moe::expert_info info{uid, std::string(found->second->kind()), found->second->schema(),
                        options_.runtime.max_batch_size, found->second->parameter_count()};
  co_return net::rpc_response(moe::encode_info(info));
}

DMOE_DEF auto server::handle_compute(net::rpc_request& req, moe::expert_direction direction)
    -> task<net::rpc_response> {
  moe::expert_request r = moe::decode_expert_request(req.payload, direction, limits_);
  req.payload = byte_buffer();
  auto completion = runtime_->submit(r.uid, direction, std::move(r.inputs), std::move(r.grad_outputs));
  abandon_on_exit guard{*runtime_, r.uid, direction, completion.get()};
  std::optional<task_outcome> outcome = co_await completion->done.receive();
  guard.done = true;
  if (!outcome) throw closed_error("the server is shutting down");
  if (outcome->error) std::rethrow_exception(outcome->error);
  const wire_codec codec = r.response_codec != wire_codec::none ? r.response_codec : options_.response_codec;
  co_return encode_response(std::move(outcome->result), codec);
}

DMOE_DEF auto server::encode_response(tensor result, wire_codec codec) -> net::rpc_response {
  if (codec != wire_codec::none) return net::rpc_response(encode_tensor(result, codec));
  const tensor_wire_view view = wire_view(result);
  net::rpc_response response(byte_buffer(view.header.span().begin(), view.header.span().end()));
  response.views.push_back(view.data);
  response.owner = std::make_shared<tensor>(std::move(result));
  return response;
}

DMOE_DEF auto server::declare() -> task<void> {
  const auto joined = co_await node_->bootstrap(options_.initial_peers, deadline_after(options_.bootstrap_timeout));
  if (!joined.joined)
    log_warn("server: the DHT could not be joined through {} initial peers (none answered); declaring anyway",
             options_.initial_peers.size());
  std::vector<std::string> uids;
  for (const auto& b : backends_) uids.push_back(b->uid());
  declarer d(*node_, std::move(uids), announce_, *key_, options_.declarations);
  d.on_round([this](std::size_t) {
    {
      std::lock_guard lock(declared_mutex_);
      ++declaration_rounds_;
    }
    declared_.notify_all();
  });
  co_await d.run();
}

DMOE_DEF auto server::checkpoint_loop() -> task<void> {
  while (true) {
    co_await sleep_for(options_.checkpoint_period);
    auto* self = this;
    runtime_->post_exclusive([self] { self->save_checkpoints_now(); });
  }
}

DMOE_DEF auto server::save_checkpoints_now() -> void {
  std::size_t saved = 0;
  for (const auto& b : backends_) {
    try {
      saver_->save(*b);
      ++saved;
    } catch (const error& e) {
      log_error("expert {}: checkpoint failed: {}", b->uid(), e.what());
    }
  }
  checkpoint_rounds_.fetch_add(1);
  log_info("server: checkpoint of {} of {} experts written to {}", saved, backends_.size(),
           saver_->directory().string());
}

DMOE_DEF auto server::stats_loop() -> task<void> {
  expert_stats last = runtime_->total_stats();
  steady_time last_time = std::chrono::steady_clock::now();
  while (true) {
    co_await sleep_for(options_.stats_period);
    const expert_stats now = runtime_->total_stats();
    const steady_time t = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(t - last_time).count();
    const auto requests = (now.forward_requests + now.backward_requests) - (last.forward_requests + last.backward_requests);
    const auto samples = (now.forward_samples + now.backward_samples) - (last.forward_samples + last.backward_samples);
    const auto batches = (now.forward_batches + now.backward_batches) - (last.forward_batches + last.backward_batches);
    const double wait_ms = requests ? static_cast<double>(now.queue_wait_ns - last.queue_wait_ns) / 1e6 /
                                          static_cast<double>(requests)
                                    : 0.0;
    log_info("server stats: {:.1f} requests/s, {:.1f} samples/s, mean batch {:.1f}, queue wait {:.2f} ms, "
             "{} updates, {} failed batches",
             static_cast<double>(requests) / seconds, static_cast<double>(samples) / seconds,
             batches ? static_cast<double>(samples) / static_cast<double>(batches) : 0.0, wait_ms, now.updates,
             now.failed_batches);
    last = now;
    last_time = t;
  }
}

DMOE_DEF const std::map<std::string, std::filesystem::path>& server::loaded_checkpoints() const noexcept {
  return *loaded_;
}

}  // namespace server
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
