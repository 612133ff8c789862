// Test helpers for error messages: the text of the error a call throws, and substring checks on it.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include <boost/test/unit_test.hpp>

namespace dmoe_test {

// The message of the `Error` that `f` throws; fails the test when it throws none.
template <class Error>
std::string error_text(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  BOOST_FAIL("the expected error was not thrown");
  return {};
}

inline bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

}  // namespace dmoe_test
