// moe::beam_search: the best k live experts of each sample, found one grid dimension at a time through the DHT.
//
// Servers declare, under every proper prefix of their experts' uids, a successor set (moe/expert_records.hpp):
// "ffn." -> inner {3} and "ffn.3." -> leaves {17} at its endpoint, for expert "ffn.3.17". The search starts from
// the root prefix "ffn.", whose inner successors are the first coordinates that lead to a live expert, keeps the
// `beam_size` best of them by their dimension-0 score, asks for the successors of those prefixes, keeps the best
// `beam_size` two-coordinate prefixes by their partial sums, and so on; at the last dimension the leaves are the
// experts themselves (uid = prefix + coordinate, with the endpoint of the set that names it), of which it returns
// the k best. A whole batch is searched together: one directory query per dimension for the union of every
// sample's beam. With beam_size >= k the result is the exact top-k over live experts whenever the live experts fill
// a product sub-grid (every live prefix of a dimension then has the same successors); otherwise it is the beam's
// best. (Lample et al. 2019, "Large Memory Layers with Product Keys", for the product-key scores; Ryabinin & Gusev
// 2020, "Towards Crowdsourced Training of Large Neural Networks using Decentralized Mixture-of-Experts", for the
// search over the DHT.)
#pragma once

#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/boxed.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/dht/node.hpp>
#include <dmoe/moe/expert_records.hpp>
#include <dmoe/moe/expert_uid.hpp>
#include <dmoe/moe/gating.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/core.h>

DMOE_BEGIN_NAMESPACE
namespace moe {

// One expert a beam search found.
struct found_expert {
  std::string uid;
  endpoint server;
  std::vector<std::uint32_t> coordinates;
  float score = 0.0f;  // the sum of its coordinates' scores (in double, dimension by dimension, then rounded)
};

// A prefix's successors as a directory hands them out: shared, so that a cached answer is not copied per query.
using successors_ref = std::shared_ptr<const prefix_successors>;

// Where a beam search learns which prefixes have live successors.
class expert_directory {
 public:
  virtual ~expert_directory() = default;
  // The successors of each prefix (never null), in the order asked; ends by `deadline` with what it has by then.
  virtual task<std::vector<successors_ref>> successors(std::vector<std::string> prefixes, steady_time deadline) = 0;
  // Where each expert's own record says it is served, in the order asked (nothing where no live record names it);
  // ends by `deadline`. A beam search asks it only for chosen experts that several successor sets claim
  // (prefix_successors::contested). This default knows no records: such experts are dropped.
  DMOE_INLINE virtual task<std::vector<std::optional<endpoint>>> owners(std::vector<std::string> uids, steady_time deadline);
};

struct dht_directory_options {
  std::chrono::milliseconds live_for{5'000};    // how long a live prefix's successors are reused without asking
  std::chrono::milliseconds empty_for{30'000};  // how long a prefix found empty is remembered (negative caching)
  bool latest = true;              // merge the k nearest nodes' dictionaries (every server's entries) on each get
  bool store_empty_markers = true;  // tell the DHT about empty prefixes (seen by other trainers), for empty_for
  std::size_t max_cached = std::size_t{1} << 16;  // prefixes remembered at most
};

// Counters of a dht_expert_directory.
struct directory_stats {
  std::uint64_t queries = 0;      // successors() calls
  std::uint64_t dht_gets = 0;     // get_many crawls made for them
  std::uint64_t keys_asked = 0;   // prefixes asked of the DHT
  std::uint64_t cache_hits = 0;   // prefixes and owners answered from the cache
  std::uint64_t markers_stored = 0;
  std::uint64_t owner_gets = 0;   // get_many crawls for the uid records of contested experts
};

// The directory of a DHT node: one get_many per query for the prefixes it does not remember, with a cache of live
// prefixes (live_for) and of empty ones (empty_for). A prefix whose crawl was cut short by the deadline is not
// remembered as empty. Use it on the node's io_context thread only.
class dht_expert_directory final : public expert_directory {
 public:
  DMOE_LAZY explicit dht_expert_directory(dht::node& node, dht_directory_options options = {})
      : successors_body_(&dht_expert_directory::find_successors),
        owners_body_(&dht_expert_directory::find_owners),
        node_(node),
        options_(options) {}

  task<std::vector<successors_ref>> successors(std::vector<std::string> prefixes, steady_time deadline) override {
    return (this->*successors_body_)(std::move(prefixes), deadline);
  }

  // Reads the uid records (moe::get_experts) of the experts not remembered; owners found are remembered live_for,
  // and uids without a record empty_for when the crawl was not cut by the deadline (claims nobody owns, e.g. a
  // flood of them, then cost one crawl, not one per batch).
  task<std::vector<std::optional<endpoint>>> owners(std::vector<std::string> uids, steady_time deadline) override {
    return (this->*owners_body_)(std::move(uids), deadline);
  }

  // Forgets everything remembered (e.g. after the swarm changed on purpose).
  DMOE_DECL void clear_cache();
  const directory_stats& stats() const noexcept { return stats_; }
  dht::node& node() noexcept { return node_; }

 private:
  struct cached {
    steady_time until;
    successors_ref value;
  };

  DMOE_DECL void evict(steady_time now);

  struct owner {
    steady_time until;
    std::optional<endpoint> server;  // nothing: no record names the uid
  };

  DMOE_DECL task<std::vector<successors_ref>> find_successors(std::vector<std::string> prefixes, steady_time deadline);
  DMOE_DECL task<std::vector<std::optional<endpoint>>> find_owners(std::vector<std::string> uids, steady_time deadline);

  // The overrides call the bodies through these pointers, which the constructor sets. Header-only, the bodies and
  // the constructor are templates, so only a translation unit that makes a directory compiles the bodies and the
  // DHT lookups they reach; an override's own body is compiled in every translation unit that sees the class.
  task<std::vector<successors_ref>> (dht_expert_directory::*const successors_body_)(std::vector<std::string>,
                                                                                     steady_time);
  task<std::vector<std::optional<endpoint>>> (dht_expert_directory::*const owners_body_)(std::vector<std::string>,
                                                                                         steady_time);

  dht::node& node_;
  dht_directory_options options_;
  dmoe::detail::boxed<std::unordered_map<std::string, cached>> cache_;
  // uid -> the server its own record names, if any
  dmoe::detail::boxed<std::unordered_map<std::string, owner>> owners_;
  directory_stats stats_;
};

struct beam_search_options {
  std::string uid_prefix = "ffn";     // experts are "<uid_prefix>.<c0>.<c1>..."
  std::vector<std::uint32_t> grid;    // the gating's grid; declared coordinates outside it are ignored
  std::size_t beam_size = 0;          // prefixes kept per sample and dimension; 0: k
};

namespace detail {

// A candidate of one sample at one dimension: its parent in the sample's beam and the coordinate it adds.
struct beam_candidate {
  double score;
  std::uint32_t parent;
  std::uint32_t coordinate;
};

// One prefix of a sample's beam.
struct beam_entry {
  double score = 0.0;
  std::vector<std::uint32_t> coordinates;
  std::string prefix;  // "<uid_prefix>.<c0>.….": ends with the delimiter
};

}  // namespace detail

namespace detail {

// One sample's choice among its last-dimension candidates: sorted a slice at a time, so that only candidates near
// the top are ever sorted or named; contested ones wait for their owner.
struct last_choice {
  std::vector<beam_candidate> candidates;
  std::vector<const prefix_successors*> parents;  // per beam entry
  std::size_t sorted = 0;                         // candidates[0, sorted) are in order
  std::size_t next = 0;                           // the next candidate to consider
  std::vector<std::pair<beam_candidate, endpoint>> taken;
  std::vector<beam_candidate> pending;  // contested, waiting for directory.owners
};

inline constexpr int max_owner_rounds = 6;

// One beam search of every row of `s` (f32 [batch, width], finite) with beam `keep_beam`; marks in `retry` the rows
// that a wider beam may serve better: an expert was excluded or dropped, or a prefix of the beam led nowhere.
DMOE_DECL task<std::vector<std::vector<found_expert>>> beam_search_pass(expert_directory& directory, const float* s,
                                                                     std::int64_t batch,
                                                                     const beam_search_options& options,
                                                                     std::size_t keep_last, std::size_t keep_beam,
                                                                     steady_time deadline,
                                                                     const std::function<bool(const std::string&)>& exclude,
                                                                     std::vector<std::uint8_t>& retry);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF task<std::vector<std::vector<found_expert>>> beam_search_pass(expert_directory& directory, const float* s,
                                                                     std::int64_t batch,
                                                                     const beam_search_options& options,
                                                                     std::size_t keep_last, std::size_t keep_beam,
                                                                     steady_time deadline,
                                                                     const std::function<bool(const std::string&)>& exclude,
                                                                     std::vector<std::uint8_t>& retry) {
  const std::vector<std::int64_t> offsets = grid_offsets(options.grid);
  const std::int64_t width = offsets.back();
  const auto rows = static_cast<std::size_t>(batch);
  retry.assign(rows, 0);
  const std::size_t dims = options.grid.size();

  std::vector<std::vector<detail::beam_entry>> beams(rows);
  for (auto& beam : beams) beam.push_back({0.0, {}, options.uid_prefix + "."});
  std::vector<last_choice> choices;
  std::vector<detail::beam_candidate> candidates;
  std::vector<successors_ref> found;
  const auto better_in = [](const std::vector<detail::beam_entry>& beam) {
    // Best first; equal scores by smaller coordinates (the parent's, then the new one).
    return [&beam](const detail::beam_candidate& x, const detail::beam_candidate& y) {
      if (x.score != y.score) return x.score > y.score;
      const auto& cx = beam[x.parent].coordinates;
      const auto& cy = beam[y.parent].coordinates;
      if (cx != cy) return cx < cy;
      return x.coordinate < y.coordinate;
    };
  };
  for (std::size_t d = 0; d < dims; ++d) {
    const bool last = d + 1 == dims;
    std::vector<std::string> asked;
    std::unordered_map<std::string, std::size_t> index;
    for (const auto& beam : beams)
      for (const auto& entry : beam)
        if (index.emplace(entry.prefix, asked.size()).second) asked.push_back(entry.prefix);
    if (asked.empty()) co_return std::vector<std::vector<found_expert>>(rows);
    found = co_await directory.successors(asked, deadline);  // kept past the loop: choices point into it
    if (found.size() != asked.size())
      throw protocol_error(
          dmoe::format("beam_search: the expert directory answered {} of {} prefixes", found.size(), asked.size()));
    static const prefix_successors nothing;
    const std::uint32_t side = options.grid[d];
    if (last) choices.assign(rows, {});
    for (std::size_t b = 0; b < rows; ++b) {
      auto& beam = beams[b];
      const float* row = s + static_cast<std::int64_t>(b) * width + offsets[d];
      std::vector<detail::beam_candidate>& pool = last ? choices[b].candidates : candidates;
      pool.clear();
      for (std::size_t p = 0; p < beam.size(); ++p) {
        const successors_ref& ref = found[index.at(beam[p].prefix)];
        const prefix_successors& next = ref ? *ref : nothing;
        if (last) choices[b].parents.push_back(&next);
        const double base = beam[p].score;
        const std::size_t before = pool.size();
        const auto add = [&](std::uint32_t begin, std::uint32_t end) {
          end = std::min(end, side);
          for (std::uint32_t c = begin; c < end; ++c)
            pool.push_back({base + static_cast<double>(row[c]), static_cast<std::uint32_t>(p), c});
        };
        if (last)
          for (const auto& r : next.leaves) add(r.begin, r.end);
        else
          for (const auto& r : next.inner) add(r.begin, r.end);
        if (d > 0 && pool.size() == before) retry[b] = 1;  // a prefix that led nowhere took a place in the beam
      }
      if (last) continue;
      const std::size_t keep = std::min(keep_beam, pool.size());
      std::partial_sort(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(keep), pool.end(), better_in(beam));
      std::vector<detail::beam_entry> next_beam;
      next_beam.reserve(keep);
      for (std::size_t j = 0; j < keep; ++j) {
        const auto& c = pool[j];
        detail::beam_entry e{c.score, beam[c.parent].coordinates,
                             dmoe::format("{}{}{}", beam[c.parent].prefix, c.coordinate, uid_delimiter)};
        e.coordinates.push_back(c.coordinate);
        next_beam.push_back(std::move(e));
      }
      beam = std::move(next_beam);
    }
  }

  // The last dimension: each sample takes its best candidates in order, skipping experts the caller avoids. An
  // expert that several successor sets claim is served where its own uid record says (its first signer owns it:
  // nobody redirects another server's experts); one whose record is gone is dropped and the next candidate taken.
  // Owners are asked for all samples at once, a widening slice per round.
  std::unordered_map<std::string, std::optional<endpoint>> owner_of;
  std::string uid;
  const auto uid_of = [&](std::size_t b, const detail::beam_candidate& c) -> const std::string& {
    uid.assign(beams[b][c.parent].prefix);
    fmt::format_to(std::back_inserter(uid), "{}", c.coordinate);
    return uid;
  };
  for (int round = 0;; ++round) {
    // The first round takes k per sample, contested ones included; a sample short after its contested experts
    // were dropped looks 4x further ahead each round (contested candidates kept pending), so a flood of claims
    // without records costs a few rounds, not one per claim.
    const std::size_t spare = round == 0 ? 0 : keep_last << std::min(2 * round, 20);
    std::vector<std::string> to_ask;
    std::unordered_map<std::string, std::size_t> asking;
    for (std::size_t b = 0; b < rows; ++b) {
      last_choice& choice = choices[b];
      auto& pool = choice.candidates;
      while (choice.next < pool.size() && choice.taken.size() < keep_last &&
             choice.taken.size() + choice.pending.size() < keep_last + spare) {
        if (choice.next == choice.sorted) {
          const std::size_t upto = std::min(pool.size(), choice.sorted + std::max(keep_last, choice.sorted));
          std::partial_sort(pool.begin() + static_cast<std::ptrdiff_t>(choice.sorted),
                            pool.begin() + static_cast<std::ptrdiff_t>(upto), pool.end(), better_in(beams[b]));
          choice.sorted = upto;
        }
        const detail::beam_candidate c = pool[choice.next++];
        const bool contested = choice.parents[c.parent]->is_contested(c.coordinate);
        if (exclude || contested) uid_of(b, c);
        if (exclude && exclude(uid)) {
          retry[b] = 1;
          continue;
        }
        if (!contested) {
          choice.taken.emplace_back(c, *choice.parents[c.parent]->expert_server(c.coordinate));
          continue;
        }
        if (const auto known = owner_of.find(uid); known != owner_of.end()) {
          if (known->second) choice.taken.emplace_back(c, *known->second);
          else retry[b] = 1;
          continue;
        }
        choice.pending.push_back(c);
        if (asking.emplace(uid, to_ask.size()).second) to_ask.push_back(uid);
      }
    }
    if (to_ask.empty()) break;
    std::vector<std::optional<endpoint>> owners(to_ask.size());
    if (round < max_owner_rounds && std::chrono::steady_clock::now() < deadline) {
      owners = co_await directory.owners(to_ask, deadline);
      if (owners.size() != to_ask.size())
        throw protocol_error(dmoe::format("beam_search: the expert directory answered {} of {} owners",
                                         owners.size(), to_ask.size()));
    }
    for (std::size_t i = 0; i < to_ask.size(); ++i) owner_of[to_ask[i]] = owners[i];
    for (std::size_t b = 0; b < rows; ++b) {
      last_choice& choice = choices[b];
      // Every pending candidate ranks above the ones taken after it: take the owned ones, keep the best k below.
      for (const auto& c : choice.pending) {
        const auto& owner = owner_of.at(uid_of(b, c));
        if (owner) choice.taken.emplace_back(c, *owner);
        else retry[b] = 1;
      }
      choice.pending.clear();
    }
    if (round >= max_owner_rounds || std::chrono::steady_clock::now() >= deadline) break;
  }
  std::vector<std::vector<found_expert>> out(rows);
  for (std::size_t b = 0; b < rows; ++b) {
    auto& taken = choices[b].taken;
    const auto better = better_in(beams[b]);
    std::sort(taken.begin(), taken.end(), [&better](const auto& x, const auto& y) { return better(x.first, y.first); });
    if (taken.size() > keep_last) taken.resize(keep_last);
    for (const auto& [c, server] : taken) {
      const auto& parent = beams[b][c.parent];
      found_expert e;
      e.coordinates = parent.coordinates;
      e.coordinates.push_back(c.coordinate);
      e.uid = dmoe::format("{}{}", parent.prefix, c.coordinate);
      e.server = server;
      e.score = static_cast<float>(c.score);
      out[b].push_back(std::move(e));
    }
  }
  co_return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace detail

// The (at most) k best live experts of each sample, best first (equal scores: smaller coordinates first), for
// grid scores f32 [batch, sum(grid)] on the host (dimension d's scores in columns [sum(grid[:d]), sum(grid[:d+1]))).
// `exclude(uid)` drops experts (e.g. ones that failed recently); a sample gets fewer than k experts when fewer are
// live. Makes one directory query per grid dimension, one `owners` query per round of contested experts (up to 6),
// plus up to 3 more passes with a 4x wider beam for samples left short by exclusions, dropped experts or prefixes
// that led nowhere, each ending by `deadline`: the search ends by it, with what it found by then. Errors:
// invalid_argument_error (k < 1, an empty grid or uid prefix, scores not f32 or not finite), shape_error (scores
// not [batch, sum(grid)]), protocol_error (a directory answering another number of entries than asked); the
// directory's errors (closed_error, cancelled_error).
DMOE_DECL task<std::vector<std::vector<found_expert>>> beam_search(expert_directory& directory, const tensor& grid_scores,
                                                                const beam_search_options& options, std::int64_t k,
                                                                steady_time deadline = no_deadline,
                                                                std::function<bool(const std::string&)> exclude = {});
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF task<std::vector<std::vector<found_expert>>> beam_search(expert_directory& directory,
    const tensor& grid_scores,
                                                                const beam_search_options& options, std::int64_t k,
                                                                steady_time deadline,
                                                                std::function<bool(const std::string&)> exclude) {
  constexpr std::string_view op = "beam_search";
  detail::check_grid(op, options.grid);
  expect_dtype(op, "grid_scores", grid_scores, dtype::f32);
  expect_rank(op, "grid_scores", grid_scores, 2);
  const std::vector<std::int64_t> offsets = grid_offsets(options.grid);
  if (grid_scores.dim(1) != offsets.back())
    throw shape_error(dmoe::format("{}: grid_scores is {} but grid {} needs {} columns", op, grid_scores.shape(),
                                  detail::grid_text(options.grid), offsets.back()));
  if (k < 1) throw invalid_argument_error(dmoe::format("{}: k = {} must be at least 1", op, k));
  if (!is_valid_uid_prefix(options.uid_prefix + "."))
    throw invalid_argument_error(dmoe::format("{}: '{}' is not an expert name", op, options.uid_prefix));
  const tensor scores = grid_scores.to(device::host);
  const float* s = scores.data<float>();
  const std::int64_t batch = scores.dim(0), width = offsets.back();
  for (std::int64_t i = 0; i < batch * width; ++i)
    if (!std::isfinite(s[i]))
      throw invalid_argument_error(dmoe::format("{}: score {} of sample {} is {}", op, i % width, i / width, s[i]));
  const auto keep_last = static_cast<std::size_t>(k);
  std::size_t keep_beam = options.beam_size == 0 ? keep_last : options.beam_size;
  std::vector<std::uint8_t> excluded_some;
  auto out = co_await detail::beam_search_pass(directory, s, batch, options, keep_last, keep_beam, deadline, exclude,
                                               excluded_some);
  // Excluded and dropped experts, and prefixes that lead nowhere, are only known after the beam chose its prefixes:
  // a sample left short because of them is searched again with a wider beam (up to the widest dimension), so that
  // it can route around a dead region of the grid (or a successor set that claims prefixes it does not have).
  const std::size_t widest = *std::max_element(options.grid.begin(), options.grid.end());
  for (int round = 0; round < 3 && keep_beam < widest && std::chrono::steady_clock::now() < deadline; ++round) {
    std::vector<std::int64_t> again;
    for (std::int64_t b = 0; b < batch; ++b)
      if (excluded_some[static_cast<std::size_t>(b)] && out[static_cast<std::size_t>(b)].size() < keep_last)
        again.push_back(b);
    if (again.empty()) break;
    keep_beam = std::min(widest, keep_beam * 4);
    std::vector<float> rows(again.size() * static_cast<std::size_t>(width));
    for (std::size_t i = 0; i < again.size(); ++i)
      std::copy(s + again[i] * width, s + (again[i] + 1) * width, rows.begin() + static_cast<std::ptrdiff_t>(i) * width);
    auto wider = co_await detail::beam_search_pass(directory, rows.data(), static_cast<std::int64_t>(again.size()),
                                                   options, keep_last, keep_beam, deadline, exclude, excluded_some);
    for (std::size_t i = 0; i < again.size(); ++i)
      if (wider[i].size() > out[static_cast<std::size_t>(again[i])].size())
        out[static_cast<std::size_t>(again[i])] = std::move(wider[i]);
    // excluded_some now describes the rows of `again`: map it back.
    std::vector<std::uint8_t> marks(static_cast<std::size_t>(batch), 0);
    for (std::size_t i = 0; i < again.size(); ++i) marks[static_cast<std::size_t>(again[i])] = excluded_some[i];
    excluded_some = std::move(marks);
  }
  co_return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

}  // namespace moe
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace moe {

DMOE_INLINE auto expert_directory::owners(std::vector<std::string> uids, steady_time deadline)
    -> task<std::vector<std::optional<endpoint>>> {
  (void)deadline;
  co_return std::vector<std::optional<endpoint>>(uids.size());
}

DMOE_DEF auto dht_expert_directory::find_successors(std::vector<std::string> prefixes, steady_time deadline)
    -> task<std::vector<successors_ref>> {
  ++stats_.queries;
  const steady_time now = std::chrono::steady_clock::now();
  std::vector<successors_ref> out(prefixes.size());
  std::vector<std::string> missing;
  std::vector<std::size_t> at;
  for (std::size_t i = 0; i < prefixes.size(); ++i) {
    const auto it = cache_->find(prefixes[i]);
    if (it != cache_->end() && it->second.until > now) {
      out[i] = it->second.value;
      ++stats_.cache_hits;
    } else {
      missing.push_back(prefixes[i]);
      at.push_back(i);
    }
  }
  if (missing.empty()) co_return out;
  ++stats_.dht_gets;
  stats_.keys_asked += missing.size();
  std::vector<prefix_successors> got = co_await moe::successors(node_, missing, deadline, options_.latest);
  const steady_time after = std::chrono::steady_clock::now();
  const bool complete = after < deadline;  // a crawl the deadline cut short proves nothing empty
  std::vector<dht::store_entry> markers;
  if (cache_->size() + missing.size() > options_.max_cached) evict(after);
  for (std::size_t j = 0; j < missing.size(); ++j) {
    const bool empty = got[j].empty();
    const bool marked = got[j].marked_empty;
    auto shared = std::make_shared<const prefix_successors>(std::move(got[j]));
    if (!empty || complete) {
      if (cache_->size() < options_.max_cached || cache_->contains(missing[j]))
        (*cache_)[missing[j]] = cached{after + (empty ? options_.empty_for : options_.live_for), shared};
    }
    if (empty && complete && !marked && options_.store_empty_markers)
      markers.push_back(empty_prefix_entry(missing[j], node_.options().clock->wall_now() +
                                                           std::chrono::duration<double>(options_.empty_for).count()));
    out[at[j]] = std::move(shared);
  }
  if (!markers.empty()) {
    try {
      const auto stored = co_await node_.store_many(std::move(markers), deadline);
      for (const auto& s : stored) stats_.markers_stored += s.replicas > 0 ? 1 : 0;
    } catch (const cancelled_error&) {
      throw;
    } catch (const error&) {
      // A marker is a hint: failing to store one changes nothing for this search.
    }
  }
  co_return out;
}

DMOE_DEF auto dht_expert_directory::find_owners(std::vector<std::string> uids, steady_time deadline)
    -> task<std::vector<std::optional<endpoint>>> {
  const steady_time now = std::chrono::steady_clock::now();
  std::vector<std::optional<endpoint>> out(uids.size());
  std::vector<std::string> missing;
  std::vector<std::size_t> at;
  for (std::size_t i = 0; i < uids.size(); ++i) {
    const auto it = owners_->find(uids[i]);
    if (it != owners_->end() && it->second.until > now) {
      out[i] = it->second.server;
      ++stats_.cache_hits;
    } else {
      missing.push_back(uids[i]);
      at.push_back(i);
    }
  }
  if (missing.empty()) co_return out;
  ++stats_.owner_gets;
  const auto found = co_await get_experts(node_, missing, deadline);
  const steady_time after = std::chrono::steady_clock::now();
  const bool complete = after < deadline;  // a crawl the deadline cut short proves no record missing
  if (owners_->size() + missing.size() > options_.max_cached) std::erase_if(*owners_, [after](const auto& entry) {
    return entry.second.until <= after;
  });
  for (std::size_t j = 0; j < missing.size(); ++j) {
    if (found[j]) out[at[j]] = found[j]->server;
    if ((found[j] || complete) && owners_->size() < options_.max_cached)
      (*owners_)[missing[j]] = owner{after + (found[j] ? options_.live_for : options_.empty_for), out[at[j]]};
  }
  co_return out;
}

DMOE_DEF void dht_expert_directory::clear_cache() {
  cache_->clear();
  owners_->clear();
}

DMOE_DEF void dht_expert_directory::evict(steady_time now) {
  std::erase_if(*cache_, [now](const auto& entry) { return entry.second.until <= now; });
  if (cache_->size() >= options_.max_cached) cache_->clear();
}

}  // namespace moe
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
