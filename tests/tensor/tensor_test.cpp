// Tests of dmoe/tensor/tensor.hpp: storage, views, element access, initialisers and shape errors.
#include <dmoe/tensor/tensor.hpp>

#include <boost/test/unit_test.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>  // fmt::format_error

using namespace dmoe;

BOOST_AUTO_TEST_SUITE(tensor_tensor)

BOOST_AUTO_TEST_CASE(zero_filled_aligned_storage) {
  tensor t(shape{3, 5});
  BOOST_TEST(t.numel() == 15);
  BOOST_TEST(t.nbytes() == 60u);
  BOOST_TEST(t.dtype() == dtype::f32);
  BOOST_TEST(t.is_host());
  BOOST_TEST(reinterpret_cast<std::uintptr_t>(t.data<float>()) % 64 == 0u);
  for (float v : t.span<float>()) BOOST_TEST(v == 0.0f);
  tensor e;
  BOOST_TEST(e.empty());
  BOOST_TEST(e.numel() == 0);
}

BOOST_AUTO_TEST_CASE(copies_share_storage_and_clone_is_deep) {
  tensor a = tensor::full(shape{2, 2}, 1.0f);
  tensor b = a;
  b.at(0, 1) = 7.0f;
  BOOST_TEST(a.at(0, 1) == 7.0f);
  tensor c = a.clone();
  c.at(0, 1) = 3.0f;
  BOOST_TEST(a.at(0, 1) == 7.0f);
  BOOST_TEST(!c.shares_storage_with(a));
}

BOOST_AUTO_TEST_CASE(row_views_share_storage) {
  tensor t(shape{4, 3});
  for (std::int64_t i = 0; i < 4; ++i)
    for (std::int64_t j = 0; j < 3; ++j) t.at(i, j) = static_cast<float>(10 * i + j);
  tensor middle = t.rows(1, 3);
  BOOST_TEST((middle.shape() == shape{2, 3}));
  BOOST_TEST(middle.at(0, 0) == 10.0f);
  middle.at(1, 2) = -1.0f;
  BOOST_TEST(t.at(2, 2) == -1.0f);
  tensor r = t.row(3);
  BOOST_TEST((r.shape() == shape{3}));
  BOOST_TEST(r.at(1) == 31.0f);
  BOOST_TEST(t.rows(4, 4).numel() == 0);
  BOOST_CHECK_THROW(t.rows(2, 5), shape_error);
  BOOST_CHECK_THROW(t.rows(3, 2), shape_error);
  // A view keeps its storage alive after the tensor it came from is gone.
  tensor kept;
  {
    tensor temporary = tensor::full(shape{8, 2}, 5.0f);
    kept = temporary.rows(6, 8);
  }
  BOOST_TEST(kept.at(1, 1) == 5.0f);
}

BOOST_AUTO_TEST_CASE(reshape_and_matrix_view) {
  tensor t = tensor::from(shape{2, 3, 4}, std::initializer_list<float>{0, 1, 2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                                                       12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23});
  tensor m = t.as_matrix();
  BOOST_TEST((m.shape() == shape{6, 4}));
  BOOST_TEST(m.at(5, 3) == 23.0f);
  BOOST_TEST(t.at(1, 2, 3) == 23.0f);
  BOOST_CHECK_THROW(t.reshape(shape{5, 5}), shape_error);
}

BOOST_AUTO_TEST_CASE(checked_element_access) {
  tensor t(shape{2, 3});
  BOOST_CHECK_THROW(t.at(2, 0), shape_error);
  BOOST_CHECK_THROW(t.at(0), shape_error);
  BOOST_CHECK_THROW(t.data<std::int64_t>(), invalid_argument_error);
  tensor ids(shape{3}, dtype::i64);
  ids.at<std::int64_t>(2) = 9;
  BOOST_TEST(ids.span<std::int64_t>()[2] == 9);
  BOOST_TEST(ids.nbytes() == 24u);
}

BOOST_AUTO_TEST_CASE(seeded_random_initialisers) {
  random_engine g1(42), g2(42), g3(43);
  tensor a = tensor::normal(shape{1000}, g1, 1.0f, 2.0f);
  tensor b = tensor::normal(shape{1000}, g2, 1.0f, 2.0f);
  tensor c = tensor::normal(shape{1000}, g3, 1.0f, 2.0f);
  BOOST_TEST(std::equal(a.span<float>().begin(), a.span<float>().end(), b.span<float>().begin()));
  BOOST_TEST(!std::equal(a.span<float>().begin(), a.span<float>().end(), c.span<float>().begin()));
  double sum = 0, sq = 0;
  for (float v : a.span<float>()) sum += v, sq += double(v) * v;
  const double mean = sum / 1000, var = sq / 1000 - mean * mean;
  BOOST_TEST(std::abs(mean - 1.0) < 0.25);
  BOOST_TEST(std::abs(std::sqrt(var) - 2.0) < 0.25);
  tensor u = tensor::uniform(shape{1000}, g1, -1.0f, 3.0f);
  for (float v : u.span<float>()) BOOST_TEST((v >= -1.0f && v < 3.0f));
}

BOOST_AUTO_TEST_CASE(resize_reuses_only_unshared_storage) {
  tensor t(shape{4, 4});
  const float* before = t.data<float>();
  t.resize(shape{2, 4});
  BOOST_TEST(t.data<float>() == before);
  tensor held = t;
  t.resize(shape{2, 4});
  BOOST_TEST(t.data<float>() != held.data<float>());
  t.resize(shape{100});
  BOOST_TEST(t.numel() == 100);
}

// This executable does not link dmoe::cuda: device tensors and devices are refused with the reason.
BOOST_AUTO_TEST_CASE(device_storage_is_refused_clearly) {
  try {
    tensor t(shape{2}, dtype::f32, device::cuda);
    BOOST_FAIL("device storage was allocated");
  } catch (const device_error& e) {
    BOOST_TEST(std::string(e.what()).find("no CUDA backend") != std::string::npos);
  }
  BOOST_CHECK_THROW(tensor(shape{2}).to(device::cuda), device_error);
  BOOST_CHECK(!cuda_available());
  BOOST_CHECK_NO_THROW(use_device(parse_device("cpu")));
  BOOST_CHECK_THROW(use_device(parse_device("cuda:0")), device_error);
  BOOST_CHECK_NO_THROW(check_device(parse_device("cpu")));
  BOOST_CHECK_THROW(check_device(parse_device("cuda")), device_error);
  try {
    use_device(parse_device("cuda:2"));
    BOOST_FAIL("cuda:2 was used without a CUDA backend");
  } catch (const device_error& e) {
    BOOST_TEST(std::string(e.what()).find("cuda:2") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(devices_are_parsed_by_name) {
  BOOST_TEST(parse_device("cpu").kind == device::host);
  BOOST_TEST(parse_device("host").kind == device::host);
  BOOST_TEST((parse_device("cuda") == device_choice{device::cuda, 0}));
  BOOST_TEST((parse_device("cuda:3") == device_choice{device::cuda, 3}));
  BOOST_TEST(parse_device("cuda:3").text() == "cuda:3");
  for (const char* bad : {"", "gpu", "cuda:", "cuda:-1", "cuda:1x", "cuda:99999", "CUDA:0", " cpu"})
    BOOST_CHECK_THROW(parse_device(bad), invalid_argument_error);
  // A host tensor's to(host) shares its storage; copy_from stays a host copy.
  const tensor t = tensor::full(shape{3}, 2.0f);
  BOOST_TEST(t.to(device::host).shares_storage_with(t));
}

BOOST_AUTO_TEST_CASE(shape_errors_name_both_shapes) {
  tensor a(shape{3, 4}), b(shape{5, 6});
  try {
    expect_same_shape("gemm", "a", a, "b", b);
    BOOST_FAIL("no error");
  } catch (const shape_error& e) {
    BOOST_TEST(std::string(e.what()) == "gemm: a is [3, 4] but b is [5, 6]");
  }
  BOOST_CHECK_THROW(a.copy_from(b), shape_error);
  BOOST_CHECK_THROW((shape{1, 2, 3, 4, 5, 6, 7}), shape_error);
  BOOST_CHECK_THROW((shape{2, -1}), shape_error);
}

BOOST_AUTO_TEST_CASE(shape_helpers) {
  shape s{2, 3, 4};
  BOOST_TEST(s.to_string() == "[2, 3, 4]");
  BOOST_TEST(s.outer() == 6);
  BOOST_TEST(s.inner() == 4);
  BOOST_TEST(s.dim(-1) == 4);
  BOOST_TEST((s.without_first() == shape{3, 4}));
  BOOST_TEST((shape{3, 4}.with_leading(2) == s));
  BOOST_TEST(shape{}.numel() == 1);
  BOOST_CHECK_THROW(s.dim(3), shape_error);
}

// Shapes and dtypes format with "{}" through <fmt/core.h> alone (dmoe's headers do not include <fmt/format.h>), and a
// format specifier is refused rather than ignored.
BOOST_AUTO_TEST_CASE(shapes_and_dtypes_format_as_their_text_and_refuse_specifiers) {
  BOOST_TEST(fmt::format("{} {}", shape{2, 3}, dtype::f16) == "[2, 3] f16");
  BOOST_TEST(fmt::format("{}", shape{}) == "[]");
  BOOST_CHECK_THROW(static_cast<void>(fmt::format(fmt::runtime("{:>8}"), shape{2})), fmt::format_error);
  BOOST_CHECK_THROW(static_cast<void>(fmt::format(fmt::runtime("{:x}"), dtype::f32)), fmt::format_error);
  const std::vector<int> values{3, 1, 4};
  BOOST_TEST(dmoe::detail::join_text(values, ".") == "3.1.4");
  BOOST_TEST(dmoe::detail::join_text(std::vector<int>{}, ", ") == "");
  const std::array<std::byte, 3> bytes{std::byte{0x00}, std::byte{0x7f}, std::byte{0xff}};
  BOOST_TEST(dmoe::detail::join_text(bytes, " ", "{:02x}") == "00 7f ff");
  BOOST_CHECK_THROW(static_cast<void>(dmoe::detail::join_text(values, " ", "{:s}")), fmt::format_error);
}

BOOST_AUTO_TEST_SUITE_END()
