// dmoe's CUDA backend, compiled once by nvcc: the CMake target dmoe::cuda is a .cu file that includes this header
// (a header-only program may include it from one .cu file of its own, with nvcc's --extended-lambda). Installs
// the caching allocator as the device memory of tensors when the program starts.
#pragma once

#include <dmoe/ops/cuda.hpp>
#include <dmoe/ops/cuda/attention.cuh>
#include <dmoe/ops/cuda/common.cuh>
#include <dmoe/ops/cuda/elementwise.cuh>
#include <dmoe/ops/cuda/gather.cuh>
#include <dmoe/ops/cuda/gemm.cuh>
#include <dmoe/ops/cuda/norm.cuh>
#include <dmoe/ops/cuda/optimizer.cuh>
#include <dmoe/ops/cuda/reduction.cuh>
#include <dmoe/ops/cuda/runtime.cuh>
#include <dmoe/ops/cuda/topk.cuh>
