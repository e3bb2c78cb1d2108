// Baseline x86-64 build of the CPU kernels, for CPUs without AVX2.
#define EL_ISA_NS generic
#include "kernels_cpu.inl"
