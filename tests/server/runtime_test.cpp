// Tests of server/task_pool.hpp and server/runtime.hpp: batching, fairness across pools, failures confined to
// their batch, refusals at submission.
#include <dmoe/async/io_context.hpp>
#include <dmoe/server/runtime.hpp>

#include <boost/test/unit_test.hpp>

#include <future>
#include <optional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "server_test_support.hpp"

using namespace dmoe;
using namespace dmoe::server;
using dmoe_test::random_batch;
using dmoe_test::compute_gate;

namespace {

expert_options kind_options(std::string kind, std::int64_t hidden) {
  expert_options o;
  o.kind = std::move(kind);
  o.hidden = hidden;
  return o;
}
expert_options nop_options(std::int64_t hidden) { return kind_options("nop", hidden); }

// Waits (blocking) for a completion's outcome.
task_outcome wait_outcome(task_completion& c) {
  return *c.done.receive_blocking();
}

struct recorder {
  std::mutex mutex;
  std::vector<batch_record> batches;
  void operator()(const batch_record& r) {
    std::lock_guard lock(mutex);
    batches.push_back(r);
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(server_runtime)

BOOST_AUTO_TEST_CASE(batches_never_exceed_max_batch_size_and_split_back_in_order) {
  auto expert = make_expert_backend("nop.0", nop_options(4), 1);
  runtime_options o;
  o.max_batch_size = 8;
  runtime rt({expert.get()}, o);
  auto rec = std::make_shared<recorder>();
  rt.set_batch_observer([rec](const batch_record& r) { (*rec)(r); });
  rt.start();
  compute_gate gate;
  gate.hold(rt);
  std::vector<tensor> inputs;
  std::vector<std::shared_ptr<task_completion>> done;
  for (int i = 0; i < 20; ++i) {
    inputs.push_back(random_batch(3, 4, 100 + i));
    done.push_back(rt.submit("nop.0", expert_direction::forward, inputs.back()));
  }
  gate.release();
  for (int i = 0; i < 20; ++i) {
    task_outcome out = wait_outcome(*done[i]);
    BOOST_REQUIRE(!out.error);
    BOOST_TEST(dmoe_test::bit_equal(out.result, inputs[i]));  // nop: the rows of its own request, in order
  }
  rt.stop();
  std::int64_t total = 0;
  for (const auto& b : rec->batches) {
    BOOST_TEST(b.samples <= 8);
    BOOST_TEST(b.samples == 6);  // two requests of 3 fit, a third would not
    total += b.samples;
  }
  BOOST_TEST(total == 60);
  const auto stats = rt.total_stats();
  BOOST_TEST(stats.forward_requests == 20u);
  BOOST_TEST(stats.forward_samples == 60u);
  BOOST_TEST(stats.largest_batch == 6u);
}

BOOST_AUTO_TEST_CASE(the_pool_with_the_oldest_request_runs_first) {
  auto a = make_expert_backend("nop.0", nop_options(4), 1);
  auto b = make_expert_backend("nop.1", nop_options(4), 1);
  runtime rt({a.get(), b.get()});
  auto rec = std::make_shared<recorder>();
  rt.set_batch_observer([rec](const batch_record& r) { (*rec)(r); });
  rt.start();
  compute_gate gate;
  gate.hold(rt);
  const tensor x = random_batch(2, 4, 1);
  std::vector<std::shared_ptr<task_completion>> done;
  done.push_back(rt.submit("nop.1", expert_direction::forward, x));       // 0
  done.push_back(rt.submit("nop.0", expert_direction::backward, x, x));   // 1
  done.push_back(rt.submit("nop.0", expert_direction::forward, x));       // 2
  done.push_back(rt.submit("nop.1", expert_direction::forward, x));       // 3: joins 0's batch
  done.push_back(rt.submit("nop.1", expert_direction::backward, x, x));   // 4
  gate.release();
  for (auto& d : done) BOOST_REQUIRE(!wait_outcome(*d).error);
  rt.stop();
  BOOST_REQUIRE_EQUAL(rec->batches.size(), 4u);
  BOOST_TEST((rec->batches[0].uid == "nop.1" && rec->batches[0].direction == expert_direction::forward));
  BOOST_TEST(rec->batches[0].sequences == (std::vector<std::uint64_t>{0, 3}), boost::test_tools::per_element());
  BOOST_TEST((rec->batches[1].uid == "nop.0" && rec->batches[1].direction == expert_direction::backward));
  BOOST_TEST((rec->batches[2].uid == "nop.0" && rec->batches[2].direction == expert_direction::forward));
  BOOST_TEST((rec->batches[3].uid == "nop.1" && rec->batches[3].direction == expert_direction::backward));
}

BOOST_AUTO_TEST_CASE(a_batch_waits_for_min_batch_size_or_the_window) {
  auto expert = make_expert_backend("nop.0", nop_options(4), 1);
  runtime_options o;
  o.min_batch_size = 4;
  o.batching_window = std::chrono::microseconds(200'000);
  runtime rt({expert.get()}, o);
  auto rec = std::make_shared<recorder>();
  rt.set_batch_observer([rec](const batch_record& r) { (*rec)(r); });
  rt.start();
  // Two requests of 2 samples reach min_batch_size together: one batch of 4, however the threads interleave,
  // because the first alone waits for the 200 ms window.
  const tensor x = random_batch(2, 4, 1);
  auto first = rt.submit("nop.0", expert_direction::forward, x);
  auto second = rt.submit("nop.0", expert_direction::forward, x);
  BOOST_REQUIRE(!wait_outcome(*first).error);
  BOOST_REQUIRE(!wait_outcome(*second).error);
  // A lone request still runs once the window has passed.
  auto lone = rt.submit("nop.0", expert_direction::forward, random_batch(1, 4, 2));
  BOOST_REQUIRE(!wait_outcome(*lone).error);
  rt.stop();
  BOOST_REQUIRE_EQUAL(rec->batches.size(), 2u);
  BOOST_TEST(rec->batches[0].samples == 4);
  BOOST_TEST(rec->batches[1].samples == 1);
}

BOOST_AUTO_TEST_CASE(refusals_at_submission_name_the_problem_and_queue_nothing) {
  auto expert = make_expert_backend("ffn.0", kind_options("ffn", 8), 1);
  runtime_options o;
  o.max_batch_size = 4;
  runtime rt({expert.get()}, o);
  rt.start();
  auto message_of = [&](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const error& e) {
      return e.what();
    }
    return "<no error>";
  };
  BOOST_TEST(message_of([&] { rt.submit("ffn.9", expert_direction::forward, random_batch(1, 8, 1)); })
                 .find("no expert 'ffn.9'") != std::string::npos);
  BOOST_TEST(message_of([&] { rt.submit("ffn.0", expert_direction::forward, random_batch(1, 5, 1)); })
                 .find("schema") != std::string::npos);
  BOOST_TEST(message_of([&] { rt.submit("ffn.0", expert_direction::forward, tensor(shape{0, 8})); })
                 .find("no samples") != std::string::npos);
  BOOST_TEST(message_of([&] { rt.submit("ffn.0", expert_direction::forward, random_batch(5, 8, 1)); })
                 .find("exceeds max_batch_size 4") != std::string::npos);
  BOOST_TEST(message_of([&] {
               rt.submit("ffn.0", expert_direction::backward, random_batch(2, 8, 1), random_batch(3, 8, 1));
             }).find("2 inputs but 3 output gradients") != std::string::npos);
  BOOST_TEST(rt.total_stats().forward_requests == 0u);
  // The next good request is served.
  auto ok = rt.submit("ffn.0", expert_direction::forward, random_batch(4, 8, 1));
  BOOST_TEST(!wait_outcome(*ok).error);
  rt.stop();
  BOOST_CHECK_THROW(rt.submit("ffn.0", expert_direction::forward, random_batch(1, 8, 1)), closed_error);
}

BOOST_AUTO_TEST_CASE(a_failing_batch_fails_only_its_requests_and_leaves_the_parameters) {
  auto expert = make_expert_backend("ffn.0", kind_options("ffn", 8), 1);
  auto other = make_expert_backend("ffn.1", kind_options("ffn", 8), 1);
  runtime rt({expert.get(), other.get()});
  rt.start();
  const nn::parameter_list params = expert->module().parameters();
  std::vector<tensor> before;
  for (const auto& p : params) before.push_back(p.value->clone());
  // Output gradients of 1e38 overflow the gradient norm: the backward batch fails before the optimizer step.
  compute_gate gate;
  gate.hold(rt);
  auto bad = rt.submit("ffn.0", expert_direction::backward, random_batch(2, 8, 1), tensor::full(shape{2, 8}, 3e38f));
  auto fine = rt.submit("ffn.1", expert_direction::forward, random_batch(2, 8, 2));
  gate.release();
  const task_outcome failed = wait_outcome(*bad);
  BOOST_REQUIRE(failed.error);
  try {
    std::rethrow_exception(failed.error);
  } catch (const error& e) {
    BOOST_TEST(std::string(e.what()).find("not finite") != std::string::npos);
  }
  BOOST_TEST(!wait_outcome(*fine).error);
  for (std::size_t i = 0; i < params.size(); ++i) BOOST_TEST(dmoe_test::bit_equal(*params[i].value, before[i]));
  BOOST_TEST(expert->updates() == 0u);
  // The expert still serves.
  auto again = rt.submit("ffn.0", expert_direction::backward, random_batch(2, 8, 1), random_batch(2, 8, 3));
  BOOST_TEST(!wait_outcome(*again).error);
  BOOST_TEST(expert->updates() == 1u);
  rt.stop();
  BOOST_TEST(rt.total_stats().failed_batches == 1u);
}

BOOST_AUTO_TEST_CASE(abandoned_requests_are_skipped_and_stop_computes_what_is_queued) {
  auto expert = make_expert_backend("nop.0", nop_options(4), 1);
  runtime rt({expert.get()});
  auto rec = std::make_shared<recorder>();
  rt.set_batch_observer([rec](const batch_record& r) { (*rec)(r); });
  rt.start();
  compute_gate gate;
  gate.hold(rt);
  auto gone = rt.submit("nop.0", expert_direction::forward, random_batch(1, 4, 1));
  gone->abandoned = true;
  auto kept = rt.submit("nop.0", expert_direction::forward, random_batch(2, 4, 2));
  std::thread stopper([&] { rt.stop(); });  // stop() waits for the queue to be computed
  gate.release();
  stopper.join();
  BOOST_TEST(!wait_outcome(*kept).error);
  BOOST_REQUIRE_EQUAL(rec->batches.size(), 1u);
  BOOST_TEST(rec->batches[0].samples == 2);
}

BOOST_AUTO_TEST_CASE(stop_without_start_fails_every_queued_request) {
  // More than one batch waits in each pool: every request still learns that nothing will compute it.
  auto expert = make_expert_backend("nop.0", nop_options(4), 1);
  runtime_options o;
  o.max_batch_size = 2;
  runtime rt({expert.get()}, o);
  const tensor x = random_batch(2, 4, 1);
  std::vector<std::shared_ptr<task_completion>> done;
  for (int i = 0; i < 4; ++i) {
    done.push_back(rt.submit("nop.0", expert_direction::forward, x));
    done.push_back(rt.submit("nop.0", expert_direction::backward, x, x));
  }
  BOOST_TEST(rt.queued_samples() == 16);
  rt.stop();
  BOOST_TEST(rt.queued_samples() == 0);
  for (auto& d : done) {
    std::optional<task_outcome> out = d->done.try_receive();
    BOOST_REQUIRE(out.has_value());
    BOOST_REQUIRE(out->error);
    BOOST_CHECK_THROW(std::rethrow_exception(out->error), closed_error);
  }
}

BOOST_AUTO_TEST_CASE(a_withdrawn_request_leaves_its_pool_at_once) {
  auto expert = make_expert_backend("nop.0", nop_options(4), 1);
  runtime rt({expert.get()});
  auto rec = std::make_shared<recorder>();
  rt.set_batch_observer([rec](const batch_record& r) { (*rec)(r); });
  rt.start();
  compute_gate gate;
  gate.hold(rt);
  auto gone = rt.submit("nop.0", expert_direction::backward, random_batch(3, 4, 1), random_batch(3, 4, 2));
  auto kept = rt.submit("nop.0", expert_direction::backward, random_batch(2, 4, 3), random_batch(2, 4, 4));
  BOOST_TEST(rt.queued_samples() == 5);
  // While the compute thread is busy, the waiter that gives up takes its tensors out of the queue.
  rt.withdraw("nop.0", expert_direction::backward, *gone);
  BOOST_TEST(gone->abandoned.load());
  BOOST_TEST(rt.queued_samples() == 2);
  rt.withdraw("nop.0", expert_direction::backward, *gone);  // twice: nothing more
  BOOST_TEST(rt.queued_samples() == 2);
  gate.release();
  BOOST_TEST(!wait_outcome(*kept).error);
  rt.stop();
  BOOST_REQUIRE_EQUAL(rec->batches.size(), 1u);
  BOOST_TEST(rec->batches[0].samples == 2);
  BOOST_TEST(rt.total_stats().backward_requests == 2u);
  BOOST_TEST(rt.total_stats().backward_samples == 2u);
}

BOOST_AUTO_TEST_CASE(a_batch_is_counted_before_its_answers_go_out) {
  // A caller that has its answer reads statistics that include its batch.
  auto expert = make_expert_backend("nop.0", nop_options(4), 1);
  runtime rt({expert.get()});
  rt.start();
  for (int i = 1; i <= 50; ++i) {
    auto done = rt.submit("nop.0", expert_direction::forward, random_batch(1, 4, i));
    BOOST_REQUIRE(!wait_outcome(*done).error);
    const auto stats = rt.total_stats();
    BOOST_REQUIRE_EQUAL(stats.forward_samples, static_cast<std::uint64_t>(i));
    BOOST_REQUIRE_EQUAL(stats.forward_batches, static_cast<std::uint64_t>(i));
    BOOST_REQUIRE_EQUAL(stats.largest_batch, 1u);
  }
  rt.stop();
}

BOOST_AUTO_TEST_CASE(options_are_checked) {
  auto expert = make_expert_backend("nop.0", nop_options(4), 1);
  BOOST_CHECK_THROW(runtime({expert.get()}, runtime_options{.max_batch_size = 0}), invalid_argument_error);
  BOOST_CHECK_THROW(runtime({expert.get()}, runtime_options{.max_batch_size = 4, .min_batch_size = 5}),
                    invalid_argument_error);
  BOOST_CHECK_THROW(runtime({expert.get(), expert.get()}), invalid_argument_error);
  BOOST_CHECK_THROW(make_expert_backend("x.0", kind_options("nope", 4), 1), invalid_argument_error);
  expert_options bad_optimizer = kind_options("ffn", 4);
  bad_optimizer.optimizer.name = "lion";
  BOOST_CHECK_THROW(make_expert_backend("x.0", bad_optimizer, 1), invalid_argument_error);
}

BOOST_AUTO_TEST_SUITE_END()
