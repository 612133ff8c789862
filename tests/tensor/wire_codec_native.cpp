// The tensor wire codec built for this CPU with FMA contraction allowed (-march=native -ffp-contract=fast); flags in tests/CMakeLists.txt.
#define DMOE_WIRE_CODEC_BUILD wire_native
#define DMOE_WIRE_CODEC_API wire_codec_native
#include "wire_codec_build.inc"
