// Umbrella for dmoe's moe layer: grid gating and the mixture-of-experts layers.
#pragma once

#include <dmoe/moe/gating.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
