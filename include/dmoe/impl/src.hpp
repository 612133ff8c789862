// dmoe's heavy definitions, compiled once: with DMOE_SEPARATE_COMPILATION defined in every translation unit of a
// program, exactly one of them includes this header (the CMake target dmoe::compiled is such a translation unit).
#pragma once

#if !defined(DMOE_SEPARATE_COMPILATION)
#error "<dmoe/impl/src.hpp> is for programs built with DMOE_SEPARATE_COMPILATION defined"
#endif
#if defined(DMOE_HEAVY_DEFINITIONS)
#error "<dmoe/impl/src.hpp> must be the first dmoe header of its translation unit"
#endif

#define DMOE_COMPILING_SOURCE 1
#include <dmoe/dmoe.hpp>
// Every header with heavy definitions, whether or not an umbrella names it.
#include <dmoe/data/idx.hpp>
#include <dmoe/moe/gating.hpp>
#include <dmoe/nn/checkpoint.hpp>
#include <dmoe/ops/cpu/activation.hpp>
#include <dmoe/ops/cpu/attention.hpp>
#include <dmoe/ops/cpu/cross_entropy.hpp>
#include <dmoe/ops/cpu/dropout.hpp>
#include <dmoe/ops/cpu/elementwise.hpp>
#include <dmoe/ops/cpu/embedding.hpp>
#include <dmoe/ops/cpu/gather.hpp>
#include <dmoe/ops/cpu/gemm.hpp>
#include <dmoe/ops/cpu/layer_norm.hpp>
#include <dmoe/ops/cpu/mse.hpp>
#include <dmoe/ops/cpu/optimizer.hpp>
#include <dmoe/ops/cpu/softmax.hpp>
#include <dmoe/ops/cpu/topk.hpp>
