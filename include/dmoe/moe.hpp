// Umbrella for dmoe's moe layer: expert uids, the expert protocol and DHT records, grid gating and the mixture-of-experts layers.
#pragma once

#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/moe/expert_records.hpp>
#include <dmoe/moe/expert_uid.hpp>
#include <dmoe/moe/gating.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
