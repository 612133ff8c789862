// Umbrella for all of dmoe.
#pragma once

#include <dmoe/core.hpp>
