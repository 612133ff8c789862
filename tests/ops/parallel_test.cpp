// Tests of dmoe/ops/cpu/parallel.hpp: every index once, errors propagate, concurrent callers.
#include <dmoe/ops/cpu/parallel.hpp>

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(ops_parallel)

BOOST_AUTO_TEST_CASE(covers_every_index_once) {
  for (std::int64_t n : {1, 2, 7, 1000, 100003}) {
    std::vector<std::atomic<int>> seen(static_cast<std::size_t>(n));
    ops::detail::parallel_for(n, 1, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) seen[static_cast<std::size_t>(i)]++;
    });
    for (auto& s : seen) BOOST_TEST(s.load() == 1);
  }
}

BOOST_AUTO_TEST_CASE(errors_propagate) {
  BOOST_CHECK_THROW(ops::detail::parallel_for(100, 1,
                                              [](std::int64_t begin, std::int64_t) {
                                                if (begin > 0) throw std::runtime_error("chunk failed");
                                                throw std::runtime_error("first chunk failed");
                                              }),
                    std::runtime_error);
  // The pool still works afterwards.
  std::atomic<std::int64_t> total = 0;
  ops::detail::parallel_for(100, 1, [&](std::int64_t begin, std::int64_t end) { total += end - begin; });
  BOOST_TEST(total.load() == 100);
}

BOOST_AUTO_TEST_CASE(concurrent_callers_and_thread_count) {
  std::atomic<std::int64_t> total = 0;
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep)
        ops::detail::parallel_for(1000, 1, [&](std::int64_t begin, std::int64_t end) { total += end - begin; });
    });
  for (auto& t : callers) t.join();
  BOOST_TEST(total.load() == 4 * 50 * 1000);
  const int before = ops::cpu_threads();
  ops::set_cpu_threads(3);
  BOOST_TEST(ops::cpu_threads() == 3);
  std::atomic<int> chunks = 0;
  ops::detail::parallel_for(30, 1, [&](std::int64_t, std::int64_t) { chunks++; });
  BOOST_TEST(chunks.load() == 3);
  ops::set_cpu_threads(before);
  BOOST_TEST(ops::cpu_threads() == before);
}

BOOST_AUTO_TEST_SUITE_END()
