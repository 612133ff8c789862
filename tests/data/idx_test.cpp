// Tests of dmoe/data/idx.hpp: IDX files read back exactly, plain or gzip'd; damaged, truncated and oversized files
// refused with messages naming the file; Fashion-MNIST loaded from synthetic files (and the real ones when present).
#include <dmoe/data/idx.hpp>

#include <error_text.hpp>
#include <temp_dir.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include <unistd.h>
#include <zlib.h>

using namespace dmoe;
namespace fs = std::filesystem;

namespace {

using dmoe_test::temp_dir;

// An IDX file's bytes: magic (0, 0, type, rank), big-endian u32 dims, then `values`.
std::string idx_bytes(std::uint8_t type, const std::vector<std::uint32_t>& dims, const std::vector<std::uint8_t>& values) {
  std::string out{'\0', '\0', static_cast<char>(type), static_cast<char>(dims.size())};
  for (std::uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(d >> shift));
  out.append(values.begin(), values.end());
  return out;
}

std::vector<std::uint8_t> pattern(std::size_t n, unsigned step = 37) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(i * step % 256);
  return v;
}

void write_plain(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
void write_gzip(const fs::path& p, const std::string& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  BOOST_TEST_REQUIRE(f != nullptr);
  BOOST_TEST_REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  BOOST_TEST_REQUIRE(gzclose(f) == Z_OK);
}
std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

using dmoe_test::contains;
using dmoe_test::error_text;

// `n` synthetic 28x28 images with labels i % 10, as the four Fashion-MNIST files would hold them.
void write_fashion_split(const fs::path& dir, std::string_view prefix, std::uint32_t n) {
  std::vector<std::uint8_t> labels;
  for (std::uint32_t i = 0; i < n; ++i) labels.push_back(static_cast<std::uint8_t>(i % 10));
  write_gzip(dir / (std::string(prefix) + "-images-idx3-ubyte.gz"), idx_bytes(0x08, {n, 28, 28}, pattern(n * 784)));
  write_gzip(dir / (std::string(prefix) + "-labels-idx1-ubyte.gz"), idx_bytes(0x08, {n}, labels));
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(data_idx, temp_dir)

BOOST_AUTO_TEST_CASE(plain_and_gzip_files_read_back_exactly) {
  const auto values = pattern(3 * 4 * 5);
  write_plain(path / "a.idx", idx_bytes(0x08, {3, 4, 5}, values));
  write_gzip(path / "a.idx.gz", idx_bytes(0x08, {3, 4, 5}, values));
  for (const char* name : {"a.idx", "a.idx.gz"}) {
    const data::idx_array a = data::read_idx(path / name);
    BOOST_TEST(a.dims == (std::vector<std::int64_t>{3, 4, 5}), boost::test_tools::per_element());
    BOOST_TEST(a.values == values, boost::test_tools::per_element());
  }
  // An empty data set is a valid file.
  write_plain(path / "empty.idx", idx_bytes(0x08, {0, 28, 28}, {}));
  const data::idx_array empty = data::read_idx(path / "empty.idx");
  BOOST_TEST(empty.dims == (std::vector<std::int64_t>{0, 28, 28}), boost::test_tools::per_element());
  BOOST_TEST(empty.values.empty());
}

BOOST_AUTO_TEST_CASE(truncated_files_are_refused) {
  const std::string bytes = idx_bytes(0x08, {6, 10}, pattern(60));
  write_plain(path / "short.idx", bytes.substr(0, bytes.size() - 10));
  std::string text = error_text<corrupt_error>([&] { data::read_idx(path / "short.idx"); });
  BOOST_TEST(contains(text, (path / "short.idx").string()), text);
  BOOST_TEST(contains(text, "truncated: expected 60 bytes of data, found 50"), text);

  write_plain(path / "header.idx", bytes.substr(0, 6));
  text = error_text<corrupt_error>([&] { data::read_idx(path / "header.idx"); });
  BOOST_TEST(contains(text, "truncated header: 2 dimensions need 8 bytes, found 2"), text);

  write_gzip(path / "short.gz", bytes.substr(0, bytes.size() - 10));
  text = error_text<corrupt_error>([&] { data::read_idx(path / "short.gz"); });
  BOOST_TEST(contains(text, "truncated: expected 60 bytes of data, found 50"), text);

  // A gzip file cut short: its stream ends early.
  write_gzip(path / "cut.gz", idx_bytes(0x08, {100, 100}, pattern(10000, 7)));
  const std::string gz = file_bytes(path / "cut.gz");
  write_plain(path / "cut.gz", gz.substr(0, gz.size() / 2));
  text = error_text<corrupt_error>([&] { data::read_idx(path / "cut.gz"); });
  BOOST_TEST(contains(text, (path / "cut.gz").string()), text);
}

BOOST_AUTO_TEST_CASE(wrong_magic_and_element_type_are_refused) {
  write_plain(path / "magic.idx", std::string("\x01\x00\x08\x01\x00\x00\x00\x00", 8));
  std::string text = error_text<corrupt_error>([&] { data::read_idx(path / "magic.idx"); });
  BOOST_TEST(contains(text, (path / "magic.idx").string()), text);
  BOOST_TEST(contains(text, "wrong magic number 01 00 08 01"), text);

  write_plain(path / "floats.idx", idx_bytes(0x0D, {2}, pattern(8)));
  text = error_text<corrupt_error>([&] { data::read_idx(path / "floats.idx"); });
  BOOST_TEST(contains(text, (path / "floats.idx").string()), text);
  BOOST_TEST(contains(text, "element type 0x0d (float) is not supported"), text);

  write_plain(path / "rank.idx", idx_bytes(0x08, {1, 1, 1, 1, 1}, pattern(1)));
  text = error_text<corrupt_error>([&] { data::read_idx(path / "rank.idx"); });
  BOOST_TEST(contains(text, "5 dimensions, outside the accepted 1..4"), text);
}

BOOST_AUTO_TEST_CASE(data_longer_than_the_header_says_is_refused) {
  write_gzip(path / "long.gz", idx_bytes(0x08, {6, 10}, pattern(61)));
  const std::string text = error_text<corrupt_error>([&] { data::read_idx(path / "long.gz"); });
  BOOST_TEST(contains(text, (path / "long.gz").string()), text);
  BOOST_TEST(contains(text, "trailing data after 60 bytes"), text);
}

BOOST_AUTO_TEST_CASE(oversized_header_is_refused_before_allocating) {
  // 2^128 elements claimed by a 24-byte file: allocating first would throw bad_alloc, not corrupt_error.
  write_plain(path / "huge.idx", idx_bytes(0x08, {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {}));
  std::string text = error_text<corrupt_error>([&] { data::read_idx(path / "huge.idx"); });
  BOOST_TEST(contains(text, (path / "huge.idx").string()), text);
  BOOST_TEST(contains(text, "exceed the limit of 2147483648 elements"), text);

  // A configured limit applies even when all the data is there.
  write_plain(path / "big.idx", idx_bytes(0x08, {2, 60}, pattern(120)));
  text = error_text<corrupt_error>([&] { data::read_idx(path / "big.idx", {.max_elements = 100}); });
  BOOST_TEST(contains(text, "dimensions 2x60 exceed the limit of 100 elements"), text);
  BOOST_TEST(data::read_idx(path / "big.idx", {.max_elements = 120}).values.size() == 120u);
}

BOOST_AUTO_TEST_CASE(missing_file_is_a_system_error_naming_it) {
  int errno_value = 0;
  std::string text;
  try {
    data::read_idx(path / "absent.idx.gz");
  } catch (const system_error& e) {
    errno_value = e.errno_value();
    text = e.what();
  }
  BOOST_TEST(errno_value == ENOENT);
  BOOST_TEST(contains(text, (path / "absent.idx.gz").string()), text);
}

BOOST_AUTO_TEST_CASE(damaged_gzip_stream_is_refused) {
  write_gzip(path / "a.gz", idx_bytes(0x08, {100, 100}, pattern(10000, 7)));
  const std::string good = file_bytes(path / "a.gz");

  std::string middle = good;
  for (std::size_t i = middle.size() / 2; i < middle.size() / 2 + 8; ++i) middle[i] = static_cast<char>(~middle[i]);
  write_plain(path / "middle.gz", middle);
  std::string text = error_text<corrupt_error>([&] { data::read_idx(path / "middle.gz"); });
  BOOST_TEST(contains(text, (path / "middle.gz").string()), text);

  // A wrong CRC-32 in the gzip trailer: the data decompresses but fails zlib's check.
  std::string crc = good;
  crc[crc.size() - 8] = static_cast<char>(~crc[crc.size() - 8]);
  write_plain(path / "crc.gz", crc);
  text = error_text<corrupt_error>([&] { data::read_idx(path / "crc.gz"); });
  BOOST_TEST(contains(text, (path / "crc.gz").string()), text);
  BOOST_TEST(contains(text, "damaged gzip stream"), text);
}

BOOST_AUTO_TEST_CASE(labelled_images_become_scaled_tensors) {
  const auto pixels = pattern(4 * 2 * 3);
  write_gzip(path / "images.gz", idx_bytes(0x08, {4, 2, 3}, pixels));
  write_gzip(path / "labels.gz", idx_bytes(0x08, {4}, {3, 0, 2, 1}));
  const data::labelled_images set = data::read_labelled_images(path / "images.gz", path / "labels.gz", 4);
  BOOST_TEST(set.size() == 4);
  BOOST_TEST(set.rows == 2);
  BOOST_TEST(set.cols == 3);
  BOOST_TEST(set.images.shape() == (shape{4, 6}));
  BOOST_TEST(set.labels.shape() == (shape{4}));
  BOOST_TEST(set.labels.dtype() == dtype::i64);
  for (std::int64_t i = 0; i < 4; ++i)
    for (std::int64_t j = 0; j < 6; ++j)
      BOOST_TEST(set.images.at<float>(i, j) == static_cast<float>(pixels[static_cast<std::size_t>(i * 6 + j)]) / 255.0f);
  const std::vector<std::int64_t> labels(set.labels.data<std::int64_t>(), set.labels.data<std::int64_t>() + 4);
  BOOST_TEST(labels == (std::vector<std::int64_t>{3, 0, 2, 1}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(labelled_images_with_mismatched_counts_or_bad_labels_are_refused) {
  write_plain(path / "images.idx", idx_bytes(0x08, {5, 2, 2}, pattern(20)));
  write_plain(path / "labels.idx", idx_bytes(0x08, {4}, {0, 1, 2, 3}));
  std::string text = error_text<corrupt_error>(
      [&] { data::read_labelled_images(path / "images.idx", path / "labels.idx", 10); });
  BOOST_TEST(contains(text, (path / "images.idx").string()), text);
  BOOST_TEST(contains(text, (path / "labels.idx").string()), text);
  BOOST_TEST(contains(text, "holds 5 images but"), text);
  BOOST_TEST(contains(text, "holds 4 labels"), text);

  write_plain(path / "labels.idx", idx_bytes(0x08, {5}, {0, 1, 2, 12, 3}));
  text = error_text<corrupt_error>([&] { data::read_labelled_images(path / "images.idx", path / "labels.idx", 10); });
  BOOST_TEST(contains(text, (path / "labels.idx").string()), text);
  BOOST_TEST(contains(text, "label 12 at index 3 is not below the 10 classes"), text);

  text = error_text<corrupt_error>([&] { data::read_labelled_images(path / "labels.idx", path / "labels.idx", 10); });
  BOOST_TEST(contains(text, "has 1 dimensions, not 3"), text);
}

BOOST_AUTO_TEST_CASE(fashion_mnist_loads_from_a_directory) {
  write_fashion_split(path, "train", 5);
  write_fashion_split(path, "t10k", 3);
  const data::fashion_mnist set = data::load_fashion_mnist(path);
  BOOST_TEST(set.train.size() == 5);
  BOOST_TEST(set.test.size() == 3);
  BOOST_TEST(set.train.images.shape() == (shape{5, 784}));
  BOOST_TEST(set.test.rows == 28);
  BOOST_TEST(set.test.cols == 28);
  BOOST_TEST(set.train.labels.at<std::int64_t>(4) == 4);
  BOOST_TEST(set.test.images.at<float>(2, 783) == static_cast<float>(pattern(3 * 784)[3 * 784 - 1]) / 255.0f);
}

BOOST_AUTO_TEST_CASE(fashion_mnist_names_a_missing_file_and_its_package) {
  write_fashion_split(path, "train", 5);
  write_fashion_split(path, "t10k", 3);
  fs::remove(path / "t10k-labels-idx1-ubyte.gz");
  int errno_value = 0;
  std::string text;
  try {
    data::load_fashion_mnist(path);
  } catch (const system_error& e) {
    errno_value = e.errno_value();
    text = e.what();
  }
  BOOST_TEST(errno_value == ENOENT);
  BOOST_TEST(contains(text, (path / "t10k-labels-idx1-ubyte.gz").string()), text);
  BOOST_TEST(contains(text, "is missing"), text);
  BOOST_TEST(contains(text, "apt-get install dataset-fashion-mnist"), text);
}

BOOST_AUTO_TEST_CASE(fashion_mnist_names_a_damaged_file_and_the_remedy) {
  write_fashion_split(path, "train", 5);
  write_fashion_split(path, "t10k", 3);
  const fs::path images = path / "train-images-idx3-ubyte.gz";
  const std::string bytes = file_bytes(images);
  write_plain(images, bytes.substr(0, bytes.size() - 8));  // the gzip trailer is gone
  std::string text = error_text<corrupt_error>([&] { data::load_fashion_mnist(path); });
  BOOST_TEST(contains(text, images.string()), text);
  BOOST_TEST(contains(text, "apt-get install --reinstall dataset-fashion-mnist"), text);

  write_gzip(images, idx_bytes(0x08, {5, 14, 56}, pattern(5 * 784)));
  text = error_text<corrupt_error>([&] { data::load_fashion_mnist(path); });
  BOOST_TEST(contains(text, "holds 14x56 images, not 28x28"), text);
}

BOOST_AUTO_TEST_CASE(real_fashion_mnist_loads_when_installed) {
  if (!fs::exists(data::fashion_mnist_dir)) {
    BOOST_TEST_MESSAGE("skipped: " << data::fashion_mnist_dir << " is not there (package "
                                   << data::fashion_mnist_package << ")");
    return;
  }
  const data::fashion_mnist set = data::load_fashion_mnist();
  BOOST_TEST(set.train.size() == 60000);
  BOOST_TEST(set.test.size() == 10000);
  BOOST_TEST(set.train.rows == 28);
  BOOST_TEST(set.train.cols == 28);
  for (const data::labelled_images* split : {&set.train, &set.test}) {
    const std::int64_t* labels = split->labels.data<std::int64_t>();
    BOOST_TEST(std::all_of(labels, labels + split->size(), [](std::int64_t l) { return l >= 0 && l < 10; }));
  }
  BOOST_TEST(set.train.labels.at<std::int64_t>(0) == 9);  // "ankle boot", as the data set's README shows
}

BOOST_AUTO_TEST_SUITE_END()
