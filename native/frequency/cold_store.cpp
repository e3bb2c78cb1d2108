// ColdRowStore (cold_store.h): compressed rows in memory behind the
// StorageTier interface.
#include "cold_store.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>

namespace embedlookup {

namespace {
template <class T>
void grow(std::vector<T>& v, size_t n) {
  v.reserve(n);  // exactly n (resize alone would double the capacity)
  v.resize(n);
}
}  // namespace

ColdRowStore::ColdRowStore(int64_t dim, int64_t state_floats, RowType type)
    : dim_(dim),
      sf_(state_floats),
      type_(type),
      rb_(embedlookup::row_bytes(type, dim)),
      sb_(state_floats > 0 ? embedlookup::row_bytes(RowType::kI8, state_floats) : 0) {
  if (dim <= 0) throw std::invalid_argument("cold rows: dim must be > 0");
  if (state_floats < 0) throw std::invalid_argument("cold rows: state_floats must be >= 0");
  if (type == RowType::kF32) throw std::invalid_argument("cold rows: the cold row type must be a compressed type");
  if (type == RowType::kI4 && dim % 2) throw std::invalid_argument("cold rows: int4 needs an even dim");
}

int64_t ColdRowStore::size() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return static_cast<int64_t>(index_.size());
}

int64_t ColdRowStore::get(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions,
                          uint8_t* found) {
  std::shared_lock<std::shared_mutex> lk(mu_);
  int64_t got = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t s = slot_of(keys[i]);
    found[i] = s != kNoRow;
    if (s == kNoRow) continue;
    ++got;
    decode_row(type_, rows_.data() + static_cast<size_t>(s) * rb_, dim_, rows + i * dim_);
    if (state && sf_) decode_row(RowType::kI8, state_.data() + static_cast<size_t>(s) * sb_, sf_, state + i * sf_);
    if (versions) versions[i] = ver_[s];
  }
  reads_.fetch_add(got, std::memory_order_relaxed);
  bytes_read_.fetch_add(got * (rb_ + sb_), std::memory_order_relaxed);
  return got;
}

void ColdRowStore::set(const int64_t* keys, int64_t n, const float* rows, const float* state,
                       const uint64_t* versions) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  // Validate first (a failed set writes nothing): every value must encode.
  for (int64_t i = 0; i < n; ++i) {
    const float* r = rows + i * dim_;
    for (int64_t j = 0; j < dim_; ++j)
      if (!std::isfinite(r[j])) throw std::invalid_argument("cold rows: row of key " + std::to_string(keys[i]) +
                                                            " is not finite");
    if (!row_representable(type_, r, dim_))
      throw std::invalid_argument("cold rows: row of key " + std::to_string(keys[i]) + " is out of the " +
                                  row_type_name(type_) + " range");
  }
  const size_t fresh = static_cast<size_t>(n);
  index_.reserve(index_.size() + fresh);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t s = slot_of(keys[i]);
    if (s == kNoRow) {
      if (!free_.empty()) {
        s = free_.back();
        free_.pop_back();
      } else {
        s = next_++;
        const size_t m = next_;
        if (ver_.size() < m) {
          // Grow every slot array together by 1/8 (at least 4096 slots),
          // allocating exactly that: cold rows are the memory being saved, so
          // no doubling (amortised O(1) still, factor 1.125).
          const size_t cap = std::max<size_t>(m, ver_.size() + std::max<size_t>(ver_.size() / 8, 4096));
          grow(rows_, cap * rb_);
          grow(state_, cap * sb_);
          grow(ver_, cap);
          grow(score_, cap);
          grow(last_, cap);
        }
      }
      index_.insert(keys[i], s);
      score_[s] = 0.0f;
      last_[s] = 0;
    }
    encode_row(type_, rows + i * dim_, dim_, rows_.data() + static_cast<size_t>(s) * rb_);
    if (sf_) {
      uint8_t* o = state_.data() + static_cast<size_t>(s) * sb_;
      if (state) encode_row(RowType::kI8, state + i * sf_, sf_, o);
      else std::fill(o, o + sb_, 0);  // all-zero bytes decode to zeros
    }
    ver_[s] = versions ? versions[i] : 0;
    max_ver_ = std::max(max_ver_, ver_[s]);
  }
  st_.writes += n;
  st_.bytes_written += n * (rb_ + sb_);
}

int64_t ColdRowStore::contains(const int64_t* keys, int64_t n, uint8_t* found) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  int64_t got = 0;
  for (int64_t i = 0; i < n; ++i) got += found[i] = slot_of(keys[i]) != kNoRow;
  return got;
}

int64_t ColdRowStore::erase(const int64_t* keys, int64_t n) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  int64_t gone = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t s = index_.erase(keys[i]);
    if (s == kNoRow) continue;
    free_.push_back(s);
    ++gone;
  }
  st_.erases += gone;
  return gone;
}

void ColdRowStore::scan(uint64_t since, std::vector<int64_t>& keys) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  keys.clear();
  index_.for_each([&](int64_t k, uint32_t s) {
    if (ver_[s] > since || since == 0) keys.push_back(k);
  });
}

TierStats ColdRowStore::stats() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  TierStats s = st_;
  s.reads = reads_.load();
  s.bytes_read = bytes_read_.load();
  return s;
}

uint64_t ColdRowStore::max_version() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return max_ver_;
}

ColdRowStore::Memory ColdRowStore::memory() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  Memory m;
  m.rows = static_cast<int64_t>(index_.size());
  m.row_bytes = static_cast<int64_t>(rows_.capacity());
  m.state_bytes = static_cast<int64_t>(state_.capacity());
  m.metadata_bytes = static_cast<int64_t>(ver_.capacity() * sizeof(uint64_t) + score_.capacity() * sizeof(float) +
                                          last_.capacity() * sizeof(uint32_t) + free_.capacity() * sizeof(uint32_t));
  m.index_bytes = static_cast<int64_t>(index_.bytes());
  return m;
}

void ColdRowStore::set_meta(const int64_t* keys, int64_t n, const float* score, const uint32_t* last) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t s = slot_of(keys[i]);
    if (s == kNoRow) continue;
    score_[s] = score[i];
    last_[s] = last[i];
  }
}

bool ColdRowStore::meta(int64_t key, float& score, uint32_t& last) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  const uint32_t s = slot_of(key);
  if (s == kNoRow) return false;
  score = score_[s];
  last = last_[s];
  return true;
}

void ColdRowStore::all_meta(std::vector<int64_t>& keys, std::vector<float>& score, std::vector<uint32_t>& last) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  keys.clear();
  score.clear();
  last.clear();
  index_.for_each([&](int64_t k, uint32_t s) {
    keys.push_back(k);
    score.push_back(score_[s]);
    last.push_back(last_[s]);
  });
}

}  // namespace embedlookup
