// The CUDA tests' entry point: without a GPU (or driver) every test is reported skipped, with the reason.
#define BOOST_TEST_MODULE dmoe_cuda
#define BOOST_TEST_NO_MAIN
#include <dmoe/ops/cuda.hpp>

#include <boost/test/unit_test.hpp>

#include <cstdio>
#include <string_view>

int main(int argc, char* argv[]) {
  bool listing = false;  // --help and --list_content need no GPU
  for (int i = 1; i < argc; ++i)
    listing = listing || std::string_view(argv[i]).starts_with("--help") ||
              std::string_view(argv[i]).starts_with("--list_content");
  if (listing) return boost::unit_test::unit_test_main(&init_unit_test, argc, argv);
  if (dmoe::cuda::device_count() == 0) {
    std::printf("cuda tests skipped: no CUDA GPU is visible (cudaGetDeviceCount found none)\n");
    return 77;
  }
  std::printf("cuda tests on %s\n", dmoe::cuda::device_description(0).c_str());
  return boost::unit_test::unit_test_main(&init_unit_test, argc, argv);
}
