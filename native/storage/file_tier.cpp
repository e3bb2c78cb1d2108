#include "file_tier.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_set>

#include "crc32c.h"
#include "le_bytes.h"

namespace embedlookup {

namespace {
constexpr char kMagic[8] = {'E', 'L', 'T', 'I', 'E', 'R', '\r', '\n'};
constexpr uint32_t kFormatVersion = 2, kBom = 0x01020304u, kDtypeF32 = 1;
constexpr size_t kHeaderBytes = 4096, kHeaderCrc = 124;
// The clean record, written by close() after the last flush: the mark, the
// CRC-32C of the whole directory, the live rows, and the record's own CRC.
// Only the mark is rewritten (to 0) while the file is open.
constexpr size_t kCleanAt = 512, kCleanDirCrc = 516, kCleanRows = 520, kCleanCrc = 528, kCleanBytes = 20;
constexpr uint32_t kClean = 0x4E41454Cu;  // "CLEAN" marker; 0 = dirty (open, or killed); anything else = damage
constexpr int64_t kChunk = 4096;           // rows per write batch

using fmt::put;
using fmt::load_as;
size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// slots for `capacity` rows: spare slots for out-of-place writes (a flush reclaims them)
constexpr int64_t slots_for(int64_t capacity) { return capacity + (capacity / 16 > 64 ? capacity / 16 : 64); }
constexpr int64_t compute_max_capacity() {
  int64_t lo = 1, hi = static_cast<int64_t>(kMaxRowId);  // slots_for(lo) fits, slots_for(hi) does not
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (slots_for(mid) < static_cast<int64_t>(kMaxRowId) ? lo : hi) = mid;
  }
  return lo;
}
constexpr int64_t kMaxCapacity = compute_max_capacity();

// Header dtype code of a row type: 1 = float32 (the only one before row
// types), 2..5 = fp16, bf16, int8, int4 (the snapshot format's codes).
uint32_t dtype_code(RowType t) { return static_cast<uint32_t>(t) + 1; }

// The one layout a (dim, row type, state_floats, capacity) gives; every
// product and sum overflow-checked (with the ranges above none can overflow,
// but a header is checked against this, not trusted). Slots: the row's
// row_bytes, then the state floats, rounded up to 64 bytes for float32 rows
// (the layout of every file before row types) and to 8 for compressed rows
// (so an int8 row of dim 64 takes 72 bytes, not 128).
struct Layout {
  int64_t slots = 0, slot_bytes = 0;
  uint64_t dir_offset = 0, data_offset = 0, total = 0;
};
bool layout_for(int64_t dim, RowType t, int64_t sf, int64_t capacity, Layout& L) {
  if (dim < 1 || dim > FileTier::kMaxDim || sf < 0 || sf > FileTier::kMaxStateFloats || capacity < 1 ||
      capacity > kMaxCapacity)
    return false;
  L.slots = slots_for(capacity);
  L.slot_bytes = static_cast<int64_t>(
      align_up(static_cast<size_t>(row_bytes(t, dim) + sf * 4), t == RowType::kF32 ? 64 : 8));
  uint64_t dir_bytes, data_bytes;
  if (__builtin_mul_overflow(static_cast<uint64_t>(L.slots), uint64_t{32}, &dir_bytes)) return false;
  if (__builtin_mul_overflow(static_cast<uint64_t>(L.slots), static_cast<uint64_t>(L.slot_bytes), &data_bytes))
    return false;
  L.dir_offset = kHeaderBytes;
  L.data_offset = align_up(L.dir_offset + dir_bytes, 4096);
  if (__builtin_add_overflow(L.data_offset, data_bytes, &L.total)) return false;
  return L.total <= static_cast<uint64_t>(INT64_MAX);  // an off_t
}

void pwrite_all(int fd, const void* p, size_t n, size_t off, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  if (const int e = io_faults::take(io_faults::kWrite))
    throw TierIOError("tier '" + path + "': write failed: " + std::strerror(e), e);
  while (n) {
    const ssize_t w = ::pwrite(fd, c, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      const int e = errno;
      throw TierIOError("tier '" + path + "': write failed: " + std::strerror(e), e);
    }
    c += w;
    off += static_cast<size_t>(w);
    n -= static_cast<size_t>(w);
  }
}
void pread_all(int fd, void* p, size_t n, size_t off, const std::string& path) {
  char* c = static_cast<char*>(p);
  while (n) {
    const ssize_t r = ::pread(fd, c, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw std::runtime_error("tier '" + path + "': read failed: " + std::strerror(errno));
    if (r == 0) throw TierFormatError("tier file '" + path + "' is truncated");
    c += r;
    off += static_cast<size_t>(r);
    n -= static_cast<size_t>(r);
  }
}
uint32_t entry_crc(const void* e) { return crc32c(e, 28); }
bool all_zero(const void* p, size_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i]) return false;
  return true;
}
bool fsync_parent(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0) return false;
  const bool ok = ::fsync(d) == 0;
  ::close(d);
  return ok;
}
}  // namespace

int64_t FileTier::max_capacity() { return kMaxCapacity; }

FileTier::FileTier(const std::string& path, int64_t dim, int64_t state_floats, int64_t capacity, RowType row_type)
    : path_(path), dim_(dim), state_floats_(state_floats), row_type_(row_type), row_bytes_(0), index_(0) {
  if (path.find('\0') != std::string::npos) throw std::invalid_argument("path: must not contain a NUL byte");
  if (dim <= 0 || dim > kMaxDim)
    throw std::invalid_argument("dim must be in [1, " + std::to_string(kMaxDim) + "], got " + std::to_string(dim));
  if (static_cast<int>(row_type) < 0 || static_cast<int>(row_type) >= kRowTypes)
    throw std::invalid_argument("row_type: unknown code " + std::to_string(static_cast<int>(row_type)));
  if (row_type == RowType::kI4 && dim % 2)
    throw std::invalid_argument("dim must be even for row_type int4, got " + std::to_string(dim));
  row_bytes_ = row_bytes(row_type, dim);
  if (state_floats < 0 || state_floats > kMaxStateFloats)
    throw std::invalid_argument("state_floats must be in [0, " + std::to_string(kMaxStateFloats) + "], got " +
                                std::to_string(state_floats));
  if (capacity < 0 || capacity > kMaxCapacity)
    throw std::invalid_argument("capacity must be in [1, " + std::to_string(kMaxCapacity) +
                                "] rows (0 when reopening: the file's), got " + std::to_string(capacity));
  for (int attempt = 0;; ++attempt) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    try {
      if (fd_ >= 0) {
        open_existing(capacity);
        return;
      }
      if (errno != ENOENT) throw std::runtime_error("tier '" + path + "': cannot open: " + std::strerror(errno));
      if (capacity <= 0)
        throw std::invalid_argument("capacity: tier file '" + path + "' does not exist; give a capacity to create it");
      if (create(capacity)) return;
      if (attempt > 0)
        throw std::runtime_error("tier '" + path + "': created and removed by others while opening it");
    } catch (...) {
      release_fd();
      throw;
    }
  }
}

void FileTier::release_fd() {
  reader_.reset();
  free_io_buffers();
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
  map_ = nullptr;
  if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);  // explicit: a forked child may share the open file description
    ::close(fd_);
  }
  fd_ = -1;
}

void FileTier::lock_file(int fd, const std::string& name) {
  int rc;
  do rc = ::flock(fd, LOCK_EX | LOCK_NB);
  while (rc != 0 && errno == EINTR);
  if (rc == 0) return;
  if (errno == EWOULDBLOCK)
    throw TierLockedError("tier file '" + name +
                          "' is already open (by another FileTier in this or another process); a tier file has "
                          "one user at a time: close the other one first");
  throw std::runtime_error("tier '" + name + "': cannot lock: " + std::strerror(errno));
}

FileTier::~FileTier() {
  try {
    close();
  } catch (...) {
    // destructor: a failed final flush cannot be reported; close() reports it
  }
}

bool FileTier::create(int64_t capacity) {
  Layout L;
  if (!layout_for(dim_, row_type_, state_floats_, capacity, L))
    throw std::invalid_argument("capacity: " + std::to_string(capacity) + " rows of " +
                                std::to_string(dim_ + state_floats_) + " floats do not fit a tier file");
  capacity_ = capacity;
  slots_ = L.slots;
  slot_bytes_ = L.slot_bytes;
  dir_offset_ = L.dir_offset;
  data_offset_ = L.data_offset;
  // Memory first: a failure here leaves no file behind.
  dir_.assign(slots_, Entry{});
  unflushed_.assign(slots_, 0);
  free_bits_.assign((static_cast<size_t>(slots_) + 63) / 64, 0);
  free_count_ = 0;
  free_lo_word_ = 0;
  for (int64_t s = 0; s < slots_; ++s) mark_free(static_cast<uint32_t>(s));
  // Built under a temporary name and linked into place when complete, so a
  // failed (or killed) create never leaves a half-made file at path_. The
  // temporary is locked: a concurrent create of the same path fails cleanly,
  // and a leftover of a killed create is reused.
  const std::string tmp = path_ + ".creating";
  fd_ = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error("tier '" + path_ + "': cannot create '" + tmp + "': " + std::strerror(errno));
  try {
    lock_file(fd_, path_);
  } catch (const TierLockedError&) {
    throw TierLockedError("tier file '" + path_ + "' is being created by another FileTier (in this or another process)");
  }
  bool published = false;
  try {
    if (::ftruncate(fd_, 0) != 0) throw std::runtime_error("tier '" + path_ + "': cannot truncate '" + tmp + "'");
    const int rc = ::posix_fallocate(fd_, 0, static_cast<off_t>(L.total));
    if (rc != 0)
      throw std::runtime_error("tier '" + path_ + "': cannot allocate " + std::to_string(L.total) +
                               " bytes: " + std::strerror(rc));
    uint8_t h[kHeaderBytes] = {};
    std::memcpy(h, kMagic, 8);
    put<uint32_t>(h, 8, kFormatVersion);
    put<uint32_t>(h, 12, kBom);
    put<uint32_t>(h, 16, dtype_code(row_type_));
    put<int64_t>(h, 24, dim_);
    put<int64_t>(h, 32, state_floats_);
    put<int64_t>(h, 40, capacity_);
    put<int64_t>(h, 48, slots_);
    put<int64_t>(h, 56, slot_bytes_);
    put<uint64_t>(h, 64, dir_offset_);
    put<uint64_t>(h, 72, data_offset_);
    put<uint32_t>(h, kHeaderCrc, crc32c(h, kHeaderCrc));
    pwrite_all(fd_, h, kHeaderBytes, 0, path_);  // clean mark 0: dirty while open
    if (::fsync(fd_) != 0) throw std::runtime_error("tier '" + path_ + "': fsync failed: " + std::strerror(errno));
    map_file();
    // link() never replaces: a file created at path_ meanwhile is opened instead.
    if (::link(tmp.c_str(), path_.c_str()) == 0) {
      published = true;
    } else if (errno == EEXIST) {
      ::unlink(tmp.c_str());
      release_fd();
      return false;
    } else if (errno == EPERM || errno == EOPNOTSUPP || errno == ENOSYS || errno == EMLINK) {
      // no hard links on this file system: rename, after checking (racy, best effort)
      if (::access(path_.c_str(), F_OK) == 0) {
        ::unlink(tmp.c_str());
        release_fd();
        return false;
      }
      if (::rename(tmp.c_str(), path_.c_str()) != 0)
        throw std::runtime_error("tier '" + path_ + "': cannot rename '" + tmp + "': " + std::strerror(errno));
      published = true;
    } else {
      throw std::runtime_error("tier '" + path_ + "': cannot link '" + tmp + "': " + std::strerror(errno));
    }
    ::unlink(tmp.c_str());
    if (!fsync_parent(path_))
      throw std::runtime_error("tier '" + path_ + "': cannot fsync its folder: " + std::strerror(errno));
  } catch (...) {
    ::unlink(published ? path_.c_str() : tmp.c_str());
    throw;
  }
  return true;
}

void FileTier::open_existing(int64_t capacity) {
  // Nothing below writes to the file until every check has passed: a failed
  // open leaves the file byte-identical (its clean mark included).
  lock_file(fd_, path_);
  struct stat st;
  if (::fstat(fd_, &st) != 0) throw std::runtime_error("tier '" + path_ + "': cannot stat");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < kHeaderBytes)
    throw TierFormatError("tier file '" + path_ + "' is truncated or not a tier file (" + std::to_string(size) +
                          " bytes)");
  uint8_t h[kHeaderBytes];
  pread_all(fd_, h, kHeaderBytes, 0, path_);
  if (std::memcmp(h, kMagic, 8) != 0) throw TierFormatError("'" + path_ + "' is not an embedlookup tier file (bad magic)");
  if (load_as<uint32_t>(h, 12) != kBom) throw TierFormatError("tier file '" + path_ + "' was written with the other byte order");
  const uint32_t version = load_as<uint32_t>(h, 8);
  if (version != kFormatVersion)
    throw TierFormatError("tier file '" + path_ + "' has format version " + std::to_string(version) +
                          ", this build reads " + std::to_string(kFormatVersion) +
                          (version == 1
                               ? " (version 1 files have no directory checksum: re-create the tier, moving its rows "
                                 "with the build that wrote it, e.g. through a checkpoint)"
                               : ""));
  if (load_as<uint32_t>(h, kHeaderCrc) != crc32c(h, kHeaderCrc))
    throw TierFormatError("tier file '" + path_ + "' is corrupt (header checksum mismatch)");
  const uint32_t dtype = load_as<uint32_t>(h, 16);
  if (dtype < kDtypeF32 || dtype > static_cast<uint32_t>(kRowTypes))
    throw TierFormatError("tier file '" + path_ + "' holds dtype code " + std::to_string(dtype) +
                          ", not a row type (1 = float32, 2..5 = fp16, bf16, int8, int4)");
  if (dtype != dtype_code(row_type_))
    throw TierFormatError("tier file '" + path_ + "' holds " + row_type_name(static_cast<RowType>(dtype - 1)) +
                          " rows, expected " + row_type_name(row_type_));
  const int64_t fdim = load_as<int64_t>(h, 24), fsf = load_as<int64_t>(h, 32);
  if (fdim != dim_)
    throw TierFormatError("tier file '" + path_ + "' holds rows of dim " + std::to_string(fdim) + ", expected " +
                          std::to_string(dim_));
  if (fsf != state_floats_)
    throw TierFormatError("tier file '" + path_ + "' stores " + std::to_string(fsf) +
                          " optimizer-state floats per row, expected " + std::to_string(state_floats_));
  const int64_t fcap = load_as<int64_t>(h, 40);
  Layout L;
  if (!layout_for(dim_, row_type_, state_floats_, fcap, L))
    throw TierFormatError("tier file '" + path_ + "' is corrupt (capacity " + std::to_string(fcap) + " out of range)");
  if (capacity != 0 && capacity != fcap)
    throw std::invalid_argument("capacity: tier file '" + path_ + "' was created with capacity " +
                                std::to_string(fcap) + ", not " + std::to_string(capacity));
  // The layout is a function of (dim, state_floats, capacity): every stored
  // size and offset must be exactly that one (nothing is taken from the file).
  auto expect = [&](const char* name, uint64_t got, uint64_t want) {
    if (got != want)
      throw TierFormatError("tier file '" + path_ + "' is corrupt (inconsistent header: " + name + " " +
                            std::to_string(got) + ", the layout needs " + std::to_string(want) + ")");
  };
  expect("slots", load_as<uint64_t>(h, 48), static_cast<uint64_t>(L.slots));
  expect("slot_bytes", load_as<uint64_t>(h, 56), static_cast<uint64_t>(L.slot_bytes));
  expect("directory offset", load_as<uint64_t>(h, 64), L.dir_offset);
  expect("data offset", load_as<uint64_t>(h, 72), L.data_offset);
  if (size != L.total)
    throw TierFormatError("tier file '" + path_ + "' is " + (size < L.total ? "truncated" : "corrupt") + ": " +
                          std::to_string(size) + " bytes, expected " + std::to_string(L.total));
  const uint32_t mark = load_as<uint32_t>(h, kCleanAt);
  if (mark != kClean && mark != 0)
    throw TierFormatError("tier file '" + path_ + "' is corrupt (clean mark damaged)");
  const bool clean = mark == kClean;
  if (clean && load_as<uint32_t>(h, kCleanCrc) != crc32c(h + kCleanAt, kCleanCrc - kCleanAt))
    throw TierFormatError("tier file '" + path_ + "' is corrupt (clean record checksum mismatch)");
  capacity_ = fcap;
  slots_ = L.slots;
  slot_bytes_ = L.slot_bytes;
  dir_offset_ = L.dir_offset;
  data_offset_ = L.data_offset;
  map_file();
  std::vector<uint32_t> losers =
      load_directory(clean, load_as<uint32_t>(h, kCleanDirCrc), load_as<int64_t>(h, kCleanRows));
  // Verified: from here on the file is written (dirty while open, then the
  // dropped entries of a recovery zeroed).
  recovered_ = !clean;
  set_clean(false);
  release_slots_locked(losers);
}

void FileTier::map_file() {
  map_bytes_ = data_offset_ + static_cast<size_t>(slots_) * slot_bytes_;
  void* p = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) throw std::runtime_error("tier '" + path_ + "': mmap failed: " + std::strerror(errno));
  ::madvise(p, map_bytes_, MADV_RANDOM);  // slot reads are random: no readahead
  map_ = static_cast<const uint8_t*>(p);
}

void FileTier::pwrite_checked(const void* p, size_t n, size_t off) {
  try {
    pwrite_all(fd_, p, n, off, path_);
  } catch (...) {
    io_failed_ = true;  // the directory mirror may differ from the disk: never mark this file clean
    throw;
  }
}

void FileTier::set_clean(bool clean) {
  uint8_t r[kCleanBytes] = {};
  size_t n = 4;  // dirty: only the mark (the rest of a stale record is ignored without it)
  if (clean) {
    put<uint32_t>(r, 0, kClean);
    put<uint32_t>(r, kCleanDirCrc - kCleanAt, crc32c(dir_.data(), static_cast<size_t>(slots_) * sizeof(Entry)));
    put<int64_t>(r, kCleanRows - kCleanAt, static_cast<int64_t>(index_.size()));
    put<uint32_t>(r, kCleanCrc - kCleanAt, crc32c(r, kCleanCrc - kCleanAt));
    n = kCleanBytes;
  }
  pwrite_checked(r, n, kCleanAt);
  sync_checked();
}

void FileTier::sync_checked() {
  int e = io_faults::take(io_faults::kSync);
  if (!e && ::fdatasync(fd_) != 0) e = errno;
  if (e) {
    io_failed_ = true;
    throw TierIOError("tier '" + path_ + "': fdatasync failed: " + std::strerror(e), e);
  }
}

std::vector<uint32_t> FileTier::load_directory(bool was_clean, uint32_t dir_crc, int64_t rows) {
  free_bits_.assign((static_cast<size_t>(slots_) + 63) / 64, 0);
  free_count_ = 0;
  free_lo_word_ = 0;
  dir_.assign(slots_, Entry{});
  pread_all(fd_, dir_.data(), static_cast<size_t>(slots_) * sizeof(Entry), dir_offset_, path_);
  auto damage = [&](const std::string& what) {
    return TierFormatError("tier file '" + path_ + "' is corrupt: " + what + " (it was closed cleanly, so this is "
                           "damage, not a torn write)");
  };
  // A cleanly closed file: the directory as a whole must match its checksum
  // (this catches zeroed entries, which look free) and the row count.
  if (was_clean && crc32c(dir_.data(), static_cast<size_t>(slots_) * sizeof(Entry)) != dir_crc)
    throw damage("the directory fails its checksum");
  unflushed_.assign(slots_, 0);
  index_.reserve(static_cast<size_t>(capacity_));
  const size_t payload = static_cast<size_t>(row_bytes_ + state_floats_ * 4);
  std::vector<uint32_t> losers;
  for (int64_t s = 0; s < slots_; ++s) {
    Entry& e = dir_[s];
    const bool zero = all_zero(&e, sizeof(Entry));
    bool valid = !zero && e.seq != 0 && e.entry_crc == entry_crc(&e);
    if (!zero && !valid && was_clean)
      throw damage("directory entry " + std::to_string(s) + " fails its checksum");
    // Every open checks every live slot's data (CRC-32C at memory speed): after
    // a crash a torn slot is dropped (the key keeps its previous copy); in a
    // cleanly closed file a bad slot is damage, reported, never served.
    if (valid && crc32c(map_ + data_off(static_cast<uint32_t>(s)), payload) != e.data_crc) {
      if (was_clean) throw damage("slot " + std::to_string(s) + " (key " + std::to_string(e.key) + ") fails its checksum");
      valid = false;
    }
    if (!valid) {
      if (zero) mark_free(static_cast<uint32_t>(s));
      else losers.push_back(static_cast<uint32_t>(s));
      continue;
    }
    seq_ = std::max(seq_, e.seq);
    max_version_ = std::max(max_version_, e.version);
    const uint32_t other = index_.find(e.key);
    if (other == kNoRow) {
      if (static_cast<int64_t>(index_.size()) >= capacity_)
        throw TierFormatError("tier file '" + path_ + "' is corrupt (more rows than its capacity " +
                              std::to_string(capacity_) + ")");
      index_.insert(e.key, static_cast<uint32_t>(s));
      continue;
    }
    if (was_clean) throw damage("key " + std::to_string(e.key) + " is in two slots");
    if (dir_[other].seq < e.seq) {  // a newer copy of the key: the older one was superseded
      index_.set_row(e.key, static_cast<uint32_t>(s));
      losers.push_back(other);
    } else {
      losers.push_back(static_cast<uint32_t>(s));
    }
  }
  if (was_clean && static_cast<int64_t>(index_.size()) != rows)
    throw damage("it holds " + std::to_string(index_.size()) + " rows, its clean record says " + std::to_string(rows));
  return losers;
}

void FileTier::check_open() const {
  if (fd_ < 0) throw std::runtime_error("tier '" + path_ + "' is closed");
}

int64_t FileTier::size() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return static_cast<int64_t>(index_.size());
}

int64_t FileTier::get(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions,
                      uint8_t* found) {
  return get_impl(keys, n, rows, false, state, versions, found, false);
}

int64_t FileTier::get_background(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions,
                                 uint8_t* found) {
  return get_impl(keys, n, rows, false, state, versions, found, true);
}

int64_t FileTier::get_raw(const int64_t* keys, int64_t n, uint8_t* rows, float* state, uint64_t* versions,
                          uint8_t* found) {
  return get_impl(keys, n, rows, true, state, versions, found, false);
}

void FileTier::emit_row(const uint8_t* src, int64_t i, void* rows, bool raw, float* state) const {
  if (raw || row_type_ == RowType::kF32) {
    const size_t rb = static_cast<size_t>(row_bytes_);
    std::memcpy(static_cast<uint8_t*>(rows) + i * rb, src, rb);
  } else {
    decode_row(row_type_, src, dim_, static_cast<float*>(rows) + i * dim_);
  }
  if (state && state_floats_) std::memcpy(state + i * state_floats_, src + row_bytes_, sizeof(float) * state_floats_);
}

int64_t FileTier::get_impl(const int64_t* keys, int64_t n, void* rows, bool raw, float* state, uint64_t* versions,
                           uint8_t* found, bool background) {
  std::shared_lock<std::shared_mutex> life(io_life_mu_, std::defer_lock);
  std::shared_lock<std::shared_mutex> lk(mu_, std::defer_lock);
  {
    ElapsedNs w(lock_wait_ns_);
    life.lock();
    lk.lock();
  }
  check_open();
  // Two passes so that cache misses overlap: resolve every key (index
  // buckets prefetched ahead), then copy slots (slot lines prefetched ahead).
  thread_local std::vector<uint32_t> slots;
  if (slots.size() < static_cast<size_t>(n)) slots.resize(n);
  constexpr int64_t kAhead = 8;
  for (int64_t i = 0; i < std::min(n, kAhead); ++i) index_.prefetch(keys[i]);
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) index_.prefetch(keys[i + kAhead]);
    slots[i] = index_.find(keys[i]);
  }
  const size_t row_bytes = static_cast<size_t>(row_bytes_);
  if (reader_) {
    // The slots are resolved under mu_, read without it (a set or flush may
    // run meanwhile: a write-back never waits for a read), and checked under
    // it again: a slot whose entry changed (its seq: a slot is freed, seq 0,
    // before it is written again) may hold another value by now; its key is
    // resolved and read again with mu_ held throughout.
    thread_local std::vector<uint64_t> seqs;
    if (seqs.size() < static_cast<size_t>(n)) seqs.resize(n);
    for (int64_t i = 0; i < n; ++i) seqs[i] = slots[i] != kNoRow ? dir_[slots[i]].seq : 0;
    lk.unlock();
    read_slots_parallel(slots.data(), n, rows, raw, state, background);  // throws TierIOError: nothing counted
    {
      ElapsedNs w(lock_wait_ns_);
      lk.lock();
    }
    check_open();
    std::vector<uint32_t> again;  // slot per position: kNoRow except positions read again
    for (int64_t i = 0; i < n; ++i) {
      if (slots[i] == kNoRow || dir_[slots[i]].seq == seqs[i]) continue;
      if (again.empty()) again.assign(static_cast<size_t>(n), kNoRow);
      again[i] = slots[i] = index_.find(keys[i]);
      stale_reads_.fetch_add(1, std::memory_order_relaxed);
    }
    if (!again.empty()) read_slots_parallel(again.data(), n, rows, raw, state, background);
    int64_t got = 0;
    for (int64_t i = 0; i < n; ++i) {
      found[i] = slots[i] != kNoRow;
      got += found[i];
      if (found[i] && versions) versions[i] = dir_[slots[i]].version;
    }
    reads_.fetch_add(got, std::memory_order_relaxed);
    bytes_read_.fetch_add(got * (row_bytes_ + (state ? state_floats_ : 0) * 4), std::memory_order_relaxed);
    return got;
  }
  auto prefetch_slot = [&](uint32_t s) {
    if (s == kNoRow) return;
    const uint8_t* p = map_ + data_off(s);
    for (size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(p + b, 0, 0);
  };
  for (int64_t i = 0; i < std::min(n, kAhead); ++i) prefetch_slot(slots[i]);
  int64_t got = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) prefetch_slot(slots[i + kAhead]);
    const uint32_t s = slots[i];
    if (s == kNoRow) {
      found[i] = 0;
      continue;
    }
    found[i] = 1;
    ++got;
    emit_row(map_ + data_off(s), i, rows, raw, state);
    if (versions) versions[i] = dir_[s].version;
  }
  reads_.fetch_add(got, std::memory_order_relaxed);
  bytes_read_.fetch_add(got * (row_bytes_ + (state ? state_floats_ : 0) * 4), std::memory_order_relaxed);
  return got;
}

void FileTier::set_io(IoMode mode, int threads, int64_t buffer_bytes, int64_t align) {
  std::unique_lock<std::shared_mutex> life(io_life_mu_);  // no get() is reading
  std::unique_lock<std::shared_mutex> lk(mu_);
  check_open();
  if (mode == IoMode::kMmap) {
    reader_.reset();
    free_io_buffers();
    io_buffer_bytes_ = 0;
    io_mode_ = mode;
    return;
  }
  if (threads < 1 || threads > 1024) throw std::invalid_argument("threads must be in [1, 1024], got " + std::to_string(threads));
  if (align < 512 || align > (1 << 20) || (align & (align - 1)))
    throw std::invalid_argument("align must be a power of two in [512, 1048576], got " + std::to_string(align));
  // The buffer must hold one slot's enclosing blocks.
  const int64_t need = static_cast<int64_t>(align_up(static_cast<size_t>(slot_bytes_), static_cast<size_t>(align))) + align;
  if (buffer_bytes < need)
    throw std::invalid_argument("buffer_bytes must be at least " + std::to_string(need) + " (one slot's blocks), got " +
                                std::to_string(buffer_bytes));
  const size_t bytes = align_up(static_cast<size_t>(buffer_bytes), static_cast<size_t>(align));
  const bool direct = mode == IoMode::kDirect || mode == IoMode::kAio || mode == IoMode::kUring;
  const auto engine = mode == IoMode::kAio     ? ParallelReader::kAio
                      : mode == IoMode::kUring ? ParallelReader::kUring
                                               : ParallelReader::kThreads;
  auto reader = std::make_unique<ParallelReader>(path_, direct, threads, static_cast<size_t>(align), engine);
  free_io_buffers();
  io_buffer_bytes_ = static_cast<int64_t>(bytes);
  reader_ = std::move(reader);
  io_mode_ = mode;
}

uint8_t* FileTier::take_io_buffer() {
  {
    std::lock_guard<std::mutex> g(buf_mu_);
    if (!free_bufs_.empty()) {
      uint8_t* b = free_bufs_.back();
      free_bufs_.pop_back();
      return b;
    }
  }
  void* b = std::aligned_alloc(reader_->align(), static_cast<size_t>(io_buffer_bytes_));
  if (!b) throw std::bad_alloc();
  std::lock_guard<std::mutex> g(buf_mu_);
  ++bufs_held_;
  return static_cast<uint8_t*>(b);
}

void FileTier::give_io_buffer(uint8_t* b) {
  std::lock_guard<std::mutex> g(buf_mu_);
  free_bufs_.push_back(b);
}

void FileTier::free_io_buffers() {
  std::lock_guard<std::mutex> g(buf_mu_);
  for (uint8_t* b : free_bufs_) std::free(b);
  free_bufs_.clear();
  bufs_held_ = 0;
}

int64_t FileTier::io_buffers() const {
  std::lock_guard<std::mutex> g(buf_mu_);
  return bufs_held_;
}

void FileTier::read_slots_parallel(const uint32_t* slots, int64_t n, void* rows, bool raw, float* state,
                                   bool background) {
  // Each slot's payload lies in whole `align` blocks [first, last]; blocks are
  // read once per call (sorted, deduplicated), runs of adjacent blocks
  // coalesced into one request of up to kMaxRun bytes, in rounds that fit the
  // buffer. The extra bytes (block minus row) are counted in device_bytes.
  struct Buffer {  // this call's own: reads of other callers may run beside it
    FileTier* t;
    uint8_t* p;
    ~Buffer() { t->give_io_buffer(p); }
  } buffer{this, take_io_buffer()};
  uint8_t* const buf = buffer.p;
  const uint64_t A = reader_->align();
  const uint64_t payload = static_cast<uint64_t>(row_bytes_ + (state ? state_floats_ : 0) * 4);
  constexpr uint64_t kMaxRun = 128 * 1024;
  struct Item {
    uint64_t first_block;  // byte offset of the first block
    int64_t i;
  };
  std::vector<Item> items;
  items.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    if (slots[i] != kNoRow) items.push_back({data_off(slots[i]) / A * A, i});
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.first_block < b.first_block; });
  const uint64_t cap = static_cast<uint64_t>(io_buffer_bytes_);
  std::vector<ReadRequest> reqs;
  std::vector<uint64_t> item_pos;  // byte position of each item's slot in the buffer
  size_t j = 0;
  while (j < items.size()) {
    reqs.clear();
    item_pos.clear();
    uint64_t used = 0, end = 0;  // end: file offset one past the blocks already requested this round
    size_t k = j;
    for (; k < items.size(); ++k) {
      const uint64_t off = data_off(slots[items[k].i]);
      const uint64_t b0 = items[k].first_block, b1 = align_up(off + payload, A);
      const uint64_t from = std::max(b0, end);  // blocks shared with the previous slot are read once
      const uint64_t add = b1 > from ? b1 - from : 0;
      if (add && used + add > cap) break;
      if (add) {
        ReadRequest* last = reqs.empty() ? nullptr : &reqs.back();
        if (last && last->off + last->len == from && last->len + add <= kMaxRun)
          last->len += static_cast<uint32_t>(add);
        else
          reqs.push_back({from, static_cast<uint32_t>(add), buf + used});
        used += add;
        end = b1;
      }
      // where `off` landed: the last request covering it
      const ReadRequest* r = &reqs.back();
      for (size_t q = reqs.size(); q-- > 0;)
        if (reqs[q].off <= off) {
          r = &reqs[q];
          break;
        }
      item_pos.push_back(static_cast<uint64_t>(r->dst - buf) + (off - r->off));
    }
    {
      ElapsedNs t(read_ns_);
      reader_->read(reqs.data(), static_cast<int64_t>(reqs.size()), background);
    }
    dev_reads_.fetch_add(static_cast<int64_t>(reqs.size()), std::memory_order_relaxed);
    dev_bytes_.fetch_add(static_cast<int64_t>(used), std::memory_order_relaxed);
    for (size_t q = j; q < k; ++q) {
      const int64_t i = items[q].i;
      emit_row(buf + item_pos[q - j], i, rows, raw, state);
    }
    j = k;
  }
}

int64_t FileTier::contains(const int64_t* keys, int64_t n, uint8_t* found) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  check_open();
  int64_t got = 0;
  for (int64_t i = 0; i < n; ++i) {
    found[i] = index_.find(keys[i]) != kNoRow;
    got += found[i];
  }
  return got;
}

void FileTier::mark_free(uint32_t slot) {
  free_bits_[slot >> 6] |= uint64_t(1) << (slot & 63);
  ++free_count_;
  free_lo_word_ = std::min<size_t>(free_lo_word_, slot >> 6);
}

void FileTier::take_free_locked(size_t m, std::vector<uint32_t>& out) {
  out.clear();
  if (reader_) {
    // Whole-block writes: slots of wholly free 64-slot words first (64 slots
    // are whole aligned blocks: 64 x a multiple of 64 bytes), so a write-back
    // fills blocks without reading them first; then the lowest free slots.
    for (size_t w = free_lo_word_; out.size() + 64 <= m && w < free_bits_.size(); ++w)
      if (free_bits_[w] == ~uint64_t{0} && (w + 1) * 64 <= static_cast<size_t>(slots_)) {
        for (uint32_t b = 0; b < 64; ++b) out.push_back(static_cast<uint32_t>(w * 64 + b));
        free_bits_[w] = 0;
      }
    free_count_ -= static_cast<int64_t>(out.size());
    if (out.size() == m) return;
    std::vector<uint32_t> rest;
    const size_t had = out.size();
    take_lowest_free_locked(m - had, rest);
    out.insert(out.end(), rest.begin(), rest.end());
    std::sort(out.begin(), out.end());
    return;
  }
  take_lowest_free_locked(m, out);
}

void FileTier::take_lowest_free_locked(size_t m, std::vector<uint32_t>& out) {
  out.clear();
  size_t w = free_lo_word_;
  for (; out.size() < m && w < free_bits_.size(); ++w) {
    uint64_t& bits = free_bits_[w];
    while (bits && out.size() < m) {
      out.push_back(static_cast<uint32_t>(w * 64 + __builtin_ctzll(bits)));
      bits &= bits - 1;
    }
    if (bits) break;  // m taken, this word still has free slots
  }
  free_lo_word_ = w;
  free_count_ -= static_cast<int64_t>(out.size());
}

void FileTier::write_entries_locked(const std::vector<uint32_t>& slots) {
  // Whole 4 KiB blocks of the directory (128 entries, from the mirror, which
  // equals the disk): a write never covers part of a block, so the kernel
  // never reads a block that is not cached before changing it (a synchronous
  // device read per entry once the file is larger than the page cache).
  constexpr uint32_t kBlock = 128;  // entries per 4 KiB
  for (size_t j = 0; j < slots.size();) {
    size_t k = j + 1;
    while (k < slots.size() && slots[k] / kBlock - slots[k - 1] / kBlock <= 1) ++k;
    const size_t a = static_cast<size_t>(slots[j] / kBlock) * kBlock;
    const size_t b = std::min(static_cast<size_t>(slots[k - 1] / kBlock + 1) * kBlock, static_cast<size_t>(slots_));
    pwrite_checked(&dir_[a], (b - a) * sizeof(Entry), dir_offset_ + a * sizeof(Entry));
    j = k;
  }
}

void FileTier::write_data_locked(const std::vector<uint32_t>& slots, const uint8_t* buf,
                                 std::vector<uint8_t>& run) {
  // Slots a few apart go out in one pwrite, the slots between rewritten with
  // the bytes they already hold (read back through the mapping): cheaper than
  // a syscall each, and a crash mid-write leaves those bytes as they were.
  const size_t sb = static_cast<size_t>(slot_bytes_), m = slots.size();
  if (reader_) return write_blocks_locked(slots, buf);
  const uint32_t max_gap = static_cast<uint32_t>(std::max<size_t>(1, 4096 / sb));
  for (size_t j = 0; j < m;) {
    size_t k = j + 1;
    while (k < m && slots[k] - slots[k - 1] <= max_gap) ++k;
    const uint32_t a = slots[j], b = slots[k - 1];
    const size_t len = (static_cast<size_t>(b - a) + 1) * sb;
    if (static_cast<size_t>(b - a) + 1 == k - j) {  // consecutive: straight from buf
      pwrite_checked(buf + j * sb, len, data_off(a));
    } else {
      run.resize(len);
      for (size_t q = j; q < k; ++q) {
        if (q > j)  // the slots between keep their bytes
          std::memcpy(run.data() + (static_cast<size_t>(slots[q - 1] - a) + 1) * sb,
                      map_ + data_off(slots[q - 1] + 1), static_cast<size_t>(slots[q] - slots[q - 1] - 1) * sb);
        std::memcpy(run.data() + static_cast<size_t>(slots[q] - a) * sb, buf + q * sb, sb);
      }
      pwrite_checked(run.data(), len, data_off(a));
    }
    j = k;
  }
}

void FileTier::write_blocks_locked(const std::vector<uint32_t>& slots, const uint8_t* buf) {
  // kPread / kDirect: whole aligned blocks only. Blocks the new slots cover in
  // full are not read; the others are read first (in parallel, O_DIRECT in
  // kDirect) and the slots patched in, so the bytes between keep what they
  // hold (a crash mid-write leaves them as they were). Then every block run is
  // written in parallel (O_DIRECT in kDirect: no page-cache copy, and the
  // kernel never reads a block synchronously to change part of it).
  const uint64_t A = reader_->align(), sb = static_cast<uint64_t>(slot_bytes_);
  constexpr uint64_t kMaxRun = 128 * 1024;
  struct Run {
    uint64_t off, len;
  };
  std::vector<Run> runs;  // ascending, disjoint block runs covering every slot
  for (uint32_t s : slots) {
    const uint64_t o = data_off(s), b0 = o / A * A, b1 = align_up(o + sb, A);
    const uint64_t end = runs.empty() ? 0 : runs.back().off + runs.back().len;
    // A block shared with the previous slot must join its run; an adjacent one may.
    if (!runs.empty() && (b0 < end || (b0 == end && runs.back().len < kMaxRun))) {
      runs.back().len = std::max(end, b1) - runs.back().off;
    } else {
      runs.push_back({b0, b1 - b0});
    }
  }
  uint64_t total = 0;
  for (const Run& r : runs) total += r.len;
  std::unique_ptr<uint8_t, decltype(&std::free)> mem(static_cast<uint8_t*>(std::aligned_alloc(A, total)), &std::free);
  if (!mem) throw std::bad_alloc();
  uint8_t* base = mem.get();
  std::vector<uint64_t> run_pos(runs.size());
  {
    uint64_t p = 0;
    for (size_t r = 0; r < runs.size(); ++r) {
      run_pos[r] = p;
      p += runs[r].len;
    }
  }
  std::vector<uint64_t> cover(total / A, 0);  // bytes of each block the new slots cover
  size_t r = 0;
  std::vector<uint64_t> pos(slots.size());
  for (size_t j = 0; j < slots.size(); ++j) {
    const uint64_t o = data_off(slots[j]);
    while (o >= runs[r].off + runs[r].len) ++r;
    pos[j] = run_pos[r] + (o - runs[r].off);
    for (uint64_t x = pos[j]; x < pos[j] + sb;) {
      const uint64_t blk = x / A, end = std::min((blk + 1) * A, pos[j] + sb);
      cover[blk] += end - x;
      x = end;
    }
  }
  std::vector<ReadRequest> reqs;
  for (size_t q = 0; q < runs.size(); ++q)
    for (uint64_t x = 0; x < runs[q].len; x += A) {
      const uint64_t blk = (run_pos[q] + x) / A;
      if (cover[blk] >= A) continue;
      if (!reqs.empty() && reqs.back().off + reqs.back().len == runs[q].off + x && reqs.back().len + A <= kMaxRun &&
          reqs.back().dst + reqs.back().len == base + run_pos[q] + x)
        reqs.back().len += static_cast<uint32_t>(A);
      else
        reqs.push_back({runs[q].off + x, static_cast<uint32_t>(A), base + run_pos[q] + x});
    }
  try {
    reader_->read(reqs.data(), static_cast<int64_t>(reqs.size()));
    dev_reads_.fetch_add(static_cast<int64_t>(reqs.size()), std::memory_order_relaxed);
    for (const auto& q : reqs) dev_bytes_.fetch_add(q.len, std::memory_order_relaxed);
    for (size_t j = 0; j < slots.size(); ++j) std::memcpy(base + pos[j], buf + j * sb, sb);
    reqs.clear();
    for (size_t q = 0; q < runs.size(); ++q)
      reqs.push_back({runs[q].off, static_cast<uint32_t>(runs[q].len), base + run_pos[q]});
    // The file need not end on a block boundary: the last block is cut at the
    // end (never grow the file) and, not being whole, goes out buffered.
    const ReadRequest* tail = nullptr;
    ReadRequest cut{};
    if (!reqs.empty() && reqs.back().off + reqs.back().len > map_bytes_) {
      cut = reqs.back();
      cut.len = static_cast<uint32_t>(map_bytes_ - cut.off);
      reqs.pop_back();
      tail = &cut;
    }
    reader_->write(reqs.data(), static_cast<int64_t>(reqs.size()));
    if (tail) pwrite_all(fd_, tail->dst, tail->len, tail->off, path_);
  } catch (...) {
    io_failed_ = true;
    throw;
  }
}

void FileTier::release_slots_locked(std::vector<uint32_t>& slots) {
  if (slots.empty()) return;
  std::sort(slots.begin(), slots.end());
  for (uint32_t s : slots) {
    dir_[s] = Entry{};
    unflushed_[s] = 0;
  }
  write_entries_locked(slots);
  for (uint32_t s : slots) mark_free(s);
}

void FileTier::set(const int64_t* keys, int64_t n, const float* rows, const float* state, const uint64_t* versions) {
  set_rows(keys, n, rows, false, state, versions);
}
void FileTier::set_raw(const int64_t* keys, int64_t n, const uint8_t* rows, const float* state,
                       const uint64_t* versions) {
  set_rows(keys, n, rows, true, state, versions);
}

void FileTier::set_rows(const int64_t* keys, int64_t n, const void* rows, bool raw, const float* state,
                        const uint64_t* versions) {
  std::unique_lock<std::shared_mutex> lk(mu_, std::defer_lock);
  {
    ElapsedNs w(lock_wait_ns_);
    lk.lock();
  }
  check_open();
  // fp32 rows into a compressed tier: every row must fit the type, checked
  // before anything is written.
  const bool encode = !raw && row_type_ != RowType::kF32;
  if (encode)
    for (int64_t i = 0; i < n; ++i)
      if (!row_representable(row_type_, static_cast<const float*>(rows) + i * dim_, dim_))
        throw std::invalid_argument("rows: row " + std::to_string(i) + " (key " + std::to_string(keys[i]) +
                                    ") is out of the range of row_type " + row_type_name(row_type_) +
                                    "; nothing was written");
  // Last occurrence of each key wins: write each distinct key once. Large
  // batches use a flat KeyIndex as the seen-set (a node-based set's
  // allocations were ~10% of a 123 K-row write); small ones a node-based set
  // (the KeyIndex maps at least one 2 MiB page).
  std::vector<int64_t> order;
  order.reserve(n);
  if (n >= 4096) {
    KeyIndex seen(static_cast<size_t>(n));
    for (int64_t i = n - 1; i >= 0; --i) {
      if (seen.find(keys[i]) != kNoRow) continue;
      seen.insert(keys[i], 0);
      order.push_back(i);
    }
  } else {
    std::unordered_set<int64_t> seen;
    for (int64_t i = n - 1; i >= 0; --i)
      if (seen.insert(keys[i]).second) order.push_back(i);
  }
  std::reverse(order.begin(), order.end());
  // Each key's current slot, probed once with the buckets prefetched ahead
  // (random index lines: the probes were most of set()'s own time). The slots
  // stay valid below: only this call changes the index, and each key once.
  std::vector<uint32_t> prev(order.size());
  size_t fresh = 0;
  {
    constexpr size_t kAhead = 8;
    for (size_t j = 0; j < std::min(order.size(), kAhead); ++j) index_.prefetch(keys[order[j]]);
    for (size_t j = 0; j < order.size(); ++j) {
      if (j + kAhead < order.size()) index_.prefetch(keys[order[j + kAhead]]);
      prev[j] = index_.find(keys[order[j]]);
      fresh += prev[j] == kNoRow;
    }
  }
  if (static_cast<int64_t>(index_.size() + fresh) > capacity_)
    throw TierFullError("tier '" + path_ + "' is full: " + std::to_string(index_.size()) + " rows + " +
                        std::to_string(fresh) + " new > capacity " + std::to_string(capacity_) +
                        "; nothing was written");
  index_.reserve(index_.size() + fresh);
  const size_t payload = static_cast<size_t>(row_bytes_ + state_floats_ * 4);
  const size_t sb = static_cast<size_t>(slot_bytes_);
  std::vector<uint8_t> buf, run;
  std::vector<Entry> ents;
  std::vector<uint32_t> slots, dead;
  for (size_t c0 = 0; c0 < order.size();) {
    if (free_count_ == 0) flush_locked();  // reclaims the slots of superseded flushed values
    const size_t m = std::min<size_t>({order.size() - c0, static_cast<size_t>(free_count_),
                                       static_cast<size_t>(kChunk)});
    if (m == 0) throw std::logic_error("FileTier: no free slot after flush");
    take_free_locked(m, slots);  // ascending
    buf.assign(m * sb, 0);
    ents.assign(m, Entry{});
    for (size_t j = 0; j < m; ++j) {
      const int64_t i = order[c0 + j];
      uint8_t* d = buf.data() + j * sb;
      if (encode)
        encode_row(row_type_, static_cast<const float*>(rows) + i * dim_, dim_, d);
      else
        std::memcpy(d, static_cast<const uint8_t*>(rows) + i * row_bytes_, static_cast<size_t>(row_bytes_));
      if (state && state_floats_)
        std::memcpy(d + row_bytes_, state + i * state_floats_, sizeof(float) * state_floats_);
      Entry& e = ents[j];
      e.key = keys[i];
      e.seq = ++seq_;
      e.version = versions ? versions[i] : 0;
      max_version_ = std::max(max_version_, e.version);
      e.data_crc = crc32c(d, payload);
      e.entry_crc = entry_crc(&e);
    }
    // 1) all data, 2) all entries: an entry only ever points at data that is
    //    already written.
    try {
      ElapsedNs t(write_ns_);
      write_data_locked(slots, buf.data(), run);
      for (size_t j = 0; j < m; ++j) dir_[slots[j]] = ents[j];
      write_entries_locked(slots);
    } catch (...) {
      // A failed write: this chunk's slots go back, their entries zeroed again
      // (best effort: the device already failed once), so no key moves to them.
      const Entry zero{};
      for (uint32_t sl : slots) dir_[sl] = zero;
      try {
        write_entries_locked(slots);
      } catch (...) {
      }
      for (uint32_t sl : slots) mark_free(sl);
      throw;
    }
    // 3) retire the previous copies.
    dead.clear();
    for (size_t j = 0; j < m; ++j) {
      const uint32_t sl = slots[j];
      const int64_t key = ents[j].key;
      unflushed_[sl] = 1;
      const uint32_t old = prev[c0 + j];
      if (old == kNoRow) {
        index_.insert(key, sl);
        continue;
      }
      index_.set_row(key, sl);
      if (unflushed_[old]) dead.push_back(old);  // never acknowledged: may go now
      else durable_old_[key] = old;              // kept until the new value is flushed
    }
    release_slots_locked(dead);
    st_.writes += static_cast<int64_t>(m);
    st_.bytes_written += static_cast<int64_t>(m * payload);
    c0 += m;
  }
}

int64_t FileTier::erase(const int64_t* keys, int64_t n) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  check_open();
  std::vector<uint32_t> older, current;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t s = index_.find(keys[i]);
    if (s == kNoRow) continue;
    auto it = durable_old_.find(keys[i]);
    if (it != durable_old_.end()) {
      older.push_back(it->second);
      durable_old_.erase(it);
    }
    current.push_back(s);
    index_.erase(keys[i]);
  }
  // The older copies first, so a crash never resurrects one alone.
  release_slots_locked(older);
  release_slots_locked(current);
  const int64_t erased = static_cast<int64_t>(current.size());
  st_.erases += erased;
  return erased;
}

void FileTier::flush_locked() {
  sync_checked();
  std::vector<uint32_t> old;
  old.reserve(durable_old_.size());
  for (const auto& kv : durable_old_) old.push_back(kv.second);
  release_slots_locked(old);
  durable_old_.clear();
  std::fill(unflushed_.begin(), unflushed_.end(), 0);
  ++st_.flushes;
}

void FileTier::flush() {
  std::unique_lock<std::shared_mutex> lk(mu_);
  check_open();
  flush_locked();
}

void FileTier::close() {
  std::unique_lock<std::shared_mutex> life(io_life_mu_);  // no get() is reading
  std::unique_lock<std::shared_mutex> lk(mu_);
  if (fd_ < 0) return;
  flush_locked();
  // The clean record (mark, directory CRC, rows) only when the directory
  // mirror is known to equal the disk; else the next open re-verifies entry
  // by entry, as after a crash.
  if (!io_failed_) set_clean(true);
  release_fd();
}

void FileTier::scan(uint64_t since, std::vector<int64_t>& keys) const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  check_open();
  index_.for_each([&](int64_t k, uint32_t s) {
    if (dir_[s].version > since) keys.push_back(k);
  });
}

uint64_t FileTier::max_version() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  return max_version_;
}

TierStats FileTier::stats() const {
  std::shared_lock<std::shared_mutex> lk(mu_);
  TierStats s = st_;
  s.reads = reads_.load();
  s.bytes_read = bytes_read_.load();
  return s;
}

}  // namespace embedlookup
