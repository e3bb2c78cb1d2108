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

// The host builds the index from these hashes, so the device's hash is the
// only one the OpenCL backend uses. A grid-stride loop: launched as one work
// item (FPGA) it is a plain pipelined loop, as an NDRange each item takes a
// strided share.
__kernel void el_hash_keys(__global const long* restrict keys, __global ulong* restrict out, long n) {
  for (long i = get_global_id(0); i < n; i += get_global_size(0)) out[i] = el_hash_key(keys[i]);
}

#endif  // EL_COMMON_CL
