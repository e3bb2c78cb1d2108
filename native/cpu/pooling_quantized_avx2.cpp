// AVX2 + FMA + F16C build of the compressed-row kernels (flags set on this file by CMake).
#define EL_ISA_NS avx2
#include "pooling_quantized.inl"
