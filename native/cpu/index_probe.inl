// The vectorized index probe for kernel bodies compiled once per instruction
// set: included inside namespace embedlookup::cpu::EL_ISA_NS (so the AVX2 and
// baseline builds get distinct functions). The AVX2 build compares a bucket's
// four first keys with one vector compare and finds empty slots with another:
// fewer instructions per key than KeyIndex::find_from, the baseline build's
// probe. Same result: the live row of the key, or kNoRow.
__attribute__((always_inline)) inline uint32_t probe_index(const KeyIndex& index, size_t b, int64_t key) {
#ifdef __AVX2__
  const __m256i k4 = _mm256_set1_epi64x(key);
  for (;;) {
    const IndexBucket& bk = index.bucket(b);
    const __m256i ks = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk.keys));
    unsigned eq = static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(ks, k4))));
    eq |= static_cast<unsigned>(bk.keys[4] == key) << 4;
    // A tombstone keeps its key (a re-insert may sit further on): only the
    // matching slots' rows are checked.
    while (eq) {
      const uint32_t r = bk.rows[__builtin_ctz(eq)];
      if (__builtin_expect(r < kTombstone, 1)) return r;
      eq &= eq - 1;
    }
    const __m128i rs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bk.rows));
    unsigned empty =
        static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(rs, _mm_set1_epi32(-1)))));
    empty |= static_cast<unsigned>(bk.rows[4] == kNoRow) << 4;
    if (empty) return kNoRow;
    b = index.next_bucket(b);
  }
#else
  return index.find_from(b, key);
#endif
}
