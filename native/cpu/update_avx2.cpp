// AVX2 + FMA build of the fused sparse update (flags set on this file by CMake).
#define EL_ISA_NS avx2
#include "update_cpu.inl"
