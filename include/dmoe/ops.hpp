// Umbrella for dmoe's ops layer: backend tags and the CPU kernels.
#pragma once

#include <dmoe/ops/backend.hpp>
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
#include <dmoe/ops/cpu/parallel.hpp>
#include <dmoe/ops/cpu/softmax.hpp>
#include <dmoe/ops/cpu/topk.hpp>
#include <dmoe/ops/optimizer.hpp>
