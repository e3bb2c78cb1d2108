// AVX2 + FMA build of the CPU kernels (flags set on this file by CMake).
#define EL_ISA_NS avx2
#include "kernels_cpu.inl"
