// The translation unit of dmoe::compiled: dmoe's heavy definitions, compiled once (DMOE_SEPARATE_COMPILATION).
#include <dmoe/impl/src.hpp>
