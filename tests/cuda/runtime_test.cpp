// The CUDA runtime: device choice by name, copies across devices, the caching allocator's reuse, peak and
// release, streams and events, and errors that name the failing call.
#include <cuda/cuda_test_util.hpp>

#include <dmoe/ops/cuda.hpp>
#include <dmoe/tensor/device.hpp>

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

using namespace dmoe;
using namespace dmoe::testing;

BOOST_AUTO_TEST_SUITE(cuda_runtime)

BOOST_AUTO_TEST_CASE(devices_are_chosen_by_name) {
  BOOST_CHECK(cuda_available());
  BOOST_CHECK_NO_THROW(use_device(parse_device("cuda:0")));
  BOOST_CHECK_NO_THROW(use_device(parse_device("cpu")));
  try {
    use_device(parse_device("cuda:1000"));
    BOOST_ERROR("cuda:1000 was accepted");
  } catch (const device_error& e) {
    BOOST_CHECK_MESSAGE(std::string(e.what()).find("GPU(s) are present") != std::string::npos, e.what());
  }
  BOOST_CHECK_THROW(parse_device("gpu0"), invalid_argument_error);
  BOOST_CHECK_THROW(cuda::set_device(-1), device_error);
}

BOOST_AUTO_TEST_CASE(tensors_copy_between_host_and_device) {
  random_engine gen(1);
  const tensor x = tensor::normal(shape{17, 33}, gen);
  const tensor d = x.to(device::cuda);
  BOOST_CHECK(d.device() == device::cuda);
  BOOST_CHECK(d.to(device::cuda).shares_storage_with(d));
  expect_close(d.clone(), x, 0, 0, "device clone");
  expect_close(d.rows(3, 5), x.rows(3, 5), 0, 0, "device row view");
  tensor z(shape{3, 3}, dtype::f32, device::cuda);
  expect_close(z, tensor(shape{3, 3}), 0, 0, "zero-filled device tensor");
  BOOST_CHECK_THROW(d.data<float>(), invalid_argument_error);
  tensor wrong(shape{3, 4}, dtype::f32, device::cuda);
  BOOST_CHECK_THROW(wrong.copy_from(x), shape_error);
}

BOOST_AUTO_TEST_CASE(the_allocator_reuses_blocks_and_reports_its_peak) {
  cuda::release_cached_memory();
  cuda::reset_peak_memory();
  const cuda::memory_stats before = cuda::memory_statistics();
  {
    tensor a(shape{1 << 20});  // 4 MiB
    const tensor d = a.to(device::cuda);
    const cuda::memory_stats live = cuda::memory_statistics();
    BOOST_CHECK_GE(live.allocated, before.allocated + (4u << 20));
    BOOST_CHECK_GE(live.peak_allocated, live.allocated);
  }
  const cuda::memory_stats freed = cuda::memory_statistics();
  BOOST_CHECK_EQUAL(freed.allocated, before.allocated);
  BOOST_CHECK_GE(freed.reserved, before.reserved + (4u << 20));  // cached, not returned
  BOOST_CHECK_GE(freed.peak_allocated, before.allocated + (4u << 20));
  {
    const tensor again(shape{1 << 20}, dtype::f32, device::cuda);
    const cuda::memory_stats reused = cuda::memory_statistics();
    BOOST_CHECK_EQUAL(reused.device_mallocs, freed.device_mallocs);
    BOOST_CHECK_EQUAL(reused.cache_hits, freed.cache_hits + 1);
  }
  cuda::release_cached_memory();
  BOOST_CHECK_EQUAL(cuda::memory_statistics().reserved, cuda::memory_statistics().allocated);
}

BOOST_AUTO_TEST_CASE(out_of_memory_is_a_clear_error) {
  try {
    const tensor huge(shape{std::int64_t{1} << 45}, dtype::f32, device::cuda);  // 128 TiB
    BOOST_ERROR("a 128 TiB device tensor was allocated");
  } catch (const device_error& e) {
    BOOST_CHECK_MESSAGE(std::string(e.what()).find("cudaMalloc of") != std::string::npos, e.what());
  }
  const tensor fine = tensor(shape{4}).to(device::cuda);  // the device still works
  expect_close(fine, tensor(shape{4}), 0, 0, "after an out-of-memory error");
}

BOOST_AUTO_TEST_CASE(streams_events_and_async_copies) {
  random_engine gen(2);
  const tensor x = tensor::normal(shape{1 << 16}, gen);
  cuda::stream s;
  cuda::pinned_buffer in(x.nbytes()), out(x.nbytes());
  std::memcpy(in.data(), x.bytes_data(), x.nbytes());
  tensor d;
  {
    const cuda::stream_guard guard(s);
    BOOST_CHECK(cuda::current_stream() == s.native());
    d = tensor::uninitialized(x.shape(), dtype::f32, device::cuda);
    cuda::event start, stop;
    start.record();
    cuda::copy_to_device_async(in.bytes(), d, s.native());
    ops::scale(ops::cuda, d, 2.0f);
    cuda::copy_to_host_async(d, out.bytes(), s.native());
    stop.record();
    stop.synchronize();
    BOOST_CHECK_GE(stop.elapsed_ms_since(start), 0.0f);
  }
  BOOST_CHECK(cuda::current_stream() != s.native());
  const float* o = reinterpret_cast<const float*>(out.data());
  for (std::int64_t i = 0; i < x.numel(); ++i)
    if (o[i] != 2.0f * x.at(i)) {
      BOOST_ERROR("async copy and scale wrong at " << i);
      break;
    }
  std::vector<std::byte> small(8);
  BOOST_CHECK_THROW(cuda::copy_to_host_async(d, small, s.native()), shape_error);
}

BOOST_AUTO_TEST_SUITE_END()
