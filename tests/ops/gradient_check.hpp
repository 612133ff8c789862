// Test support for the compute tests: finite-difference gradients and closeness checks.
#pragma once

#include <dmoe/nn/module.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dmoe::test {

// sum(y * w) in double: a scalar loss whose gradient with respect to y is w.
inline double weighted_sum(const tensor& y, const tensor& w) {
  BOOST_REQUIRE(y.shape() == w.shape());
  double s = 0.0;
  const auto a = y.span<float>();
  const auto b = w.span<float>();
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Central differences of loss() with respect to every element of x (changed in place and restored).
// The step actually taken is measured in float, so rounding of x + eps does not bias the quotient.
inline std::vector<double> numeric_gradient(tensor& x, const std::function<double()>& loss, float eps = 1e-2f) {
  std::vector<double> g(static_cast<std::size_t>(x.numel()));
  float* p = x.data<float>();
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const float original = p[i];
    const float up = original + eps, down = original - eps;
    p[i] = up;
    const double l_up = loss();
    p[i] = down;
    const double l_down = loss();
    p[i] = original;
    g[static_cast<std::size_t>(i)] = (l_up - l_down) / (static_cast<double>(up) - static_cast<double>(down));
  }
  return g;
}

// Analytic and numeric gradients agree: max |a - n| <= tol * max(max |n|, 1e-3).
inline void check_gradient(const std::string& what, const tensor& analytic, const std::vector<double>& numeric,
                           double tol = 1e-2) {
  BOOST_REQUIRE_EQUAL(static_cast<std::size_t>(analytic.numel()), numeric.size());
  double worst = 0.0, scale = 1e-3;
  std::size_t worst_at = 0;
  const auto a = analytic.span<float>();
  for (std::size_t i = 0; i < numeric.size(); ++i) {
    scale = std::max(scale, std::abs(numeric[i]));
    const double e = std::abs(static_cast<double>(a[i]) - numeric[i]);
    if (e > worst) worst = e, worst_at = i;
  }
  BOOST_TEST(worst <= tol * scale, what << ": element " << worst_at << " analytic " << a[worst_at] << " numeric "
                                        << numeric[worst_at] << " (scale " << scale << ")");
}

// Every element of a equals the reference within tol (absolute, plus tol relative).
inline void check_close(const std::string& what, const tensor& a, const std::vector<double>& reference,
                        double tol = 1e-4) {
  BOOST_REQUIRE_EQUAL(static_cast<std::size_t>(a.numel()), reference.size());
  const auto v = a.span<float>();
  for (std::size_t i = 0; i < reference.size(); ++i) {
    if (std::abs(v[i] - reference[i]) > tol * (1.0 + std::abs(reference[i]))) {
      BOOST_TEST(false, what << ": element " << i << " is " << v[i] << " but should be " << reference[i]);
      return;
    }
  }
}

// Checks a module's backward against finite differences: dx (when x is f32) and every parameter's gradient.
// The loss is sum(forward(x) * w) for a fixed random w, so backward(w) gives the analytic gradients.
inline void check_module_gradients(nn::module& m, tensor x, std::uint64_t seed, double tol = 1e-2,
                                   float eps = 1e-2f) {
  random_engine gen(seed);
  const tensor y0 = m.forward(x).clone();
  const tensor w = tensor::normal(y0.shape(), gen);
  m.zero_grad();
  m.forward(x);
  const tensor dx = m.backward(w).clone();
  std::vector<tensor> grads;
  for (auto& p : m.parameters()) grads.push_back(p.grad->clone());
  const auto loss = [&] { return weighted_sum(m.forward(x), w); };
  if (x.dtype() == dtype::f32) check_gradient("dx", dx, numeric_gradient(x, loss, eps), tol);
  auto params = m.parameters();
  for (std::size_t i = 0; i < params.size(); ++i)
    check_gradient("d" + params[i].name, grads[i], numeric_gradient(*params[i].value, loss, eps), tol);
}

}  // namespace dmoe::test
