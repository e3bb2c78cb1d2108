// Baseline x86-64 build of the compressed-row kernels.
#define EL_ISA_NS generic
#include "pooling_quantized.inl"
