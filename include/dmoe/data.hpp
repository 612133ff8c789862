// Umbrella for dmoe's data layer: IDX data sets (MNIST, Fashion-MNIST) and mini-batches.
#pragma once

#include <dmoe/data/batches.hpp>
#include <dmoe/data/idx.hpp>
