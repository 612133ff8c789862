// LeCun's IDX files (MNIST, Fashion-MNIST) read through zlib, gzip'd or plain, with every header field checked.
//
// Format: magic (u8 0, u8 0, u8 element type, u8 number of dimensions), one big-endian u32 per dimension, then the
// elements in row-major order. Only unsigned bytes (type 0x08) are read. A dimension of 0 is accepted (an empty
// data set is a valid file); the product of the dimensions is checked against the limits before anything is
// allocated, and the data must be exactly that many bytes.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace data {

// Bounds a reader enforces on an IDX header before allocating.
struct idx_limits {
  std::int64_t max_elements = 1LL << 31;
  std::size_t max_dims = 4;
};

// The contents of an IDX file of unsigned bytes: its dimensions and its elements in row-major order.
struct idx_array {
  std::vector<std::int64_t> dims;
  std::vector<std::uint8_t> values;
};

// Reads an IDX file of unsigned bytes, gzip'd or plain. Throws system_error (with the errno) when the file cannot
// be opened or read, and corrupt_error naming the file and the problem: wrong magic number, an element type other
// than 0x08, a number of dimensions outside 1..max_dims, more elements than max_elements, truncated header or
// data, trailing data, a damaged gzip stream.
DMOE_DECL idx_array read_idx(const std::filesystem::path& path, const idx_limits& limits = {});

// Images with one class label each.
struct labelled_images {
  tensor images;  // f32 [n, rows * cols], pixel bytes scaled to [0, 1]
  tensor labels;  // i64 [n], each in [0, classes)
  std::int64_t rows = 0, cols = 0;

  std::int64_t size() const noexcept { return labels.numel(); }
};

// Reads an IDX image file (3-d: n, rows, cols) and its IDX label file (1-d: n). Besides read_idx's errors, throws
// corrupt_error when a file has the wrong number of dimensions, when the counts disagree (naming both files and
// counts) and when a label is not below `classes` (naming the file, the index and the value);
// invalid_argument_error when `classes` is not positive.
DMOE_DECL labelled_images read_labelled_images(const std::filesystem::path& images,
                                               const std::filesystem::path& labels, std::int64_t classes);

// Where Debian's package dataset-fashion-mnist installs the data set.
inline constexpr std::string_view fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";
inline constexpr std::string_view fashion_mnist_package = "dataset-fashion-mnist";

struct fashion_mnist {
  labelled_images train, test;
};

// Loads Fashion-MNIST (10 classes, 28x28 images, any number of them) from the four gzip'd IDX files in `dir`.
// A missing file throws system_error naming it and the Debian package that ships it; a damaged one throws
// corrupt_error naming it and the problem, and saying that reinstalling the package restores it.
DMOE_DECL fashion_mnist load_fashion_mnist(const std::filesystem::path& dir = fashion_mnist_dir);

}  // namespace data
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <algorithm>
#include <array>
#include <span>
#include <string>

#include <zlib.h>

DMOE_BEGIN_NAMESPACE
namespace data {
namespace detail {

// A gzFile closed on scope exit; reads gzip'd and plain files alike.
class gz_reader {
 public:
  explicit gz_reader(const std::filesystem::path& path) : path_(path) {
    errno = 0;
    file_ = ::gzopen(path.c_str(), "rbe");
    if (!file_) throw system_error(errno != 0 ? errno : ENOMEM, dmoe::format("opening IDX file {:?}", path.native()));
    ::gzbuffer(file_, 1u << 17);
  }
  gz_reader(const gz_reader&) = delete;
  gz_reader& operator=(const gz_reader&) = delete;
  ~gz_reader() { ::gzclose(file_); }

  // Reads until `out` is full or the data ends; returns the number of bytes read.
  std::size_t read(std::span<std::uint8_t> out) {
    std::size_t done = 0;
    while (done < out.size()) {
      const auto want = static_cast<unsigned>(std::min<std::size_t>(out.size() - done, std::size_t{1} << 30));
      const int got = ::gzread(file_, out.data() + done, want);
      if (got < 0) {
        const int saved_errno = errno;
        int code = Z_OK;
        const std::string text = error_text(&code);
        if (code == Z_ERRNO) throw system_error(saved_errno, dmoe::format("reading IDX file {:?}", path_.native()));
        throw corrupt_error(dmoe::format("IDX file {:?}: damaged gzip stream ({})", path_.native(), text));
      }
      if (got == 0) break;
      done += static_cast<std::size_t>(got);
    }
    return done;
  }

  // zlib's message for the last error, without the path it prefixes; empty when there was none.
  std::string error_text(int* code = nullptr) {
    int errnum = Z_OK;
    std::string text = ::gzerror(file_, &errnum);
    if (code) *code = errnum;
    const std::string prefix = path_.string() + ": ";
    if (text.starts_with(prefix)) text.erase(0, prefix.size());
    return errnum == Z_OK ? std::string() : text;
  }

 private:
  gzFile file_ = nullptr;
  const std::filesystem::path& path_;
};

inline std::string_view idx_type_name(std::uint8_t code) {
  switch (code) {
    case 0x09: return "signed byte";
    case 0x0B: return "short";
    case 0x0C: return "int";
    case 0x0D: return "float";
    case 0x0E: return "double";
    default: return "unknown";
  }
}

// Images and labels already read, checked against each other and turned into tensors.
inline labelled_images make_labelled_images(const idx_array& images, const std::filesystem::path& images_path,
                                            const idx_array& labels, const std::filesystem::path& labels_path,
                                            std::int64_t classes) {
  if (images.dims.size() != 3)
    throw corrupt_error(dmoe::format("IDX image file {:?} has {} dimensions, not 3 (count, rows, columns)", images_path.native(),
                                    images.dims.size()));
  if (labels.dims.size() != 1)
    throw corrupt_error(
        dmoe::format("IDX label file {:?} has {} dimensions, not 1", labels_path.native(), labels.dims.size()));
  const std::int64_t n = images.dims[0];
  if (labels.dims[0] != n)
    throw corrupt_error(dmoe::format("IDX files disagree: {:?} holds {} images but {:?} holds {} labels",
                                    images_path.native(), n, labels_path.native(), labels.dims[0]));
  labelled_images out;
  out.rows = images.dims[1];
  out.cols = images.dims[2];
  out.images = tensor::uninitialized(shape{n, out.rows * out.cols});
  out.labels = tensor::uninitialized(shape{n}, dtype::i64);
  std::ranges::transform(images.values, out.images.data<float>(),
                         [](std::uint8_t v) { return static_cast<float>(v) / 255.0f; });
  std::int64_t* label_data = out.labels.data<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) {
    label_data[i] = labels.values[static_cast<std::size_t>(i)];
    if (label_data[i] >= classes)
      throw corrupt_error(dmoe::format("IDX label file {:?}: label {} at index {} is not below the {} classes",
                                      labels_path.native(), label_data[i], i, classes));
  }
  return out;
}

}  // namespace detail

DMOE_DEF idx_array read_idx(const std::filesystem::path& path, const idx_limits& limits) {
  auto fail = [&](std::string_view what) { return corrupt_error(dmoe::format("IDX file {:?}: {}", path.native(), what)); };
  detail::gz_reader in(path);
  std::array<std::uint8_t, 4> magic{};
  if (const std::size_t got = in.read(magic); got < magic.size())
    throw fail(dmoe::format("truncated: {} bytes, shorter than the 4-byte magic number", got));
  if (magic[0] != 0 || magic[1] != 0)
    throw fail(dmoe::format("wrong magic number {}: not an IDX file", dmoe::detail::join_text(magic, " ", "{:02x}")));
  if (magic[2] != 0x08)
    throw fail(dmoe::format("element type {:#04x} ({}) is not supported, only unsigned bytes (0x08)", magic[2],
                           detail::idx_type_name(magic[2])));
  const std::size_t rank = magic[3];
  if (rank == 0 || rank > limits.max_dims)
    throw fail(dmoe::format("{} dimensions, outside the accepted 1..{}", rank, limits.max_dims));

  std::vector<std::uint8_t> header(4 * rank);
  if (const std::size_t got = in.read(header); got < header.size())
    throw fail(dmoe::format("truncated header: {} dimensions need {} bytes, found {}", rank, header.size(), got));
  idx_array out;
  std::int64_t elements = 1;
  for (std::size_t d = 0; d < rank; ++d) {
    const std::uint8_t* b = header.data() + 4 * d;
    const auto extent = static_cast<std::int64_t>(std::uint32_t{b[0]} << 24 | std::uint32_t{b[1]} << 16 |
                                                  std::uint32_t{b[2]} << 8 | std::uint32_t{b[3]});
    out.dims.push_back(extent);
    if (extent != 0 && elements > limits.max_elements / extent)
      throw fail(dmoe::format("dimensions {} exceed the limit of {} elements", dmoe::detail::join_text(out.dims, "x"),
                             limits.max_elements));
    elements *= extent;
  }

  // Memory is committed as the data arrives (1 MiB at a time), never on the header's word alone.
  const auto expected = static_cast<std::size_t>(elements);
  constexpr std::size_t chunk = std::size_t{1} << 20;
  std::size_t got = 0;
  while (got < expected) {
    const std::size_t want = std::min(chunk, expected - got);
    out.values.resize(got + want);
    const std::size_t n = in.read(std::span<std::uint8_t>(out.values.data() + got, want));
    got += n;
    if (n < want) break;
  }
  out.values.resize(got);
  if (got < expected) {
    const std::string zlib_text = in.error_text();
    throw fail(dmoe::format("truncated: expected {} bytes of data, found {}{}", elements, got,
                           zlib_text.empty() ? "" : dmoe::format(" ({})", zlib_text)));
  }
  std::array<std::uint8_t, 1> extra{};
  if (in.read(extra) != 0) throw fail(dmoe::format("trailing data after {} bytes", elements));
  // A gzip stream cut inside its trailer ends without an error from gzread, only with zlib's error state set.
  if (const std::string zlib_text = in.error_text(); !zlib_text.empty())
    throw fail(dmoe::format("damaged gzip stream ({})", zlib_text));
  return out;
}

DMOE_DEF labelled_images read_labelled_images(const std::filesystem::path& images,
                                              const std::filesystem::path& labels, std::int64_t classes) {
  if (classes <= 0) throw invalid_argument_error(dmoe::format("read_labelled_images: {} classes", classes));
  return detail::make_labelled_images(read_idx(images), images, read_idx(labels), labels, classes);
}

DMOE_DEF fashion_mnist load_fashion_mnist(const std::filesystem::path& dir) {
  const auto reinstall = dmoe::format("reinstalling Debian's package {0} restores it (apt-get install --reinstall {0})",
                                     fashion_mnist_package);
  auto read = [&](std::string_view name) {
    const std::filesystem::path path = dir / name;
    try {
      return read_idx(path);
    } catch (const system_error& e) {
      if (e.errno_value() != ENOENT) throw;
      throw system_error(ENOENT, dmoe::format("Fashion-MNIST file {0:?} is missing; Debian's package {1} ships it "
                                             "(apt-get install {1})",
                                             path.native(), fashion_mnist_package));
    } catch (const corrupt_error& e) {
      throw corrupt_error(dmoe::format("Fashion-MNIST: {}; {}", e.what(), reinstall));
    }
  };
  auto split = [&](std::string_view prefix) {
    const std::string images_name = dmoe::format("{}-images-idx3-ubyte.gz", prefix);
    const std::string labels_name = dmoe::format("{}-labels-idx1-ubyte.gz", prefix);
    const idx_array images = read(images_name);
    const idx_array labels = read(labels_name);
    try {
      labelled_images out = detail::make_labelled_images(images, dir / images_name, labels, dir / labels_name, 10);
      if (out.rows != 28 || out.cols != 28)
        throw corrupt_error(dmoe::format("IDX image file {:?} holds {}x{} images, not 28x28", (dir / images_name).native(),
                                        out.rows, out.cols));
      return out;
    } catch (const corrupt_error& e) {
      throw corrupt_error(dmoe::format("Fashion-MNIST: {}; {}", e.what(), reinstall));
    }
  };
  fashion_mnist out;
  out.train = split("train");
  out.test = split("t10k");
  return out;
}

}  // namespace data
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
