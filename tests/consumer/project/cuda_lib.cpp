// A user's static library that links dmoe::cuda.
#include <dmoe/tensor/device.hpp>

const char* consumer_cuda_library() { return dmoe::cuda_available() ? "static library, GPU" : "static library"; }
