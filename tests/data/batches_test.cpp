// Tests of dmoe/data/batches.hpp: every sample once per epoch, partial or dropped last batches, exact resumption
// with restore(), fresh orders per epoch, and in-order slices.
#include <dmoe/data/batches.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

using namespace dmoe;

namespace {

// `n` samples of 3 features; sample i has label i and features (i, 2i, 3i), so a batch shows which samples it holds.
data::labelled_images numbered_samples(std::int64_t n) {
  data::labelled_images set;
  set.rows = 1;
  set.cols = 3;
  set.images = tensor(shape{n, 3});
  set.labels = tensor(shape{n}, dtype::i64);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < 3; ++j) set.images.at<float>(i, j) = static_cast<float>(i * (j + 1));
    set.labels.at<std::int64_t>(i) = i;
  }
  return set;
}

// The sample numbers of a batch, after checking that its features belong to its labels.
std::vector<std::int64_t> samples_of(const data::batch& b) {
  BOOST_TEST_REQUIRE(b.x.dim(0) == b.labels.dim(0));
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; i < b.labels.dim(0); ++i) {
    const std::int64_t sample = b.labels.at<std::int64_t>(i);
    for (std::int64_t j = 0; j < 3; ++j) BOOST_TEST(b.x.at<float>(i, j) == static_cast<float>(sample * (j + 1)));
    out.push_back(sample);
  }
  return out;
}

// The samples of the next `count` batches, in order.
std::vector<std::int64_t> take(data::shuffled_batches& batches, int count) {
  std::vector<std::int64_t> out;
  for (int i = 0; i < count; ++i) {
    const auto s = samples_of(batches.next());
    out.insert(out.end(), s.begin(), s.end());
  }
  return out;
}

std::vector<std::int64_t> iota(std::int64_t n) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

template <class Error>
bool throws(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error&) {
    return true;
  }
  return false;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(data_batches)

BOOST_AUTO_TEST_CASE(every_sample_once_per_epoch_with_a_smaller_last_batch) {
  const auto set = numbered_samples(10);
  data::shuffled_batches batches(set, 4, 7);
  BOOST_TEST(batches.batches_per_epoch() == 3);
  for (std::int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<std::int64_t> seen;
    for (std::int64_t expected : {4, 4, 2}) {
      BOOST_TEST(batches.epoch() == epoch);
      BOOST_TEST(batches.position() == static_cast<std::int64_t>(seen.size()));
      const auto s = samples_of(batches.next());
      BOOST_TEST(static_cast<std::int64_t>(s.size()) == expected);
      seen.insert(seen.end(), s.begin(), s.end());
    }
    BOOST_TEST(batches.epoch() == epoch + 1);
    BOOST_TEST(batches.position() == 0);
    std::ranges::sort(seen);
    BOOST_TEST(seen == iota(10), boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_CASE(drop_last_skips_the_partial_batch) {
  const auto set = numbered_samples(10);
  data::shuffled_batches batches(set, 4, 7, true);
  BOOST_TEST(batches.batches_per_epoch() == 2);
  auto seen = take(batches, 2);
  BOOST_TEST(batches.epoch() == 1);
  BOOST_TEST(seen.size() == 8u);
  std::ranges::sort(seen);
  BOOST_TEST((std::ranges::adjacent_find(seen) == seen.end()));
}

BOOST_AUTO_TEST_CASE(restore_continues_the_same_sequence) {
  const auto set = numbered_samples(23);
  data::shuffled_batches original(set, 5, 42);
  take(original, 7);  // into the second epoch
  const std::int64_t epoch = original.epoch(), position = original.position();
  BOOST_TEST(epoch == 1);
  BOOST_TEST(position == 10);
  const auto expected = take(original, 9);

  data::shuffled_batches resumed(set, 5, 42);
  resumed.restore(epoch, position);
  BOOST_TEST(take(resumed, 9) == expected, boost::test_tools::per_element());

  // Restoring after other batches were drawn gives the same sequence too.
  data::shuffled_batches busy(set, 5, 42);
  take(busy, 11);
  busy.restore(epoch, position);
  BOOST_TEST(take(busy, 9) == expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(epochs_and_seeds_give_different_orders) {
  const auto set = numbered_samples(50);
  data::shuffled_batches batches(set, 50, 3);
  const auto first = take(batches, 1);
  const auto second = take(batches, 1);
  BOOST_TEST((first != second));
  BOOST_TEST((first != iota(50)));
  data::shuffled_batches other_seed(set, 50, 4);
  BOOST_TEST((take(other_seed, 1) != first));
  data::shuffled_batches same_seed(set, 50, 3);
  BOOST_TEST(take(same_seed, 1) == first, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(invalid_arguments_are_refused) {
  const auto set = numbered_samples(10);
  BOOST_TEST(throws<invalid_argument_error>([&] { data::shuffled_batches(set, 0, 1); }));
  BOOST_TEST(throws<invalid_argument_error>([&] { data::shuffled_batches(set, 11, 1, true); }));
  const auto empty = numbered_samples(0);
  BOOST_TEST(throws<invalid_argument_error>([&] { data::shuffled_batches(empty, 4, 1); }));
  data::shuffled_batches batches(set, 4, 1);
  BOOST_TEST(throws<invalid_argument_error>([&] { batches.restore(0, 10); }));
  BOOST_TEST(throws<invalid_argument_error>([&] { batches.restore(-1, 0); }));
}

BOOST_AUTO_TEST_CASE(slices_are_in_order) {
  const auto set = numbered_samples(10);
  const data::batch b = data::slice(set, 3, 7);
  BOOST_TEST(samples_of(b) == (std::vector<std::int64_t>{3, 4, 5, 6}), boost::test_tools::per_element());
  BOOST_TEST(data::slice(set, 10, 10).x.dim(0) == 0);
  BOOST_TEST(throws<invalid_argument_error>([&] { data::slice(set, 8, 11); }));
  BOOST_TEST(throws<invalid_argument_error>([&] { data::slice(set, 5, 4); }));
}

BOOST_AUTO_TEST_SUITE_END()
