// Tests of dmoe/nn/checkpoint.hpp: bit-exact round trips, refusal of damaged files, atomic replacement on write errors.
#include <dmoe/core/hash.hpp>
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/checkpoint.hpp>
#include <dmoe/nn/sgd.hpp>

#include <error_text.hpp>
#include <temp_dir.hpp>

#include <boost/test/unit_test.hpp>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

using namespace dmoe;
namespace fs = std::filesystem;

namespace {

using dmoe_test::temp_dir;

std::string checkpoint_file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
// Recomputes the footer so that a deliberately edited file passes the checksum.
void reseal(std::string& bytes) {
  const std::uint64_t digest = xxh64(as_bytes(std::string_view(bytes).substr(0, bytes.size() - 8)));
  std::memcpy(bytes.data() + bytes.size() - 8, &digest, 8);
}

bool same_bytes(const tensor& a, const tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.bytes_data(), b.bytes_data(), a.nbytes()) == 0;
}

// A tiny "module": two parameters and their gradients.
struct toy_model {
  tensor weight, weight_grad, bias, bias_grad;
  explicit toy_model(std::uint64_t seed) {
    random_engine gen(seed);
    weight = tensor::normal(shape{4, 3}, gen);
    weight_grad = tensor(shape{4, 3});
    bias = tensor::normal(shape{3}, gen);
    bias_grad = tensor(shape{3});
  }
  nn::parameter_list parameters() { return {{"layer.weight", &weight, &weight_grad}, {"layer.bias", &bias, &bias_grad}}; }
  // Deterministic gradients for step `step` (the same in every run).
  void set_gradients(std::int64_t step) {
    random_engine gen(static_cast<std::uint64_t>(1000 + step));
    weight_grad.fill_normal(gen);
    bias_grad.fill_normal(gen);
  }
};

void train(toy_model& model, nn::optimizer& opt, std::int64_t steps) {
  for (std::int64_t i = 0; i < steps; ++i) {
    model.set_gradients(opt.step_count() + 1);
    opt.step();
  }
}

using dmoe_test::contains;
using dmoe_test::error_text;

// A small valid checkpoint file in `dir`, returned as its path.
fs::path small_checkpoint(const temp_dir& dir) {
  toy_model model(1);
  nn::adam<> opt(model.parameters(), {.learning_rate = 0.01f});
  train(model, opt, 2);
  fs::path path = dir.path / "model.ckpt";
  nn::save_checkpoint(path, model.parameters(), &opt);
  return path;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(nn_checkpoint)

BOOST_AUTO_TEST_CASE(round_trip_is_bit_exact_and_training_continues_identically) {
  temp_dir dir;
  const fs::path path = dir.path / "model.ckpt";
  nn::linear_warmup_decay schedule(0.05f, 3, 20);

  // Reference: 8 uninterrupted steps.
  toy_model reference(7);
  nn::adam<> reference_opt(reference.parameters(), {.learning_rate = 0.05f, .weight_decay = 0.01});
  reference_opt.set_schedule(schedule);
  train(reference, reference_opt, 5);
  nn::save_checkpoint(path, reference.parameters(), &reference_opt);
  train(reference, reference_opt, 3);

  // Restored: a differently initialised model loads the checkpoint taken after 5 steps.
  toy_model restored(99);
  nn::adam<> restored_opt(restored.parameters(), {.learning_rate = 0.05f, .weight_decay = 0.01});
  restored_opt.set_schedule(schedule);
  nn::load_checkpoint(path, restored.parameters(), &restored_opt);
  BOOST_TEST(restored_opt.step_count() == 5);
  auto entries = nn::read_checkpoint(path);
  BOOST_TEST_REQUIRE(entries.size() == 2u + 5u);  // 2 parameters; step, 2 m, 2 v
  BOOST_TEST(entries[0].name == "param.layer.weight");
  BOOST_TEST(entries[2].name == "optimizer.step");
  BOOST_TEST(same_bytes(entries[0].value, restored.weight));
  BOOST_TEST(same_bytes(restored_opt.state()[1].value->clone(), entries[3].value));

  train(restored, restored_opt, 3);
  BOOST_TEST(restored_opt.step_count() == reference_opt.step_count());
  BOOST_TEST(same_bytes(restored.weight, reference.weight));
  BOOST_TEST(same_bytes(restored.bias, reference.bias));
  for (std::size_t i = 0; i < reference_opt.state().size(); ++i)
    BOOST_TEST(same_bytes(*restored_opt.state()[i].value, *reference_opt.state()[i].value), reference_opt.state()[i].name);
  BOOST_TEST(dir.listing() == std::vector<std::string>{"model.ckpt"}, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(any_dtype_and_rank_round_trips) {
  temp_dir dir;
  std::vector<nn::checkpoint_entry> entries;
  entries.push_back({"scalar", tensor::from(shape{}, {2.5f})});
  entries.push_back({"empty", tensor(shape{0, 5})});
  std::vector<std::int64_t> labels{-1, 0, 1LL << 40};
  entries.push_back({"labels", tensor::from<std::int64_t>(shape{3}, labels)});
  std::vector<std::uint8_t> raw{1, 2, 3, 4, 5, 6};
  entries.push_back({"bytes", tensor::from<std::uint8_t>(shape{1, 2, 3}, raw)});
  std::vector<half> halves{half{0x3c00}, half{0xc000}};
  entries.push_back({"", tensor::from<half>(shape{2}, halves)});
  nn::write_checkpoint(dir.path / "a.ckpt", entries);
  auto back = nn::read_checkpoint(dir.path / "a.ckpt");
  BOOST_TEST_REQUIRE(back.size() == entries.size());
  for (std::size_t i = 0; i < back.size(); ++i) {
    BOOST_TEST(back[i].name == entries[i].name);
    BOOST_TEST(same_bytes(back[i].value, entries[i].value), entries[i].name);
  }
}

BOOST_AUTO_TEST_CASE(flipped_byte_fails_the_checksum) {
  temp_dir dir;
  const fs::path path = small_checkpoint(dir);
  std::string bytes = checkpoint_file_bytes(path);
  bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x10);
  write_bytes(path, bytes);
  toy_model model(1);
  const std::string text = error_text<corrupt_error>([&] { nn::load_checkpoint(path, model.parameters()); });
  BOOST_TEST(contains(text, path.string()), text);
  BOOST_TEST(contains(text, "checksum mismatch"), text);
}

BOOST_AUTO_TEST_CASE(truncated_file_is_refused) {
  temp_dir dir;
  const fs::path path = small_checkpoint(dir);
  const std::string bytes = checkpoint_file_bytes(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 20));
  std::string text = error_text<corrupt_error>([&] { nn::read_checkpoint(path); });
  BOOST_TEST(contains(text, path.string()), text);
  BOOST_TEST(contains(text, fmt::format("truncated: {} bytes but the header says {}", bytes.size() - 20, bytes.size())), text);
  write_bytes(path, bytes.substr(0, 10));
  text = error_text<corrupt_error>([&] { nn::read_checkpoint(path); });
  BOOST_TEST(contains(text, "truncated: 10 bytes, shorter than the 32-byte header"), text);
}

BOOST_AUTO_TEST_CASE(wrong_magic_and_version_are_refused) {
  temp_dir dir;
  const fs::path path = small_checkpoint(dir);
  std::string bytes = checkpoint_file_bytes(path);
  std::string wrong = bytes;
  wrong[0] = 'X';
  write_bytes(path, wrong);
  std::string text = error_text<corrupt_error>([&] { nn::read_checkpoint(path); });
  BOOST_TEST(contains(text, "wrong magic 58 4d 4f 45 43 4b 50 54: not a dmoe checkpoint"), text);

  wrong = bytes;
  wrong[8] = 2;  // version 2
  reseal(wrong);
  write_bytes(path, wrong);
  text = error_text<corrupt_error>([&] { nn::read_checkpoint(path); });
  BOOST_TEST(contains(text, "unsupported version 2 (this build reads version 1)"), text);
}

BOOST_AUTO_TEST_CASE(oversized_fields_are_refused_even_with_a_valid_checksum) {
  temp_dir dir;
  const fs::path path = small_checkpoint(dir);
  const std::string bytes = checkpoint_file_bytes(path);
  // The first entry's name length sits right after the 32-byte header.
  std::string wrong = bytes;
  const std::uint32_t huge_name = 5000;
  std::memcpy(wrong.data() + 32, &huge_name, 4);
  reseal(wrong);
  write_bytes(path, wrong);
  std::string text = error_text<corrupt_error>([&] { nn::read_checkpoint(path); });
  BOOST_TEST(contains(text, "entry 0: name of 5000 bytes exceeds the limit of 4096"), text);

  // A length within the limit but past the end of the file.
  const std::uint32_t long_name = 4000;
  std::memcpy(wrong.data() + 32, &long_name, 4);
  reseal(wrong);
  write_bytes(path, wrong);
  text = error_text<corrupt_error>([&] { nn::read_checkpoint(path); });
  BOOST_TEST(contains(text, "name of 4000 bytes at offset 36 runs past the end"), text);

  // A tensor larger than the reader's limit (4x3 f32 = 48 bytes).
  write_bytes(path, bytes);
  text = error_text<corrupt_error>([&] { nn::read_checkpoint(path, {.max_tensor_bytes = 40}); });
  BOOST_TEST(contains(text, "entry 'param.layer.weight': data of 48 bytes exceeds the limit of 40"), text);

  // An entry count over the limit.
  wrong = bytes;
  const std::uint64_t many = std::uint64_t{1} << 40;
  std::memcpy(wrong.data() + 24, &many, 8);
  reseal(wrong);
  write_bytes(path, wrong);
  text = error_text<corrupt_error>([&] { nn::read_checkpoint(path); });
  BOOST_TEST(contains(text, "1099511627776 entries exceed the limit of 1048576"), text);
}

BOOST_AUTO_TEST_CASE(loading_checks_names_and_shapes_before_copying) {
  temp_dir dir;
  const fs::path path = small_checkpoint(dir);
  // Same names, one shape differs: shape_error naming both shapes, nothing copied.
  tensor weight(shape{4, 3}), weight_grad(shape{4, 3}), bias(shape{5}), bias_grad(shape{5});
  nn::parameter_list other{{"layer.weight", &weight, &weight_grad}, {"layer.bias", &bias, &bias_grad}};
  std::string text = error_text<shape_error>([&] { nn::load_checkpoint(path, other); });
  BOOST_TEST(contains(text, "'param.layer.bias' is f32 [3] in the file but f32 [5] in the module"), text);
  BOOST_TEST(weight.at(0, 0) == 0.0f);

  // A module parameter the file lacks, and a file entry the module lacks.
  nn::parameter_list renamed{{"layer.weight", &weight, &weight_grad}, {"layer.offset", &bias, &bias_grad}};
  text = error_text<shape_error>([&] { nn::load_checkpoint(path, renamed); });
  BOOST_TEST(contains(text, "entry 'param.layer.bias' has no counterpart"), text);
  nn::parameter_list fewer{{"layer.weight", &weight, &weight_grad}};
  text = error_text<shape_error>([&] { nn::load_checkpoint(path, fewer); });
  BOOST_TEST(contains(text, "entry 'param.layer.bias' has no counterpart"), text);

  // Parameters only: the optimizer entries are skipped when no optimizer is given.
  toy_model model(5);
  nn::load_checkpoint(path, model.parameters());
  // An optimizer whose state the file lacks (SGD momentum vs Adam moments).
  nn::sgd<> momentum(model.parameters(), {.momentum = 0.9});
  text = error_text<shape_error>([&] { nn::load_checkpoint(path, model.parameters(), &momentum); });
  BOOST_TEST(contains(text, "entry 'optimizer.m.layer.weight' has no counterpart"), text);
}

BOOST_AUTO_TEST_CASE(failed_write_leaves_the_old_checkpoint_and_no_temporary) {
  temp_dir dir;
  const fs::path path = small_checkpoint(dir);
  const std::string old_bytes = checkpoint_file_bytes(path);
  // A real write error: the file size limit makes write() fail with EFBIG once the new file
  // passes 4 KiB (SIGXFSZ ignored so that the process is not killed).
  random_engine gen(3);
  std::vector<nn::checkpoint_entry> big{{"big", tensor::normal(shape{64, 1024}, gen)}};
  rlimit saved{};
  BOOST_TEST_REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limited = saved;
  limited.rlim_cur = 4096;
  BOOST_TEST_REQUIRE(::setrlimit(RLIMIT_FSIZE, &limited) == 0);
  std::string text;
  int errno_value = 0;
  try {
    nn::write_checkpoint(path, big);
  } catch (const system_error& e) {
    text = e.what();
    errno_value = e.errno_value();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  BOOST_TEST(errno_value == EFBIG, text);
  BOOST_TEST(contains(text, "writing checkpoint"), text);
  BOOST_TEST(checkpoint_file_bytes(path) == old_bytes);
  BOOST_TEST(dir.listing() == std::vector<std::string>{"model.ckpt"}, boost::test_tools::per_element());
  // The old checkpoint still loads.
  toy_model model(1);
  nn::load_checkpoint(path, model.parameters());
}

BOOST_AUTO_TEST_CASE(failed_rename_removes_the_temporary) {
  temp_dir dir;
  // rename() of a file over a non-empty directory fails (EISDIR) after the file was written.
  fs::create_directories(dir.path / "taken" / "inside");
  std::vector<nn::checkpoint_entry> entries{{"x", tensor::from(shape{1}, {1.0f})}};
  const std::string text = error_text<system_error>([&] { nn::write_checkpoint(dir.path / "taken", entries); });
  BOOST_TEST(contains(text, "renaming checkpoint"), text);
  BOOST_TEST(dir.listing() == std::vector<std::string>{"taken"}, boost::test_tools::per_element());
  BOOST_TEST(fs::is_directory(dir.path / "taken" / "inside"));
}

BOOST_AUTO_TEST_CASE(missing_file_is_a_system_error) {
  temp_dir dir;
  const std::string text = error_text<system_error>([&] { nn::read_checkpoint(dir.path / "absent.ckpt"); });
  BOOST_TEST(contains(text, "absent.ckpt"), text);
  BOOST_TEST(contains(text, "No such file or directory"), text);
}

// Paths in messages are quoted and escaped (fmt's "{:?}"), so a name with a quote, a backslash or a newline cannot
// forge the rest of the message.
BOOST_AUTO_TEST_CASE(paths_in_messages_are_quoted_and_escaped) {
  temp_dir dir;
  const std::string text =
      error_text<system_error>([&] { nn::read_checkpoint(dir.path / "a\"b\\c\nd.ckpt"); });
  BOOST_TEST(contains(text, "opening checkpoint \"" + dir.path.native() + "/a\\\"b\\\\c\\nd.ckpt\""), text);
}

BOOST_AUTO_TEST_SUITE_END()
