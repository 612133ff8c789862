// Tests of dmoe/core/boxed.hpp: a heap-held member with value semantics: deep copies, moves that leave an empty value.
#include <dmoe/core/boxed.hpp>

#include <boost/test/unit_test.hpp>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

using dmoe::detail::boxed;

BOOST_AUTO_TEST_SUITE(core_boxed)

using text_map = std::map<std::string, int>;

BOOST_AUTO_TEST_CASE(starts_empty_and_reaches_its_value) {
  boxed<text_map> m;
  BOOST_TEST(m->empty());
  (*m)["a"] = 1;
  m->emplace("b", 2);
  const boxed<text_map>& view = m;
  BOOST_TEST(view->size() == 2u);
  BOOST_TEST(view->at("b") == 2);
}

BOOST_AUTO_TEST_CASE(copies_are_deep) {
  boxed<text_map> a;
  (*a)["x"] = 1;
  boxed<text_map> b = a;
  (*b)["x"] = 2;
  BOOST_TEST(a->at("x") == 1);
  BOOST_TEST(b->at("x") == 2);
  boxed<text_map> c;
  c = a;
  (*a)["y"] = 3;
  BOOST_TEST(c->size() == 1u);
  const boxed<text_map>& same = c;
  c = same;  // self-assignment keeps the value
  BOOST_TEST(c->at("x") == 1);
}

BOOST_AUTO_TEST_CASE(moves_steal_the_value_and_leave_the_source_empty_and_usable) {
  boxed<text_map> a;
  (*a)["x"] = 1;
  const text_map* held = &*a;
  boxed<text_map> b = std::move(a);
  BOOST_TEST(&*b == held);  // the value itself moved, not a copy
  BOOST_TEST(b->at("x") == 1);

  // The moved-from box reads as empty, copies as empty, and is written again.
  const boxed<text_map>& moved_from = a;
  BOOST_TEST(moved_from->empty());
  boxed<text_map> copy_of_empty = a;
  BOOST_TEST(copy_of_empty->empty());
  (*a)["y"] = 2;
  BOOST_TEST(a->size() == 1u);
  BOOST_TEST(b->size() == 1u);

  boxed<text_map> c;
  c = a;  // copy-assignment from a box that was refilled
  BOOST_TEST(c->at("y") == 2);
  boxed<text_map> d = std::move(c);
  c = d;  // copy-assignment into a moved-from box
  BOOST_TEST(c->at("y") == 2);
}

BOOST_AUTO_TEST_CASE(move_assignment_releases_the_targets_old_value) {
  auto token = std::make_shared<int>(7);
  boxed<std::vector<std::shared_ptr<int>>> target;
  target->push_back(token);
  boxed<std::vector<std::shared_ptr<int>>> source;
  target = std::move(source);
  BOOST_TEST(token.use_count() == 1);  // the old value is gone, not parked in the source
  BOOST_TEST(target->empty());
  BOOST_TEST(std::as_const(source)->empty());
  boxed<std::vector<std::shared_ptr<int>>> other;
  other = std::move(source);  // moving from an already moved-from box gives an empty, usable value
  BOOST_TEST(other->empty());
  other->push_back(token);
  BOOST_TEST(other->size() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()
