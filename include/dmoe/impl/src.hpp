// dmoe's heavy definitions, compiled once: with DMOE_SEPARATE_COMPILATION defined in every translation unit of a
// program, exactly one of them includes this header (the CMake target dmoe::compiled is such a translation unit).
#pragma once

#if !defined(DMOE_SEPARATE_COMPILATION)
#error "<dmoe/impl/src.hpp> is for programs built with DMOE_SEPARATE_COMPILATION defined"
#endif
#if defined(DMOE_HEAVY_DEFINITIONS)
#error "<dmoe/impl/src.hpp> must be the first dmoe header of its translation unit"
#endif

#define DMOE_COMPILING_SOURCE 1
#include <dmoe/dmoe.hpp>
