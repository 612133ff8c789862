// Checkpoint files: named tensors (parameters and optimizer state) in one versioned, checksummed, atomically written file.
//
// Format, version 1, little-endian:
//   header   magic "DMOECKPT" (8 bytes), u32 version, u32 flags (0), u64 file size, u64 entry count
//   entries  u32 name length, name bytes, u8 dtype, u8 rank, u16 reserved (0), i64 dims[rank],
//            u64 data length, data (row-major elements)
//   footer   u64 xxh64 (seed 0) of every byte before it
// The file size in the header tells a truncated file from a corrupt one. Readers check every
// length against the file and the configured limits before allocating anything.
#pragma once

#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/nn/optimizer.hpp>
#include <dmoe/nn/parameter.hpp>
#include <dmoe/tensor/tensor.hpp>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

DMOE_BEGIN_NAMESPACE
namespace nn {

inline constexpr char checkpoint_magic[8] = {'D', 'M', 'O', 'E', 'C', 'K', 'P', 'T'};
inline constexpr std::uint32_t checkpoint_version = 1;

// Bounds a reader enforces on fields it reads from a file.
struct checkpoint_limits {
  std::size_t max_name_length = 4096;
  std::uint64_t max_entries = std::uint64_t{1} << 20;
  std::uint64_t max_tensor_bytes = std::uint64_t{1} << 40;
};

// One named tensor of a checkpoint, in file order.
struct checkpoint_entry {
  std::string name;
  tensor value;
};

// Writes the entries to `path` atomically: a temporary file in the same directory is written,
// synced and renamed over `path`, then the directory is synced. On any error the temporary file
// is removed, an existing file at `path` is left as it was, and system_error is thrown.
DMOE_DECL void write_checkpoint(const std::filesystem::path& path, std::span<const checkpoint_entry> entries);

// Reads and verifies a checkpoint. Throws corrupt_error naming the file and the problem (wrong
// magic, unsupported version, truncated, checksum mismatch, a field over a limit), and
// system_error when the file cannot be read.
DMOE_DECL std::vector<checkpoint_entry> read_checkpoint(const std::filesystem::path& path,
                                                        const checkpoint_limits& limits = {});

// Saves parameters as "param.<name>" and, when given, the optimizer state as "optimizer.<name>" (tensors on a
// device are copied to the host first).
DMOE_DECL void save_checkpoint(const std::filesystem::path& path, const parameter_list& parameters,
                               const optimizer* opt = nullptr);

// Loads a checkpoint made by save_checkpoint into the parameters (and the optimizer's state).
// Every name, dtype and shape is checked before anything is copied, so a mismatch (shape_error
// naming both sides) leaves the module and optimizer untouched.
DMOE_DECL void load_checkpoint(const std::filesystem::path& path, const parameter_list& parameters,
                               optimizer* opt = nullptr, const checkpoint_limits& limits = {});

}  // namespace nn
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

#include <dmoe/core/binary_writer.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/hash.hpp>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

DMOE_BEGIN_NAMESPACE
namespace nn {

namespace detail {

inline constexpr std::size_t checkpoint_header_size = 8 + 4 + 4 + 8 + 8;
inline constexpr std::size_t checkpoint_footer_size = 8;
inline constexpr std::size_t checkpoint_io_chunk = std::size_t{1} << 20;

inline std::uint64_t checkpoint_entry_size(std::string_view name, const tensor& t) {
  return 4 + name.size() + 1 + 1 + 2 + 8 * t.rank() + 8 + t.nbytes();
}

// A file descriptor closed on scope exit.
class unique_fd {
 public:
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }
  // Closes now and reports the error close() returned (NFS and some file systems report write errors there).
  int close() noexcept {
    int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

// Writes all bytes, retrying after short writes and EINTR; hashes what it writes.
class checkpoint_file_writer {
 public:
  checkpoint_file_writer(int fd, const std::filesystem::path& path) : fd_(fd), path_(path) {}

  void write(const_byte_span bytes) {
    hash_.update(bytes);
    while (!bytes.empty()) {
      const std::size_t count = std::min(bytes.size(), checkpoint_io_chunk);
      const ssize_t written = ::write(fd_, bytes.data(), count);
      if (written < 0) {
        if (errno == EINTR) continue;
        throw system_error(errno, dmoe::format("writing checkpoint {:?}", path_.native()));
      }
      bytes = bytes.subspan(static_cast<std::size_t>(written));
    }
  }
  std::uint64_t digest() const noexcept { return hash_.digest(); }

 private:
  int fd_;
  const std::filesystem::path& path_;
  xxh64_stream hash_;
};

// Reads a whole file's bytes at given offsets, bounds-checked against its size.
class checkpoint_file_reader {
 public:
  checkpoint_file_reader(int fd, std::uint64_t size, const std::filesystem::path& path)
      : fd_(fd), size_(size), path_(path) {}

  void read_at(std::uint64_t offset, byte_span out) const {
    while (!out.empty()) {
      const std::size_t count = std::min(out.size(), checkpoint_io_chunk);
      const ssize_t got = ::pread(fd_, out.data(), count, static_cast<off_t>(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw system_error(errno, dmoe::format("reading checkpoint {:?}", path_.native()));
      }
      if (got == 0) throw corrupt_error(dmoe::format("checkpoint {:?}: truncated while reading", path_.native()));
      out = out.subspan(static_cast<std::size_t>(got));
      offset += static_cast<std::uint64_t>(got);
    }
  }
  std::uint64_t size() const noexcept { return size_; }

 private:
  int fd_;
  std::uint64_t size_;
  const std::filesystem::path& path_;
};

// Parses entries sequentially from a reader whose checksum already matched; every field is bounded.
class checkpoint_parser {
 public:
  checkpoint_parser(const checkpoint_file_reader& reader, std::uint64_t end, const std::filesystem::path& path)
      : reader_(reader), end_(end), path_(path) {}

  template <class T>
  T read(std::string_view field) {
    T value;
    reader_.read_at(take(sizeof(T), field), byte_span(reinterpret_cast<std::byte*>(&value), sizeof(T)));
    return value;
  }
  void read_into(byte_span out, std::string_view field) { reader_.read_at(take(out.size(), field), out); }
  std::uint64_t offset() const noexcept { return offset_; }
  std::uint64_t remaining() const noexcept { return end_ - offset_; }
  void set_offset(std::uint64_t offset) noexcept { offset_ = offset; }

  [[noreturn]] void fail(std::string_view what) const {
    throw corrupt_error(dmoe::format("checkpoint {:?}: {}", path_.native(), what));
  }

 private:
  std::uint64_t take(std::uint64_t count, std::string_view field) {
    if (count > remaining())
      fail(dmoe::format("{} of {} bytes at offset {} runs past the end of the entries ({} bytes left)", field, count,
                       offset_, remaining()));
    const std::uint64_t at = offset_;
    offset_ += count;
    return at;
  }

  const checkpoint_file_reader& reader_;
  std::uint64_t end_;
  const std::filesystem::path& path_;
  std::uint64_t offset_ = 0;
};

// A temporary name next to `path`, unique within this host.
inline std::filesystem::path checkpoint_temp_path(const std::filesystem::path& path) {
  static std::atomic<std::uint64_t> counter{0};
  return path.parent_path() /
         dmoe::format(".{}.tmp.{}.{}", path.filename().string(), ::getpid(), counter.fetch_add(1));
}

inline void fsync_directory(const std::filesystem::path& directory) {
  const std::filesystem::path dir = directory.empty() ? std::filesystem::path(".") : directory;
  unique_fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) throw system_error(errno, dmoe::format("opening directory {:?} to sync a checkpoint", dir.native()));
  if (::fsync(fd.get()) != 0) throw system_error(errno, dmoe::format("syncing directory {:?}", dir.native()));
}

}  // namespace detail

DMOE_DEF void write_checkpoint(const std::filesystem::path& path, std::span<const checkpoint_entry> entries) {
  std::uint64_t file_size = detail::checkpoint_header_size + detail::checkpoint_footer_size;
  for (const checkpoint_entry& e : entries) {
    if (e.value.empty() && e.value.numel() != 0)
      throw invalid_argument_error(dmoe::format("write_checkpoint {:?}: entry '{}' has no storage", path.native(), e.name));
    if (!e.value.is_host())
      throw invalid_argument_error(
          dmoe::format("write_checkpoint {:?}: entry '{}' is {}, copy it to the host first", path.native(), e.name,
                      e.value.description()));
    file_size += detail::checkpoint_entry_size(e.name, e.value);
  }

  const std::filesystem::path temp = detail::checkpoint_temp_path(path);
  detail::unique_fd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw system_error(errno, dmoe::format("creating checkpoint {:?}", temp.native()));
  try {
    detail::checkpoint_file_writer out(fd.get(), temp);
    byte_buffer buffer;
    binary_writer head(buffer);
    head.write_bytes(const_byte_span(reinterpret_cast<const std::byte*>(checkpoint_magic), 8));
    head.write(checkpoint_version);
    head.write(std::uint32_t{0});
    head.write(file_size);
    head.write(static_cast<std::uint64_t>(entries.size()));
    out.write(buffer);
    for (const checkpoint_entry& e : entries) {
      buffer.clear();
      binary_writer w(buffer);
      w.write_string(e.name);
      w.write(static_cast<std::uint8_t>(e.value.dtype()));
      w.write(static_cast<std::uint8_t>(e.value.rank()));
      w.write(std::uint16_t{0});
      for (std::int64_t d : e.value.shape().dims()) w.write(d);
      w.write(static_cast<std::uint64_t>(e.value.nbytes()));
      out.write(buffer);
      out.write(e.value.bytes());
    }
    buffer.clear();
    binary_writer(buffer).write(out.digest());
    out.write(buffer);
    if (::fsync(fd.get()) != 0) throw system_error(errno, dmoe::format("syncing checkpoint {:?}", temp.native()));
    if (fd.close() != 0) throw system_error(errno, dmoe::format("closing checkpoint {:?}", temp.native()));
    if (::rename(temp.c_str(), path.c_str()) != 0)
      throw system_error(errno, dmoe::format("renaming checkpoint {:?} to {:?}", temp.native(), path.native()));
  } catch (...) {
    ::unlink(temp.c_str());
    throw;
  }
  detail::fsync_directory(path.parent_path());
}

DMOE_DEF std::vector<checkpoint_entry> read_checkpoint(const std::filesystem::path& path,
                                                       const checkpoint_limits& limits) {
  detail::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw system_error(errno, dmoe::format("opening checkpoint {:?}", path.native()));
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0) throw system_error(errno, dmoe::format("reading checkpoint {:?}", path.native()));
  const auto size = static_cast<std::uint64_t>(info.st_size);
  auto fail = [&](std::string_view what) -> void {
    throw corrupt_error(dmoe::format("checkpoint {:?}: {}", path.native(), what));
  };
  detail::checkpoint_file_reader reader(fd.get(), size, path);

  if (size < detail::checkpoint_header_size)
    fail(dmoe::format("truncated: {} bytes, shorter than the {}-byte header", size, detail::checkpoint_header_size));
  std::array<std::byte, detail::checkpoint_header_size> header{};
  reader.read_at(0, header);
  if (std::memcmp(header.data(), checkpoint_magic, 8) != 0)
    fail(dmoe::format("wrong magic {}: not a dmoe checkpoint", dmoe::detail::join_text(std::span(header).first(8), " ", "{:02x}")));
  auto header_field = [&]<class T>(std::size_t offset, T) {
    T value;
    std::memcpy(&value, header.data() + offset, sizeof(T));
    return value;
  };
  const auto version = header_field(8, std::uint32_t{});
  const auto flags = header_field(12, std::uint32_t{});
  const auto stated_size = header_field(16, std::uint64_t{});
  const auto entry_count = header_field(24, std::uint64_t{});
  if (version != checkpoint_version)
    fail(dmoe::format("unsupported version {} (this build reads version {})", version, checkpoint_version));
  if (flags != 0) fail(dmoe::format("unknown flags {:#x}", flags));
  if (size < stated_size) fail(dmoe::format("truncated: {} bytes but the header says {}", size, stated_size));
  if (size > stated_size) fail(dmoe::format("{} bytes but the header says {} (trailing bytes)", size, stated_size));
  if (size < detail::checkpoint_header_size + detail::checkpoint_footer_size)
    fail(dmoe::format("truncated: {} bytes, too short for the footer", size));

  const std::uint64_t body_end = size - detail::checkpoint_footer_size;
  {
    xxh64_stream hash;
    std::vector<std::byte> chunk(std::min<std::uint64_t>(body_end, detail::checkpoint_io_chunk));
    for (std::uint64_t offset = 0; offset < body_end;) {
      const auto count = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), body_end - offset));
      reader.read_at(offset, byte_span(chunk.data(), count));
      hash.update(const_byte_span(chunk.data(), count));
      offset += count;
    }
    std::uint64_t stored = 0;
    reader.read_at(body_end, byte_span(reinterpret_cast<std::byte*>(&stored), sizeof stored));
    if (stored != hash.digest())
      fail(dmoe::format("checksum mismatch: stored {:016x}, computed {:016x}", stored, hash.digest()));
  }

  if (entry_count > limits.max_entries)
    fail(dmoe::format("{} entries exceed the limit of {}", entry_count, limits.max_entries));
  detail::checkpoint_parser in(reader, body_end, path);
  in.set_offset(detail::checkpoint_header_size);
  std::vector<checkpoint_entry> entries;
  std::map<std::string, std::size_t, std::less<>> seen;
  for (std::uint64_t i = 0; i < entry_count; ++i) {
    const auto name_length = in.read<std::uint32_t>("name length");
    if (name_length > limits.max_name_length)
      in.fail(dmoe::format("entry {}: name of {} bytes exceeds the limit of {}", i, name_length,
                          limits.max_name_length));
    std::string name(name_length, '\0');
    in.read_into(byte_span(reinterpret_cast<std::byte*>(name.data()), name.size()), "name");
    const auto dtype_code = in.read<std::uint8_t>("dtype");
    if (dtype_code > static_cast<std::uint8_t>(dtype::u8))
      in.fail(dmoe::format("entry '{}': unknown dtype code {}", name, dtype_code));
    const auto type = static_cast<dtype>(dtype_code);
    const auto rank = in.read<std::uint8_t>("rank");
    if (rank > shape::max_rank)
      in.fail(dmoe::format("entry '{}': rank {} exceeds the maximum {}", name, rank, shape::max_rank));
    if (in.read<std::uint16_t>("reserved") != 0) in.fail(dmoe::format("entry '{}': reserved field is not 0", name));
    std::array<std::int64_t, shape::max_rank> dims{};
    std::uint64_t numel = 1;
    bool overflow = false;
    for (std::size_t d = 0; d < rank; ++d) {
      dims[d] = in.read<std::int64_t>("dimension");
      if (dims[d] < 0) in.fail(dmoe::format("entry '{}': dimension {} is negative ({})", name, d, dims[d]));
      const auto extent = static_cast<std::uint64_t>(dims[d]);
      if (extent != 0 && numel > limits.max_tensor_bytes / extent) overflow = true;
      numel *= extent;
    }
    const auto data_length = in.read<std::uint64_t>("data length");
    if (data_length > limits.max_tensor_bytes)
      in.fail(dmoe::format("entry '{}': data of {} bytes exceeds the limit of {}", name, data_length,
                          limits.max_tensor_bytes));
    const shape s(std::span<const std::int64_t>(dims.data(), rank));
    if (overflow || data_length != numel * size_of(type))
      in.fail(dmoe::format("entry '{}': {} data bytes do not fit {} {}", name, data_length, type, s));
    if (data_length > in.remaining())
      in.fail(dmoe::format("entry '{}': data of {} bytes runs past the end of the entries ({} bytes left)", name,
                          data_length, in.remaining()));
    if (!seen.emplace(name, i).second) in.fail(dmoe::format("entry '{}' appears twice", name));
    tensor value = tensor::uninitialized(s, type);
    in.read_into(value.bytes(), "data");
    entries.push_back({std::move(name), std::move(value)});
  }
  if (in.remaining() != 0) fail(dmoe::format("{} unexpected bytes after the last entry", in.remaining()));
  return entries;
}

DMOE_DEF void save_checkpoint(const std::filesystem::path& path, const parameter_list& parameters,
                              const optimizer* opt) {
  std::vector<checkpoint_entry> entries;
  // (Device tensors are copied to the host, host ones shared: a checkpoint file holds host bytes; load_checkpoint
  // copies them back.)
  for (const parameter& p : parameters) entries.push_back({"param." + p.name, p.value->to(device::host)});
  if (opt)
    for (const parameter& s : opt->state()) entries.push_back({"optimizer." + s.name, s.value->to(device::host)});
  write_checkpoint(path, entries);
}

DMOE_DEF void load_checkpoint(const std::filesystem::path& path, const parameter_list& parameters,
                              optimizer* opt, const checkpoint_limits& limits) {
  std::vector<checkpoint_entry> entries = read_checkpoint(path, limits);
  std::map<std::string, tensor*, std::less<>> targets;
  for (const parameter& p : parameters)
    if (!targets.emplace("param." + p.name, p.value).second)
      throw invalid_argument_error(dmoe::format("load_checkpoint {:?}: two parameters are named '{}'", path.native(), p.name));
  if (opt)
    for (const parameter& s : opt->state()) targets.emplace("optimizer." + s.name, s.value);

  std::map<std::string, const tensor*, std::less<>> found;
  for (const checkpoint_entry& e : entries) {
    if (!opt && e.name.starts_with("optimizer.")) continue;
    auto it = targets.find(e.name);
    if (it == targets.end())
      throw shape_error(dmoe::format("checkpoint {:?}: entry '{}' has no counterpart in the module or optimizer", path.native(),
                                    e.name));
    const tensor& into = *it->second;
    if (e.value.dtype() != into.dtype() || e.value.shape() != into.shape())
      throw shape_error(dmoe::format("checkpoint {:?}: '{}' is {} {} in the file but {} {} in the module", path.native(), e.name,
                                    e.value.dtype(), e.value.shape(), into.dtype(), into.shape()));
    found.emplace(e.name, &e.value);
  }
  for (const auto& [name, into] : targets)
    if (!found.contains(name))
      throw shape_error(dmoe::format("checkpoint {:?}: '{}' ({}) is missing from the file", path.native(), name,
                                    into->description()));
  for (const auto& [name, into] : targets) into->copy_from(*found.at(name));
}

}  // namespace nn
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
