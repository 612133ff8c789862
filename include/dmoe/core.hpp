// Umbrella for dmoe's core layer.
#pragma once

#include <dmoe/core/binary_reader.hpp>
#include <dmoe/core/binary_writer.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/clock.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/core/format.hpp>
#include <dmoe/core/hash.hpp>
#include <dmoe/core/log.hpp>
