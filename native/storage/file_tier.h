// FileTier: a StorageTier in one file of fixed-size row slots (SSD file or a
// file on a DAX persistent-memory file system). Layout: docs/format.md.
//
//   [4 KiB header][directory: capacity+slack entries of 32 B][slot data]
//
// A directory entry (key, seq, version, data CRC, entry CRC) is the
// persistent key index; at open it is read back into an in-memory KeyIndex.
//
// Crash consistency (a process killed at any instant): writes are out of
// place. A row goes to a free slot (data first, then its directory entry
// with a new seq); the slot holding the key's last flushed value stays intact
// until the next flush(), after which it is freed. Reopening keeps, per key,
// the valid entry (both CRCs match) with the highest seq, so every row holds
// a whole value written at or after its last flush(), never a torn mix.
// Every open verifies each live slot's data CRC: after a crash a torn slot is
// dropped (its key keeps the previous copy); in a cleanly closed file a bad
// slot raises TierFormatError (damage is reported, never served).
//
// I/O: reads copy from a read-only shared mapping (no syscall per row: on a
// page-cache-resident file a random slot read is ~18x cheaper than pread,
// bench/bench_storage.py measures it); writes use pwrite so that a full or
// failing disk is an error code (an exception), never SIGBUS. The file is
// allocated in full at creation (posix_fallocate), so ENOSPC shows up there.
//
// One user at a time: the open file is locked (flock LOCK_EX | LOCK_NB); a
// second open, in this or another process, raises TierLockedError. An open
// verifies everything (header layout with overflow-checked sizes, the clean
// record and the directory checksum of a cleanly closed file, every entry and
// every live slot) before it writes a byte, so a failed open leaves the file
// as it was. A create builds the file under `path + ".creating"` and links it
// into place only when it is complete: a failed create leaves no file.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../structures/key_index.h"
#include "../core/tier.h"
#include "direct_io.h"

namespace embedlookup {

// A tier file that cannot be opened: foreign, corrupt, other dim/dtype.
class TierFormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The tier file is already open (locked) by another FileTier, in this process
// or another one.
class TierLockedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class FileTier : public StorageTier {
 public:
  // Opens `path`, creating it when absent. capacity (rows) is required to
  // create; when reopening, 0 adopts the file's and any other value must match.
  // dim / state_floats / row_type must match an existing file's (a file of
  // another row type raises TierFormatError naming both).
  // Ranges (std::invalid_argument naming the argument otherwise):
  // dim 1..kMaxDim (even for int4), state_floats 0..kMaxStateFloats,
  // capacity 0..kMaxCapacity.
  static constexpr int64_t kMaxDim = int64_t{1} << 20;          // TableOptions::kMaxDim
  static constexpr int64_t kMaxStateFloats = 2 * kMaxDim;       // Adam: 2 * dim
  static int64_t max_capacity();  // the most rows whose slots (capacity + slack) fit a 32-bit slot id
  FileTier(const std::string& path, int64_t dim, int64_t state_floats, int64_t capacity,
           RowType row_type = RowType::kF32);
  ~FileTier() override;
  FileTier(const FileTier&) = delete;
  FileTier& operator=(const FileTier&) = delete;

  int64_t dim() const override { return dim_; }
  int64_t state_floats() const override { return state_floats_; }
  int64_t capacity() const override { return capacity_; }
  int64_t size() const override;
  int64_t get(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions,
              uint8_t* found) override;
  int64_t get_background(const int64_t* keys, int64_t n, float* rows, float* state, uint64_t* versions,
                         uint8_t* found) override;
  void set(const int64_t* keys, int64_t n, const float* rows, const float* state,
           const uint64_t* versions) override;
  int64_t contains(const int64_t* keys, int64_t n, uint8_t* found) const override;
  int64_t erase(const int64_t* keys, int64_t n) override;
  void flush() override;
  void scan(uint64_t since, std::vector<int64_t>& keys) const override;
  TierStats stats() const override;
  uint64_t max_version() const override;
  // Rows are stored in row_type (a slot: the row's row_bytes, then the state
  // floats); get/set decode / encode fp32 rows, get_raw/set_raw move the bytes.
  RowType row_type() const override { return row_type_; }
  int64_t get_raw(const int64_t* keys, int64_t n, uint8_t* rows, float* state, uint64_t* versions,
                  uint8_t* found) override;
  void set_raw(const int64_t* keys, int64_t n, const uint8_t* rows, const float* state,
               const uint64_t* versions) override;

  // How get() reads slots (docs/storage.md, "Reading from the device"):
  //  kMmap    copies from the shared mapping (the page cache; the default);
  //  kPread   positioned reads of the slots' enclosing `align`-byte blocks by a
  //           pool of `threads` threads (queue depth = threads), buffered;
  //  kDirect  the same through an O_DIRECT descriptor: every read reaches the
  //           device, the page cache is bypassed (std::invalid_argument where
  //           the file system refuses O_DIRECT).
  // buffer_bytes bounds the aligned I/O buffer (a batch needing more is read
  // in rounds). Writes are unchanged (pwrite); the kernel writes dirty cached
  // pages back before an O_DIRECT read of them, so reads see every write.
  //  kAio     kDirect's reads through one Linux AIO context from the calling
  //           thread (`threads` requests in flight, no thread per request:
  //           less CPU per read); writes as kDirect.
  //  kUring   kDirect's reads through an io_uring ring from the calling thread
  //           (`threads` requests in flight; the least CPU per read);
  //           writes as kDirect. std::invalid_argument where the kernel
  //           refuses io_uring.
  enum class IoMode { kMmap = 0, kPread = 1, kDirect = 2, kAio = 3, kUring = 4 };
  void set_io(IoMode mode, int threads, int64_t buffer_bytes, int64_t align);
  IoMode io_mode() const { return io_mode_; }
  int io_threads() const { return reader_ ? reader_->queue_depth() : 0; }
  int64_t io_align() const { return reader_ ? static_cast<int64_t>(reader_->align()) : 0; }
  int64_t io_buffer_bytes() const { return io_buffer_bytes_; }  // one I/O buffer's bound (0 for kMmap)
  // I/O buffers allocated: one per get() reading at the same time (a batch's
  // own reads and a prefetch's), kept for reuse until set_io or close.
  int64_t io_buffers() const;
  // Block reads issued by kPread / kDirect and their bytes (slots' enclosing
  // aligned blocks: more than the row bytes served).
  int64_t device_reads() const { return dev_reads_.load(); }
  int64_t device_bytes() const { return dev_bytes_.load(); }
  // Time (ns, summed over callers) in block reads of get(), in writing set()'s
  // rows and entries, and waiting for the tier's locks in get() and set().
  int64_t read_ns() const { return read_ns_.load(); }
  int64_t write_ns() const { return write_ns_.load(); }
  int64_t lock_wait_ns() const { return lock_wait_ns_.load(); }
  int64_t stale_reads() const { return stale_reads_.load(); }

  // Flushes, marks the file cleanly closed and releases it (idempotent).
  void close();
  const std::string& path() const { return path_; }
  bool recovered() const { return recovered_; }  // opened after an unclean shutdown
  int64_t slot_bytes() const { return slot_bytes_; }

 private:
  struct Entry {  // on disk, 32 bytes
    int64_t key;
    uint64_t seq;      // 0: free
    uint64_t version;  // of the row's last change (table version)
    uint32_t data_crc;
    uint32_t entry_crc;  // CRC-32C of the 28 bytes before it
  };
  static_assert(sizeof(Entry) == 32, "directory entry is 32 bytes");

  // Builds the file under path_ + ".creating" and links it to path_; false when
  // path_ appeared meanwhile (nothing left behind: the caller opens it).
  bool create(int64_t capacity);
  void open_existing(int64_t capacity);
  // Reads and checks the directory (no writes); returns the slots to free.
  std::vector<uint32_t> load_directory(bool was_clean, uint32_t dir_crc, int64_t rows);
  void lock_file(int fd, const std::string& name);
  void release_fd();  // unmaps, unlocks, closes (no writes)
  void map_file();
  void set_clean(bool clean);
  void pwrite_checked(const void* p, size_t n, size_t off);
  // Zeroes the slots' entries (coalesced writes) and returns them to the free
  // list; sorts `slots`.
  void release_slots_locked(std::vector<uint32_t>& slots);
  // Writes the directory entries of ascending `slots` from dir_, runs with
  // small gaps coalesced into one pwrite (a gap entry is rewritten with the
  // bytes it already has).
  void write_entries_locked(const std::vector<uint32_t>& slots);
  // Writes buf's rows (one slot each, in `slots` order, ascending) to their
  // slots, runs with small gaps coalesced into one pwrite.
  void write_data_locked(const std::vector<uint32_t>& slots, const uint8_t* buf, std::vector<uint8_t>& run);
  // write_data_locked for kPread / kDirect: whole aligned blocks through reader_.
  void write_blocks_locked(const std::vector<uint32_t>& slots, const uint8_t* buf);
  void mark_free(uint32_t slot);
  // m free slots, ascending: the lowest (kMmap), or wholly free blocks first (kPread / kDirect)
  void take_free_locked(size_t m, std::vector<uint32_t>& out);
  void take_lowest_free_locked(size_t m, std::vector<uint32_t>& out);
  void flush_locked();
  void sync_checked();  // fdatasync; TierIOError (and io_failed_) on failure
  void check_open() const;
  // get / get_raw / get_background (raw: rows are row_bytes_ bytes each, else fp32 rows).
  int64_t get_impl(const int64_t* keys, int64_t n, void* rows, bool raw, float* state, uint64_t* versions,
                   uint8_t* found, bool background);
  // get() through reader_: slots resolved by the caller (kNoRow = absent).
  // Needs no lock but io_life_mu_ (shared): the caller checks afterwards that
  // the slots still hold what it resolved. raw: rows are row_bytes_ bytes
  // each, else fp32 rows.
  void read_slots_parallel(const uint32_t* slots, int64_t n, void* rows, bool raw, float* state, bool background);
  uint8_t* take_io_buffer();
  void give_io_buffer(uint8_t* b);
  void free_io_buffers();
  void set_rows(const int64_t* keys, int64_t n, const void* rows, bool raw, const float* state,
                const uint64_t* versions);
  // Slot bytes -> the caller's row i (decoded unless raw) and state.
  void emit_row(const uint8_t* src, int64_t i, void* rows, bool raw, float* state) const;
  size_t data_off(uint32_t slot) const { return data_offset_ + static_cast<size_t>(slot) * slot_bytes_; }

  std::string path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  size_t map_bytes_ = 0;
  int64_t dim_, state_floats_, capacity_ = 0, slots_ = 0, slot_bytes_ = 0;
  RowType row_type_;
  int64_t row_bytes_;  // row_bytes(row_type_, dim_): the row part of a slot
  size_t dir_offset_ = 0, data_offset_ = 0;
  bool recovered_ = false;
  bool io_failed_ = false;  // a write or sync failed: close() leaves the file dirty (re-verified at open)

  mutable std::shared_mutex mu_;
  KeyIndex index_;                     // key -> slot of its newest value
  std::vector<Entry> dir_;             // in-memory mirror of the directory
  std::vector<uint8_t> unflushed_;     // slot written since the last flush
  std::unordered_map<int64_t, uint32_t> durable_old_;  // key -> slot of its last flushed value
  // Free slots as a bitmap: allocation takes the lowest, so a batch's slots
  // lie close together and go out in few writes.
  std::vector<uint64_t> free_bits_;
  int64_t free_count_ = 0;
  size_t free_lo_word_ = 0;  // no free slot below this word
  uint64_t seq_ = 0;
  uint64_t max_version_ = 0;
  mutable TierStats st_;
  mutable std::atomic<int64_t> reads_{0}, bytes_read_{0};
  // kPread / kDirect: the reader, its aligned buffers, and the device
  // counters. get() reads the device without mu_ (a write-back never waits
  // for a read), holding io_life_mu_ shared so that reader_ and the buffers
  // stay; set_io and close take it exclusively, before mu_.
  IoMode io_mode_ = IoMode::kMmap;
  std::unique_ptr<ParallelReader> reader_;
  mutable std::shared_mutex io_life_mu_;
  mutable std::mutex buf_mu_;
  std::vector<uint8_t*> free_bufs_;  // guarded by buf_mu_
  int64_t bufs_held_ = 0;            // guarded by buf_mu_
  int64_t io_buffer_bytes_ = 0;
  std::atomic<int64_t> dev_reads_{0}, dev_bytes_{0};
  std::atomic<int64_t> read_ns_{0}, write_ns_{0}, lock_wait_ns_{0};
  std::atomic<int64_t> stale_reads_{0};  // slots rewritten while get() read them (read again)
};

}  // namespace embedlookup
