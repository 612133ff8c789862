// Umbrella for all of dmoe.
#pragma once

#include <dmoe/async.hpp>
#include <dmoe/core.hpp>
#include <dmoe/moe.hpp>
