// Tests of dmoe/core/boxed.hpp: a heap-held member with value semantics for copies and a safe moved-from state.
#include <dmoe/core/boxed.hpp>

#include <boost/test/unit_test.hpp>

#include <map>
#include <string>
#include <utility>

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

BOOST_AUTO_TEST_CASE(moves_steal_and_the_source_can_be_assigned_again) {
  boxed<text_map> a;
  (*a)["x"] = 1;
  const text_map* held = &*a;
  boxed<text_map> b = std::move(a);
  BOOST_TEST(&*b == held);  // the value itself moved, not a copy
  BOOST_TEST(b->at("x") == 1);

  a = b;  // copy-assigning into the moved-from box gives it a value again
  (*a)["z"] = 5;
  BOOST_TEST(a->size() == 2u);
  BOOST_TEST(b->size() == 1u);

  boxed<text_map> c;
  c = std::move(a);
  BOOST_TEST(c->size() == 2u);
  a = std::move(c);  // moving back into a box that gave its value away
  BOOST_TEST(a->at("z") == 5);
}

BOOST_AUTO_TEST_SUITE_END()
