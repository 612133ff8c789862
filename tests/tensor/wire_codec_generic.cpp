// The tensor wire codec built for baseline x86-64 without contraction (-march=x86-64 -ffp-contract=off); flags in tests/CMakeLists.txt.
#define DMOE_WIRE_CODEC_BUILD wire_generic
#define DMOE_WIRE_CODEC_API wire_codec_generic
#include "wire_codec_build.inc"
