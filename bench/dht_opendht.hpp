// OpenDHT's side of dmoe_bench_dht: DhtRunners in one process, each given its own datagram socket
// (DhtRunner::Context::sock) and run unthreaded, all driven by one epoll thread that reads their sockets and calls
// loop() when a packet came or a runner's next wake-up is due. (Its default runner starts a receive thread per node
// that uses select(), which aborts once descriptors reach 1024: about 340 nodes in one process.)
// Every runner listens on 127.0.0.1, each on its own port: OpenDHT replaces a loopback address in a find answer
// with the answering node's own address (NetworkEngine::deserializeNodes), so a swarm spread over 127.x.y.z learns
// wrong addresses. On one address its per-IP request limit would count the whole swarm as one peer, so that limit
// is lifted (max_peer_req_per_sec = -1); the per-node limit stays at its default.
// OpenDHT has no subkeys: each storer puts a value with its own id under the key, and a key holds many values by
// id, so a get returns them all; it succeeds when every value stored in its round is among them.
#pragma once

#include "dht_plan.hpp"

#include <opendht/dhtrunner.h>
#include <opendht/log.h>
#include <opendht/network_utils.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace dmoe_bench {

// One runner's UDP socket, non-blocking, read by the driver's epoll thread.
class opendht_socket final : public dht::net::DatagramSocket {
 public:
  explicit opendht_socket(const std::string& address) {
    fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error(fmt::format("socket: {}", std::strerror(errno)));
    sockaddr_in local{};
    local.sin_family = AF_INET;
    if (::inet_pton(AF_INET, address.c_str(), &local.sin_addr) != 1)
      throw std::runtime_error(fmt::format("not an IPv4 address: {}", address));
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&local), sizeof local) != 0) {
      const int e = errno;
      ::close(fd_);
      throw std::runtime_error(fmt::format("bind {}: {}", address, std::strerror(e)));
    }
    sockaddr_storage bound{};
    socklen_t length = sizeof bound;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&bound), &length);
    bound_ = dht::SockAddr(bound, length);
  }
  ~opendht_socket() override {
    if (fd_ >= 0) ::close(fd_);
  }

  int sendTo(const dht::SockAddr& to, const std::uint8_t* data, std::size_t size, bool) override {
    if (!to) return EFAULT;
    if (::sendto(fd_, data, size, MSG_NOSIGNAL, to.get(), to.getLength()) < 0) return errno;
    return 0;
  }
  bool hasIPv4() const override { return true; }
  bool hasIPv6() const override { return false; }
  const dht::SockAddr& getBoundRef(sa_family_t family = AF_UNSPEC) const override {
    return family == AF_INET6 ? none_ : bound_;
  }
  void stop() override {}

  // Hands every datagram waiting (up to a batch) to the runner; false when none was waiting.
  bool drain() {
    bool any = false;
    for (int i = 0; i < 64; ++i) {
      sockaddr_storage from{};
      socklen_t length = sizeof from;
      const ssize_t n = ::recvfrom(fd_, buffer_.data(), buffer_.size(), 0, reinterpret_cast<sockaddr*>(&from), &length);
      if (n < 0) break;
      dht::net::PacketList packets = getNewPacket();
      auto& packet = packets.front();
      packet.data.assign(buffer_.data(), buffer_.data() + n);
      packet.from = dht::SockAddr(from, length);
      packet.received = dht::clock::now();
      onReceived(std::move(packets));
      any = true;
    }
    return any;
  }
  int fd() const noexcept { return fd_; }

 private:
  int fd_ = -1;
  dht::SockAddr bound_, none_;
  static inline thread_local std::array<std::uint8_t, 65536> buffer_{};
};

// The one thread that runs every runner: epoll over their sockets, their wake-up times, and work posted to it.
class opendht_driver {
 public:
  explicit opendht_driver(std::size_t nodes) : slots_(nodes) {
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    wake_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_ < 0 || wake_ < 0) throw std::runtime_error(fmt::format("epoll/eventfd: {}", std::strerror(errno)));
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = wake_token;
    ::epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &e);
    thread_ = std::thread([this] { loop_forever(); });
  }
  ~opendht_driver() {
    post([this] { stopping_ = true; });
    thread_.join();
    ::close(epoll_);
    ::close(wake_);
  }

  void post(std::function<void()> work) {
    {
      std::lock_guard lock(mutex_);
      posted_.push_back(std::move(work));
    }
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(wake_, &one, sizeof one);
  }

  // Driver thread only.
  void attach(std::size_t i, dht::DhtRunner* runner, opendht_socket* socket) {
    slots_[i] = {runner, socket, dht::time_point::max()};
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = i;
    ::epoll_ctl(epoll_, EPOLL_CTL_ADD, socket->fd(), &e);
    run_runner(i);
  }
  void detach(std::size_t i) {
    slot& s = slots_[i];
    if (!s.runner) return;
    ::epoll_ctl(epoll_, EPOLL_CTL_DEL, s.socket->fd(), nullptr);
    s.runner->join();  // destroys the Dht and its socket
    s = {};
  }
  void run_runner(std::size_t i) {
    slot& s = slots_[i];
    if (!s.runner) return;
    const dht::time_point next = s.runner->loop();
    s.next = next == dht::time_point{} ? dht::time_point::max() : next;
    if (s.next != dht::time_point::max()) timers_.push({s.next, i});
  }

 private:
  static constexpr std::uint64_t wake_token = ~std::uint64_t{0};
  struct slot {
    dht::DhtRunner* runner = nullptr;
    opendht_socket* socket = nullptr;
    dht::time_point next = dht::time_point::max();
  };
  using timer = std::pair<dht::time_point, std::size_t>;

  void loop_forever() {
    std::vector<epoll_event> events(256);
    while (!stopping_) {
      int timeout_ms = -1;
      if (!timers_.empty()) {
        const auto wait = timers_.top().first - dht::clock::now();
        timeout_ms = static_cast<int>(std::clamp<long long>(
            std::chrono::ceil<std::chrono::milliseconds>(wait).count(), 0, 60'000));
      }
      const int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), timeout_ms);
      for (int k = 0; k < n; ++k) {
        const std::uint64_t token = events[static_cast<std::size_t>(k)].data.u64;
        if (token == wake_token) {
          std::uint64_t count = 0;
          [[maybe_unused]] const auto got = ::read(wake_, &count, sizeof count);
          std::vector<std::function<void()>> work;
          {
            std::lock_guard lock(mutex_);
            work.swap(posted_);
          }
          for (auto& w : work) w();
          continue;
        }
        slot& s = slots_[token];
        if (s.socket && s.socket->drain()) run_runner(token);
      }
      const auto now = dht::clock::now();
      while (!timers_.empty() && timers_.top().first <= now) {
        const auto [when, i] = timers_.top();
        timers_.pop();
        if (slots_[i].runner && slots_[i].next == when) run_runner(i);
      }
    }
  }

  std::vector<slot> slots_;
  std::priority_queue<timer, std::vector<timer>, std::greater<>> timers_;
  int epoll_ = -1;
  int wake_ = -1;
  std::mutex mutex_;
  std::vector<std::function<void()>> posted_;
  bool stopping_ = false;
  std::thread thread_;
};

// Counts callbacks arriving on the driver thread; the bench thread waits for them.
class opendht_latch {
 public:
  void reset(std::size_t expected) {
    std::lock_guard lock(mutex_);
    expected_ = expected;
    arrived_ = 0;
  }
  void arrive() {
    std::lock_guard lock(mutex_);
    ++arrived_;
    done_.notify_all();
  }
  // Ends the process (this side's child) when OpenDHT has not called back within `limit`: a hung run says so.
  void wait(std::chrono::seconds limit = std::chrono::seconds(300)) {
    std::unique_lock lock(mutex_);
    if (!done_.wait_for(lock, limit, [&] { return arrived_ >= expected_; })) {
      fmt::print(stderr, "opendht: {} of {} callbacks missing after {} s\n", expected_ - arrived_, expected_,
                 limit.count());
      std::fflush(stderr);
      std::_Exit(1);
    }
  }
  // Waits until fewer than `limit` are outstanding.
  void wait_below(std::size_t limit) {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return expected_ - arrived_ < limit; });
  }
  void expect_one_more() {
    std::lock_guard lock(mutex_);
    ++expected_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_;
  std::size_t expected_ = 0, arrived_ = 0;
};

inline constexpr const char* opendht_node_address = "127.0.0.1";

inline dht::SockAddr opendht_address(const opendht_socket& socket) { return socket.getBoundRef(AF_INET); }

inline dht_side_summary run_opendht_dht(const dht_plan& plan) {
  dht_side_summary out;
  std::vector<std::unique_ptr<dht::DhtRunner>> runners(plan.nodes);
  std::vector<dht::SockAddr> addresses(plan.nodes);
  std::vector<char> joined(plan.nodes, 0);
  opendht_driver driver(plan.nodes);
  opendht_latch latch;
  using clock = std::chrono::steady_clock;

  // Runners are created on this thread (OpenDHT reads std::random_device per runner: ~7 ms each here) while the
  // driver thread serves the ones already running.
  const auto started = clock::now();
  double creation_s = 0;  // spent creating runners (socket, DhtRunner, run())
  latch.reset(0);
  for (std::size_t i = 0; i < plan.nodes; ++i) {
    latch.wait_below(plan.join_concurrency);
    const auto creating = clock::now();
    auto socket = std::make_unique<opendht_socket>(opendht_node_address);
    opendht_socket* raw = socket.get();
    addresses[i] = opendht_address(*socket);
    auto runner = std::make_unique<dht::DhtRunner>();
    dht::DhtRunner::Config config;
    config.threaded = false;
    config.dht_config.node_config.max_peer_req_per_sec = -1;
    dht::DhtRunner::Context context;
    context.sock = std::move(socket);
    // DMOE_BENCH_OPENDHT_LOG set: OpenDHT's own log on stderr (for finding out why a run goes wrong).
    if (std::getenv("DMOE_BENCH_OPENDHT_LOG")) context.logger = dht::log::getStdLogger();
    runner->run(config, std::move(context));
    creation_s += std::chrono::duration<double>(clock::now() - creating).count();
    dht::DhtRunner* r = runner.get();
    runners[i] = std::move(runner);
    std::vector<dht::SockAddr> peers;
    for (std::uint32_t j : plan.initial_peers[i]) peers.push_back(addresses[j]);
    latch.expect_one_more();
    driver.post([&, i, r, raw, peers = std::move(peers)]() mutable {
      driver.attach(i, r, raw);
      if (peers.empty()) {
        joined[i] = 1;
        latch.arrive();
        return;
      }
      r->bootstrap(std::move(peers), [&, i](bool ok) {
        joined[i] = ok;
        latch.arrive();
      });
      driver.run_runner(i);
    });
  }
  latch.wait();
  const double start_s = std::chrono::duration<double>(clock::now() - started).count();
  std::size_t joined_count = 0;
  for (char j : joined) joined_count += j != 0;
  // Requests sent so far (ping, find, get, listen, put), read on the driver thread (and reset: read-and-reset).
  std::array<double, 5> sent{};
  latch.reset(1);
  driver.post([&] {
    for (auto& runner : runners) {
      const std::vector<unsigned> counts = runner->getNodeMessageStats(false);
      for (std::size_t c = 0; c < counts.size() && c < sent.size(); ++c) sent[c] += counts[c];
    }
    latch.arrive();
  });
  latch.wait();
  const double per_node = static_cast<double>(plan.nodes);
  print_dht_start("opendht", plan.nodes, joined_count, start_s, plan.join_concurrency,
                  sent[0] + sent[1] + sent[2] + sent[3] + sent[4],
                  fmt::format(",\"pings_per_join\":{:.1f},\"finds_per_join\":{:.1f},\"create_ms_per_node\":{:.3f}",
                              sent[0] / per_node, (sent[1] + sent[2]) / per_node, 1e3 * creation_s / per_node),
                  out);

  if (plan.settle_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(plan.settle_s));
  dht_phase_recorder recorder;
  std::size_t killed = 0;
  for (std::size_t round = 0; round < plan.rounds.size(); ++round) {
    const dht_round& r = plan.rounds[round];
    if (!r.kill_before.empty()) {
      latch.reset(1);
      driver.post([&] {
        for (std::uint32_t victim : r.kill_before) driver.detach(victim);
        latch.arrive();
      });
      latch.wait();
      killed += r.kill_before.size();
    }
    const dht::InfoHash key = dht::InfoHash::get(r.key);
    std::vector<dht_op> stores(r.storers.size()), gets(r.getters.size());
    std::vector<clock::time_point> begun(std::max(stores.size(), gets.size()));
    latch.reset(stores.size());
    driver.post([&] {
      for (std::size_t j = 0; j < r.storers.size(); ++j) {
        const std::string text = dht_value_text(round, j);
        auto value = std::make_shared<dht::Value>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
        value->id = round * 64 + j + 1;
        begun[j] = clock::now();
        runners[r.storers[j]]->put(key, std::move(value), [&, j](bool ok) {
          stores[j].ok = ok;
          stores[j].ms = std::chrono::duration<double, std::milli>(clock::now() - begun[j]).count();
          latch.arrive();
        });
        driver.run_runner(r.storers[j]);
      }
    });
    latch.wait();

    std::set<std::string> expected;
    for (std::size_t j = 0; j < stores.size(); ++j)
      if (stores[j].ok) expected.insert(dht_value_text(round, j));
    std::vector<std::set<std::string>> seen(gets.size());
    latch.reset(gets.size());
    driver.post([&] {
      for (std::size_t g = 0; g < r.getters.size(); ++g) {
        dht::DhtRunner& getter = *runners[r.getters[g]];
        getter.getNodeMessageStats(false);  // read-and-reset: counts from here on
        begun[g] = clock::now();
        getter.get(
            key,
            [&, g](const std::vector<std::shared_ptr<dht::Value>>& values) {
              for (const auto& v : values) seen[g].emplace(v->data.begin(), v->data.end());
              if (gets[g].complete_ms < 0 &&
                  std::all_of(expected.begin(), expected.end(), [&](const std::string& t) { return seen[g].contains(t); }))
                gets[g].complete_ms = std::chrono::duration<double, std::milli>(clock::now() - begun[g]).count();
              return true;
            },
            [&, g](bool) {
              gets[g].ms = std::chrono::duration<double, std::milli>(clock::now() - begun[g]).count();
              gets[g].ok = true;
              for (const auto& text : expected) gets[g].ok = gets[g].ok && seen[g].contains(text);
              // The counters take the runner's lock, held while this callback runs: read them next.
              driver.post([&, g] {
                double sent = 0;
                for (unsigned c : runners[r.getters[g]]->getNodeMessageStats(false)) sent += c;
                gets[g].rpcs = sent;
                latch.arrive();
              });
            });
        driver.run_runner(r.getters[g]);
      }
    });
    latch.wait();
    for (const auto& op : stores) recorder.add_store(op);
    for (const auto& op : gets) recorder.add_get(op);
    const bool last_of_phase = round + 1 == plan.rounds.size() || plan.rounds[round + 1].phase != r.phase;
    if (last_of_phase) {
      std::size_t rounds = 0;
      for (const auto& x : plan.rounds) rounds += x.phase == r.phase;
      out.phases[r.phase] = recorder.finish("opendht", plan.phases[r.phase], rounds, plan.nodes - killed, killed);
    }
  }
  out.threads = thread_count();
  out.peak_rss_mib = peak_rss_mib();
  latch.reset(1);
  driver.post([&] {
    for (std::size_t i = 0; i < plan.nodes; ++i) driver.detach(i);
    latch.arrive();
  });
  latch.wait();
  out.completed = 1;
  return out;
}

}  // namespace dmoe_bench
