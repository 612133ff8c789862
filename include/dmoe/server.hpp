// Umbrella for dmoe's server layer: expert backends, task pools, the compute runtime, DHT declarations,
// checkpoints, the server and its background-thread helper.
#pragma once
#include <dmoe/server/background_server.hpp>
#include <dmoe/server/checkpoint_saver.hpp>
#include <dmoe/server/declarer.hpp>
#include <dmoe/server/expert_backend.hpp>
#include <dmoe/server/runtime.hpp>
#include <dmoe/server/server.hpp>
#include <dmoe/server/task_pool.hpp>
