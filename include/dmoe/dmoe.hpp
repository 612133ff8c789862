// Umbrella for all of dmoe.
#pragma once

#include <dmoe/async.hpp>
#include <dmoe/core.hpp>
#include <dmoe/data.hpp>
#include <dmoe/dht.hpp>
#include <dmoe/moe.hpp>
#include <dmoe/net.hpp>
#include <dmoe/nn.hpp>
#include <dmoe/ops.hpp>
#include <dmoe/server.hpp>
#include <dmoe/tensor.hpp>
