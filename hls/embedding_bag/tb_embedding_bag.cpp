// C-simulation testbench for embedding_bag: replays golden cases written by
// make_golden.py (inputs and the CPU engine's outputs) through the kernel and
// returns the number of mismatching values (capped at 255, the largest exit
// status a process can report; 0 means every case matched).
//
//   tb_embedding_bag [golden.bin]
//
// Golden file (little-endian): 8-byte magic "ELGOLD02", int64 n_cases, then
// per case: int64 kind, mode, use_weights, use_hash, dim, n_table, n,
// n_offsets, n_bags; float64 tol; int64 table_keys[n_table]; the table's rows;
// int64 keys[n]; int64 offsets[n_offsets]; float weights[n] (only if
// use_weights); float expected[n_bags * dim]. kind 0: fp32 rows, float
// table_rows[n_table * dim], run through embedding_bag; kind 3: int8 rows,
// uint32 words[n_table * int8_row_words(dim)], run through
// embedding_bag_int8. "ELGOLD01" files are the same without the kind field
// (fp32 only). Table row i belongs to table_keys[i]; without use_hash, keys
// are row numbers.
// tol == 0 asks for bit-equal results, else |got - want| <= tol * (1 + |want|).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "embedding_bag.h"
#include "embedding_bag_host.h"

namespace {

// Row kinds of the golden file: the engine's storage-type ids.
constexpr int64_t kFp32 = 0, kInt8 = 3;

struct Reader {
  FILE* f;
  bool ok = true;
  template <class T>
  std::vector<T> read(int64_t count) {
    std::vector<T> v(count > 0 ? static_cast<size_t>(count) : 0);
    if (count < 0 || (count > 0 && std::fread(v.data(), sizeof(T), v.size(), f) != v.size())) ok = false;
    return v;
  }
  template <class T>
  T one() {
    T x{};
    if (std::fread(&x, sizeof(T), 1, f) != 1) ok = false;
    return x;
  }
};

bool same(float got, float want, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (tol == 0.0) return std::memcmp(&got, &want, sizeof(float)) == 0 || (got == 0.0f && want == 0.0f);
  return std::fabs(static_cast<double>(got) - want) <= tol * (1.0 + std::fabs(static_cast<double>(want)));
}

}  // namespace

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "golden.bin";
  FILE* f = std::fopen(path, "rb");
  if (!f) {
    std::fprintf(stderr, "cannot open golden file %s (write it with make_golden.py)\n", path);
    return 1;
  }
  Reader in{f};
  char magic[8];
  const bool has_kind = std::fread(magic, 1, 8, f) == 8 && std::memcmp(magic, "ELGOLD02", 8) == 0;
  if (!has_kind && std::memcmp(magic, "ELGOLD01", 8) != 0) {
    std::fprintf(stderr, "%s: not a golden file (bad magic)\n", path);
    std::fclose(f);
    return 1;
  }
  const int64_t n_cases = in.one<int64_t>();
  long errors = 0, checked = 0;
  for (int64_t c = 0; c < n_cases && in.ok; ++c) {
    const int64_t kind = has_kind ? in.one<int64_t>() : kFp32;
    const int64_t mode = in.one<int64_t>(), use_weights = in.one<int64_t>(), use_hash = in.one<int64_t>();
    const int64_t dim = in.one<int64_t>(), n_table = in.one<int64_t>(), n = in.one<int64_t>();
    const int64_t n_offsets = in.one<int64_t>(), n_bags = in.one<int64_t>();
    const double tol = in.one<double>();
    if (!in.ok || dim < 1 || dim > el_hls::kMaxDim || n_table < 0 || n < 0 || n_offsets < 0 || n_bags < 0 ||
        (kind != kFp32 && kind != kInt8)) {
      std::fprintf(stderr, "case %lld: bad header (dim %lld must be in [1, %d], kind %lld 0 or 3)\n",
                   static_cast<long long>(c), static_cast<long long>(dim), el_hls::kMaxDim,
                   static_cast<long long>(kind));
      in.ok = false;
      break;
    }
    const auto table_keys = in.read<int64_t>(n_table);
    const auto table_rows = in.read<float>(kind == kFp32 ? n_table * dim : 0);
    const auto table_words = in.read<uint32_t>(kind == kInt8 ? n_table * el_hls::int8_row_words(dim) : 0);
    const auto keys = in.read<int64_t>(n);
    const auto offsets = in.read<int64_t>(n_offsets);
    const auto weights = in.read<float>(use_weights ? n : 0);
    const auto expected = in.read<float>(n_bags * dim);
    if (!in.ok) break;

    std::vector<int64_t> slot_keys;
    std::vector<int32_t> slot_rows;
    const uint64_t mask = el_hls::build_index(table_keys.data(), n_table, slot_keys, slot_rows);
    if (use_hash) {  // every table key must be found at its own row
      for (int64_t i = 0; i < n_table; ++i)
        if (el_hls::probe(table_keys[i], slot_keys.data(), slot_rows.data(), mask) != i) ++errors;
      std::printf("case %lld: %lld keys in %llu index slots\n", static_cast<long long>(c),
                  static_cast<long long>(n_table), static_cast<unsigned long long>(mask + 1));
    }
    std::vector<float> out(static_cast<size_t>(n_bags * dim), -12345.0f);  // poison: unwritten outputs fail
    const float dummy = 0.0f;  // stands in for empty arrays
    const uint32_t dummy_word = 0;
    const int64_t* k = keys.empty() ? nullptr : keys.data();
    const int64_t* o = offsets.empty() ? nullptr : offsets.data();
    const float* w = use_weights ? weights.data() : &dummy;
    float* dst = out.empty() ? nullptr : out.data();
    const auto d32 = static_cast<int32_t>(dim), m32 = static_cast<int32_t>(mode);
    const auto w32 = static_cast<int32_t>(use_weights), h32 = static_cast<int32_t>(use_hash);
    if (kind == kFp32) {
      embedding_bag(k, o, w, table_rows.empty() ? &dummy : table_rows.data(), slot_keys.data(), slot_rows.data(),
                    dst, n, n_offsets, n_bags, n_table, d32, m32, w32, h32, mask);
    } else {
      embedding_bag_int8(k, o, w, table_words.empty() ? &dummy_word : table_words.data(), slot_keys.data(),
                         slot_rows.data(), dst, n, n_offsets, n_bags, n_table, d32, m32, w32, h32, mask);
    }
    long case_errors = 0;
    for (int64_t i = 0; i < n_bags * dim; ++i) {
      if (!same(out[i], expected[i], tol)) {
        if (case_errors < 5)
          std::fprintf(stderr, "case %lld (kind %lld, mode %lld, weights %lld, hash %lld): out[%lld][%lld] = %.9g, "
                       "want %.9g\n",
                       static_cast<long long>(c), static_cast<long long>(kind), static_cast<long long>(mode),
                       static_cast<long long>(use_weights), static_cast<long long>(use_hash),
                       static_cast<long long>(i / dim), static_cast<long long>(i % dim), out[i], expected[i]);
        ++case_errors;
      }
    }
    errors += case_errors;
    checked += n_bags * dim;
  }
  if (!in.ok) {
    std::fprintf(stderr, "%s: truncated or malformed golden file\n", path);
    ++errors;
  } else if (std::fgetc(f) != EOF) {
    std::fprintf(stderr, "%s: trailing bytes after %lld cases\n", path, static_cast<long long>(n_cases));
    ++errors;
  }
  std::fclose(f);
  std::printf("embedding_bag csim: %lld cases, %ld values checked, %ld errors\n", static_cast<long long>(n_cases),
              checked, errors);
  return errors > 255 ? 255 : static_cast<int>(errors);
}
