// Shared by both kernel variants: the key hash and the bounded hash probe.
//
// The hash is native/include/embedlookup/hash.h ported to OpenCL C, bit for
// bit (splitmix64's finalizer over key + golden ratio), so a key lands in the
// same home slot on every backend. The tests check it against the NumPy oracle.
//
// Device-side index: open addressing with linear probing over `mask + 1`
// slots (a power of two). slot_rows[s] == EL_NO_ROW marks an empty slot, so
// any int64 value is a valid key. The host builds the index with every key
// fewer than EL_MAX_PROBE slots from its home, which lets the probe loop have
// a compile-time trip bound (FPGA compilers need one to schedule it) without
// ever missing a present key.
#ifndef EL_COMMON_CL
#define EL_COMMON_CL

// EL_NO_ROW (an empty slot / a missing key) comes from the host as a build
// option: the value of native/include/embedlookup/row_id.h, as a signed int.
#ifndef EL_NO_ROW
#error "build with -DEL_NO_ROW=<the engine's no-row sentinel as int>"
#endif
#define EL_MODE_SUM 0
#define EL_MODE_MEAN 1
#define EL_MODE_MAX 2

#ifndef EL_MAX_PROBE
#define EL_MAX_PROBE 128
#endif

inline ulong el_mix64(ulong x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9UL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebUL;
  x ^= x >> 31;
  return x;
}

inline ulong el_hash_key(long key) { return el_mix64((ulong)key + 0x9e3779b97f4a7c15UL); }

// Row id of `key`, or EL_NO_ROW. At most EL_MAX_PROBE slots are read; the
// loop ends early at the key or at the first empty slot.
inline int el_probe(long key, __global const long* restrict slot_keys, __global const int* restrict slot_rows,
                    ulong mask) {
  ulong s = el_hash_key(key) & mask;
  int row = EL_NO_ROW;
  for (int step = 0; step < EL_MAX_PROBE; ++step) {
    const int r = slot_rows[s];
    if (r == EL_NO_ROW) break;
    if (slot_keys[s] == key) {
      row = r;
      break;
    }
    s = (s + 1) & mask;
  }
  return row;
}

// ------------------------------------------------------------- row storage
// Rows are stored in one of the engine's storage types (little-endian, every
// row a multiple of 4 bytes; docs/opencl.md), chosen when the program is
// built with -DEL_ROW_KIND=<id>:
//   0 fp32: dim floats
//   1 fp16: dim IEEE halves (read with vload_half: no cl_khr_fp16 needed)
//   2 bf16: dim bfloat16 (the top 16 bits of a float)
//   3 int8: dim uint8 codes, zero padding to 4 bytes, float scale, float bias
//   4 int4: dim/2 bytes (element 2i low nibble, 2i+1 high), padding, scale, bias
// Values are scale * code + bias, computed as a multiply then an add (no
// contraction), the rounding the reference dequantizer does, so decoded
// rows equal the host's bit for bit. Rows are never expanded to fp32 in
// global memory: each element is decoded where the kernel reads it.
#ifndef EL_ROW_KIND
#define EL_ROW_KIND 0
#endif
#if EL_ROW_KIND == 0
typedef float el_row_t;
#else
typedef uchar el_row_t;
#endif

inline int el_pad4(int n) { return (n + 3) & ~3; }

// Bytes of one row (a multiple of 4).
inline long el_row_bytes(int dim) {
#if EL_ROW_KIND == 0
  return 4L * dim;
#elif EL_ROW_KIND == 1 || EL_ROW_KIND == 2
  return el_pad4(2 * dim);
#elif EL_ROW_KIND == 3
  return el_pad4(dim) + 8;
#else
  return el_pad4(dim / 2) + 8;
#endif
}

// Byte offset of the row's (scale, bias) pair (int8 / int4 only).
inline long el_row_tail(int dim) { return EL_ROW_KIND == 3 ? el_pad4(dim) : el_pad4(dim / 2); }

inline float el_affine(float code, float scale, float bias) {
#pragma OPENCL FP_CONTRACT OFF
  const float scaled = code * scale;
  return scaled + bias;
}

// Element d of row id (id != EL_NO_ROW, d < dim), decoded to float.
inline float el_row_value(__global const el_row_t* restrict rows, int id, int dim, int d) {
#if EL_ROW_KIND == 0
  return rows[(long)id * dim + d];
#else
  __global const uchar* row = rows + (long)id * el_row_bytes(dim);
#if EL_ROW_KIND == 1
  return vload_half(d, (__global const half*)row);
#elif EL_ROW_KIND == 2
  return as_float((uint)((__global const ushort*)row)[d] << 16);
#else
  __global const float* sb = (__global const float*)(row + el_row_tail(dim));
#if EL_ROW_KIND == 3
  const uint code = row[d];
#else
  const uint code = (row[d >> 1] >> ((d & 1) * 4)) & 15u;
#endif
  return el_affine((float)code, sb[0], sb[1]);
#endif
#endif
}

// The host builds the index from these hashes, so the device's hash is the
// only one the OpenCL backend uses. A grid-stride loop: launched as one work
// item (FPGA) it is a plain pipelined loop, as an NDRange each item takes a
// strided share.
__kernel void el_hash_keys(__global const long* restrict keys, __global ulong* restrict out, long n) {
  for (long i = get_global_id(0); i < n; i += get_global_size(0)) out[i] = el_hash_key(keys[i]);
}

#endif  // EL_COMMON_CL
