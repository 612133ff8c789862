// dmoe::cuda: the CUDA backend's definitions, compiled once (see include/dmoe/impl/cuda_src.cuh).
#include <dmoe/impl/cuda_src.cuh>
