// dmoe::cuda's host half: the server's experts on CUDA devices (see include/dmoe/impl/cuda_experts.hpp).
#include <dmoe/impl/cuda_experts.hpp>
