// Umbrella for dmoe's tensor layer.
#pragma once

#include <dmoe/tensor/device.hpp>
#include <dmoe/tensor/dtype.hpp>
#include <dmoe/tensor/half.hpp>
#include <dmoe/tensor/shape.hpp>
#include <dmoe/tensor/tensor.hpp>
#include <dmoe/tensor/wire.hpp>
