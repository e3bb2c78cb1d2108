// Baseline x86-64 build of the fused sparse update.
#define EL_ISA_NS generic
#include "update_cpu.inl"
