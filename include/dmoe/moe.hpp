// Umbrella for dmoe's moe layer: expert uids, the expert protocol and DHT records, grid gating, the beam search over the DHT and the mixture-of-experts layers (local, remote, Switch).
#pragma once

#include <dmoe/moe/async_module.hpp>
#include <dmoe/moe/beam_search.hpp>
#include <dmoe/moe/expert_protocol.hpp>
#include <dmoe/moe/expert_records.hpp>
#include <dmoe/moe/expert_uid.hpp>
#include <dmoe/moe/gating.hpp>
#include <dmoe/moe/local_mixture_of_experts.hpp>
#include <dmoe/moe/network_thread.hpp>
#include <dmoe/moe/remote_expert.hpp>
#include <dmoe/moe/remote_mixture_of_experts.hpp>
#include <dmoe/moe/switch_mixture_of_experts.hpp>
