// Row storage types and their codecs (docs/compressed.md states the layouts,
// the rounding and the error bounds). Portable per-row code: g++ and nvcc
// compile it as is; plain data and raw pointers, no allocation, no exceptions.
//
// Layouts (little-endian; `dim` = logical dimension; every row a multiple of
// 4 bytes):
//   fp32  dim x float32
//   fp16  dim x IEEE binary16, zero padding to 4 bytes
//   bf16  dim x bfloat16 (the top 16 bits of a float32), zero padding to 4 bytes
//   int8  dim uint8 codes, zero padding to 4 bytes, float32 scale, float32 bias
//   int4  dim/2 bytes (element 2i in the low nibble of byte i, 2i+1 in the
//         high nibble), zero padding to 4 bytes, float32 scale, float32 bias
// int8/int4 value = scale * code + bias, with bias = min(row),
// scale = (max(row) - min(row)) / levels (255 or 15; 0 when max == min),
// code = clamp(nearbyint((x - bias) / scale), 0, levels), ties to even.
// All-zero bytes decode to a zero row in every type.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "embedlookup/portable.h"

namespace embedlookup {

enum class RowType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2, kI8 = 3, kI4 = 4 };
constexpr int kRowTypes = 5;

inline const char* row_type_name(RowType t) {
  switch (t) {
    case RowType::kF32: return "fp32";
    case RowType::kF16: return "fp16";
    case RowType::kBF16: return "bf16";
    case RowType::kI8: return "int8";
    case RowType::kI4: return "int4";
  }
  return "?";
}

EL_HD int64_t pad4(int64_t n) { return (n + 3) / 4 * 4; }

// Bytes of one stored row (the arena's stride for compressed types; fp32
// tables keep their 8-float padded stride).
EL_HD int64_t row_bytes(RowType t, int64_t dim) {
  switch (t) {
    case RowType::kF16:
    case RowType::kBF16: return pad4(2 * dim);
    case RowType::kI8: return pad4(dim) + 8;
    case RowType::kI4: return pad4(dim / 2) + 8;
    default: return 4 * dim;
  }
}
// Offset of the float32 scale (bias follows it) in an int8 / int4 row.
EL_HD int64_t scale_offset(RowType t, int64_t dim) { return t == RowType::kI8 ? pad4(dim) : pad4(dim / 2); }
EL_HD int quant_levels(RowType t) { return t == RowType::kI8 ? 255 : 15; }

// A product rounded on its own, never fused with a following add: int8/int4
// values must equal the reference's two roundings bit for bit. (Host code:
// sources that include this header are built without FMA or with
// -ffp-contract=off; CUDA: __fmul_rn is never contracted.)
EL_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

EL_HD uint32_t f32_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
EL_HD float bits_f32(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// ---- bf16
EL_HD float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }
// Round to nearest even (finite input; a value at or past 0x7F7F8000 in
// magnitude rounds to infinity: see bf16_finite).
EL_HD uint16_t f32_to_bf16(float x) {
  const uint32_t u = f32_bits(x);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
// Stochastic rounding: adds 16 random bits below the kept ones, truncates.
// E[result] = x exactly for values inside the range (each of the two
// neighbours with probability proportional to closeness). Saturates at the
// largest finite bf16 instead of overflowing to infinity.
EL_HD uint16_t f32_to_bf16_sr(float x, uint32_t rnd16) {
  const uint32_t u = f32_bits(x);
  uint32_t r = (u + (rnd16 & 0xFFFFu)) >> 16;
  if ((r & 0x7FFFu) >= 0x7F80u) r = (u & 0x80000000u) >> 16 | 0x7F7Fu;
  return static_cast<uint16_t>(r);
}
EL_HD bool bf16_finite(float x) { return (f32_bits(x) & 0x7FFFFFFFu) < 0x7F7F8000u; }

// ---- fp16 (IEEE binary16), portable bit code; the AVX2 kernels use F16C.
EL_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float32
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return bits_f32(f32_bits(v) | sign);
  }
  if (exp == 31) return bits_f32(sign | 0x7F800000u | (man << 13));
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}
// fp32 -> fp16 bits, truncating `drop` low mantissa bits after adding
// `add` (RNE: add = half - 1 + lsb; stochastic: add = random bits).
EL_HD uint16_t f32_to_f16_round(float x, bool stochastic, uint32_t rnd) {
  const uint32_t u = f32_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0u));
  const int32_t e = static_cast<int32_t>(a >> 23) - 127;  // unbiased exponent
  if (e < -25) return static_cast<uint16_t>(sign);       // below half the smallest subnormal: rounds to 0
  uint32_t man = (a & 0x7FFFFFu) | 0x800000u;            // 24-bit significand
  // Result units: 2^-24 for subnormals (e < -14), else 2^(e - 10).
  const int32_t drop = e < -14 ? (-14 - e) + 13 : 13;  // bits of `man` below the fp16 unit (13 .. 24+)
  uint32_t q;
  if (drop >= 32) {
    q = 0;
  } else {
    const uint32_t mask = (1u << drop) - 1u;
    const uint32_t low = man & mask;
    q = man >> drop;
    if (stochastic) {
      q += ((rnd & mask) + low) >> drop;  // carries with probability low / 2^drop
    } else {
      const uint32_t half = 1u << (drop - 1);
      q += (low > half || (low == half && (q & 1u))) ? 1u : 0u;
    }
  }
  uint32_t h;
  if (e < -14) {
    h = q;  // subnormal (q may reach 0x400: the smallest normal, same bits)
  } else {
    h = (static_cast<uint32_t>(e + 15) << 10) + (q - 0x400u);  // a carry into the exponent is right
  }
  if (h >= 0x7C00u) h = stochastic ? 0x7BFFu : 0x7C00u;  // overflow: inf (RNE), largest finite (stochastic)
  return static_cast<uint16_t>(sign | h);
}
EL_HD uint16_t f32_to_f16(float x) { return f32_to_f16_round(x, false, 0); }
// |x| < 65520 rounds to a finite fp16 (65504 is the largest).
EL_HD bool f16_finite(float x) { return (f32_bits(x) & 0x7FFFFFFFu) < 0x477FF000u; }

// ---- counter-based random bits for stochastic rounding: a function of
// (key, step, seed, element) only, so runs with one seed are bit-identical
// whatever the thread count. Two rounds of the splitmix64 finalizer over a
// mix of the four values (docs/compressed.md).
EL_HD uint64_t sr_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
EL_HD uint64_t sr_row_hash(int64_t key, int64_t step, uint64_t seed) {
  return sr_mix64(sr_mix64(static_cast<uint64_t>(key) ^ (seed * 0x9E3779B97F4A7C15ull)) ^
                  (static_cast<uint64_t>(step) * 0xD1B54A32D192ED03ull));
}
// 32 random bits for element j of a row whose hash is h.
EL_HD uint32_t sr_bits(uint64_t h, int64_t j) {
  return static_cast<uint32_t>(sr_mix64(h + static_cast<uint64_t>(j) * 0x9E3779B97F4A7C15ull) >> 32);
}

// ---- whole rows (scalar; the CPU kernels have vector versions of the reads)
// Is every value of x representable in t (no overflow to infinity)? x finite.
inline bool row_representable(RowType t, const float* x, int64_t dim) {
  switch (t) {
    case RowType::kF16:
      for (int64_t j = 0; j < dim; ++j)
        if (!f16_finite(x[j])) return false;
      return true;
    case RowType::kBF16:
      for (int64_t j = 0; j < dim; ++j)
        if (!bf16_finite(x[j])) return false;
      return true;
    case RowType::kI8:
    case RowType::kI4: {
      float lo = x[0], hi = x[0];
      for (int64_t j = 1; j < dim; ++j) {
        lo = x[j] < lo ? x[j] : lo;
        hi = x[j] > hi ? x[j] : hi;
      }
      return std::isfinite(hi - lo);
    }
    default: return true;
  }
}

// fp32 row -> stored bytes (round to nearest even). Padding bytes are zeroed.
inline void encode_row(RowType t, const float* x, int64_t dim, uint8_t* out) {
  const int64_t rb = row_bytes(t, dim);
  switch (t) {
    case RowType::kF32: std::memcpy(out, x, 4 * dim); return;
    case RowType::kF16:
    case RowType::kBF16: {
      uint16_t* h = reinterpret_cast<uint16_t*>(out);
      for (int64_t j = 0; j < dim; ++j) h[j] = t == RowType::kF16 ? f32_to_f16(x[j]) : f32_to_bf16(x[j]);
      for (int64_t b = 2 * dim; b < rb; ++b) out[b] = 0;
      return;
    }
    case RowType::kI8:
    case RowType::kI4: {
      const int levels = quant_levels(t);
      float lo = x[0], hi = x[0];
      for (int64_t j = 1; j < dim; ++j) {
        lo = x[j] < lo ? x[j] : lo;
        hi = x[j] > hi ? x[j] : hi;
      }
      const float scale = hi > lo ? (hi - lo) / static_cast<float>(levels) : 0.0f;
      const int64_t so = scale_offset(t, dim);
      for (int64_t b = 0; b < so; ++b) out[b] = 0;
      for (int64_t j = 0; j < dim; ++j) {
        int c = 0;
        if (scale > 0.0f) {
          const float q = std::nearbyint((x[j] - lo) / scale);
          c = q < 0.0f ? 0 : (q > static_cast<float>(levels) ? levels : static_cast<int>(q));
        }
        if (t == RowType::kI8)
          out[j] = static_cast<uint8_t>(c);
        else
          out[j >> 1] |= static_cast<uint8_t>(c << ((j & 1) * 4));
      }
      std::memcpy(out + so, &scale, 4);
      std::memcpy(out + so + 4, &lo, 4);
      return;
    }
  }
}

// fp16 / bf16 with stochastic rounding (training): element j uses
// sr_bits(h, j). Saturates at the type's largest finite value.
inline void encode_row_sr(RowType t, const float* x, int64_t dim, uint64_t h, uint8_t* out) {
  uint16_t* o = reinterpret_cast<uint16_t*>(out);
  if (t == RowType::kF16) {
    for (int64_t j = 0; j < dim; ++j) o[j] = f32_to_f16_round(x[j], true, sr_bits(h, j));
  } else {
    for (int64_t j = 0; j < dim; ++j) o[j] = f32_to_bf16_sr(x[j], sr_bits(h, j));
  }
}

// Stored bytes -> fp32 row. int8/int4 values are scale * code + bias, two
// float32 roundings (no fused multiply-add), as the reference computes them.
inline void decode_row(RowType t, const uint8_t* in, int64_t dim, float* x) {
  switch (t) {
    case RowType::kF32: std::memcpy(x, in, 4 * dim); return;
    case RowType::kF16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(in);
      for (int64_t j = 0; j < dim; ++j) x[j] = f16_to_f32(h[j]);
      return;
    }
    case RowType::kBF16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(in);
      for (int64_t j = 0; j < dim; ++j) x[j] = bf16_to_f32(h[j]);
      return;
    }
    case RowType::kI8:
    case RowType::kI4: {
      const int64_t so = scale_offset(t, dim);
      float scale, bias;
      std::memcpy(&scale, in + so, 4);
      std::memcpy(&bias, in + so + 4, 4);
      for (int64_t j = 0; j < dim; ++j) {
        const int c = t == RowType::kI8 ? in[j] : (in[j >> 1] >> ((j & 1) * 4)) & 0xF;
        x[j] = mul_rn(static_cast<float>(c), scale) + bias;
      }
      return;
    }
  }
}

}  // namespace embedlookup
