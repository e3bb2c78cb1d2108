// On-disk / on-wire format of checkpoints and deltas (docs/format.md).
//
// One format for both: a fixed 320-byte header (magic, format version,
// byte-order mark, dtype, dim, lineage, versions, configuration, section
// table, header CRC-32C), then six 64-byte-aligned sections (keys, versions,
// rows, optimizer state, tombstone keys, tombstone versions), each with its
// own CRC-32C, then an 8-byte end marker. Decoding validates everything
// (sizes, bounds, checksums) before returning, so a caller never sees a
// partially valid batch.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/row_batch.h"

namespace embedlookup {

// A snapshot that cannot be read: truncated, corrupt, foreign or too new.
class SnapshotFormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Version 2 adds compressed rows (dtype 2..5); fp32 snapshots are still
// written as version 1, so older readers keep reading them.
constexpr uint32_t kSnapshotFormatVersion = 2;
constexpr size_t kSnapshotHeaderBytes = 320;

// Bytes encode() produces for this batch.
size_t snapshot_bytes(const RowBatch& b);
void encode_snapshot(const RowBatch& b, std::vector<uint8_t>& out);
// Writes to `path` + ".tmp", fsyncs, renames over `path`, fsyncs the folder:
// a crash leaves the old file or the new one, never a mix.
void write_snapshot_file(const RowBatch& b, const std::string& path);
// Header only (payload vectors left empty); checks header integrity.
RowBatch decode_snapshot_header(const uint8_t* data, size_t n);
RowBatch read_snapshot_file_header(const std::string& path);
// Validates the whole snapshot in place (checksums included) and returns a
// view into `data`, which must outlive it. No copy.
RowBatchView decode_snapshot(const uint8_t* data, size_t n);

// A snapshot file mapped read-only and validated; view() borrows the mapping.
class MappedSnapshot {
 public:
  explicit MappedSnapshot(const std::string& path);
  ~MappedSnapshot();
  MappedSnapshot(const MappedSnapshot&) = delete;
  MappedSnapshot& operator=(const MappedSnapshot&) = delete;
  const RowBatchView& view() const { return view_; }

 private:
  void* map_ = nullptr;
  size_t bytes_ = 0;
  RowBatchView view_;
};

}  // namespace embedlookup
