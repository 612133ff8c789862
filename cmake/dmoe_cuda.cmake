# dmoe::cuda: the CUDA backend compiled once: dmoe_cuda.cu (include/dmoe/impl/cuda_src.cuh: kernels, cuBLAS, the
# caching allocator) and dmoe_cuda_experts.cpp (include/dmoe/impl/cuda_experts.hpp: the server's experts on GPUs).
# An object library, so that its start-up registrations (device memory for tensors, CUDA experts) are always
# linked; it brings dmoe::compiled and gives its users DMOE_WITH_CUDA=1. Made in the build that uses it (CUDA
# enabled, CUDAToolkit found), with that build's nvcc; built only when a target links it.
function(dmoe_add_cuda_library cu_source cpp_source)
  add_library(dmoe_cuda OBJECT ${cu_source} ${cpp_source})
  add_library(dmoe::cuda ALIAS dmoe_cuda)
  target_link_libraries(dmoe_cuda PUBLIC dmoe::compiled CUDA::cudart CUDA::cublas CUDA::cublasLt)
  target_compile_definitions(dmoe_cuda PUBLIC DMOE_WITH_CUDA=1)
  # CMake 3.25 does not know nvcc 13's C++20 flag; fmt 9's compile-time format checks do not build under nvcc.
  target_compile_options(dmoe_cuda PUBLIC
    $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --extended-lambda -diag-suppress=3189 -DFMT_USE_CONSTEXPR=1 -DFMT_CONSTEVAL=>)
  set_target_properties(dmoe_cuda PROPERTIES EXCLUDE_FROM_ALL ON POSITION_INDEPENDENT_CODE ON)
endfunction()
