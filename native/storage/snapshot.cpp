#include "snapshot.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>

#include "crc32c.h"
#include "le_bytes.h"

namespace embedlookup {

namespace {

// Header field offsets (docs/format.md). All integers little-endian as
// written by this (x86-64 / little-endian) build; the byte-order mark makes a
// reader on another byte order refuse the file instead of misreading it.
constexpr char kMagic[8] = {'E', 'L', 'S', 'N', 'A', 'P', '\r', '\n'};
constexpr char kEndMagic[8] = {'E', 'L', 'S', 'N', 'E', 'N', 'D', '\n'};
constexpr uint32_t kBom = 0x01020304u;
constexpr uint32_t kDtypeF32 = 1;  // dtype = row type + 1: 2 fp16, 3 bf16, 4 int8, 5 int4 (format version 2)
constexpr uint32_t kKindFull = 1, kKindDelta = 2;
constexpr int kSections = 6;
const char* const kSectionNames[kSections] = {"keys", "versions", "rows", "optimizer state", "tombstone keys",
                                              "tombstone versions"};
constexpr size_t kSectionTable = 128, kHeaderCrc = 316;

size_t align64(size_t x) { return (x + 63) & ~size_t(63); }

using fmt::put;

struct Section {
  const void* data;
  size_t bytes;
};

void sections_of(const RowBatch& b, Section s[kSections]) {
  s[0] = {b.keys.data(), b.keys.size() * 8};
  s[1] = {b.versions.data(), b.has_versions ? b.versions.size() * 8 : 0};
  s[2] = {b.rows.data(), b.rows.size() * 4};  // row_floats() per row
  s[3] = {b.state.data(), b.state.size() * 4};
  s[4] = {b.dead_keys.data(), b.dead_keys.size() * 8};
  s[5] = {b.dead_versions.data(), b.dead_versions.size() * 8};
}

// Fills the header (with section CRCs) and returns the total size.
size_t make_header(const RowBatch& b, uint8_t* h, const Section s[kSections], bool with_crcs) {
  std::memset(h, 0, kSnapshotHeaderBytes);
  std::memcpy(h, kMagic, 8);
  put<uint32_t>(h, 8, b.row_type == RowType::kF32 ? 1u : kSnapshotFormatVersion);
  put<uint32_t>(h, 12, kBom);
  put<uint32_t>(h, 16, b.full ? kKindFull : kKindDelta);
  put<uint32_t>(h, 20, kDtypeF32 + static_cast<uint32_t>(b.row_type));
  put<int64_t>(h, 24, b.dim);
  put<uint64_t>(h, 32, b.lineage);
  put<uint64_t>(h, 40, b.from_version);
  put<uint64_t>(h, 48, b.to_version);
  put<int64_t>(h, 56, static_cast<int64_t>(b.keys.size()));
  put<int64_t>(h, 64, static_cast<int64_t>(b.dead_keys.size()));
  put<int32_t>(h, 72, static_cast<int32_t>(b.state_kind));
  put<float>(h, 76, b.state_init);
  put<int64_t>(h, 80, b.state_floats);
  put<int64_t>(h, 88, b.step);
  put<int32_t>(h, 96, static_cast<int32_t>(b.init.kind));
  put<float>(h, 100, b.init.a);
  put<float>(h, 104, b.init.b);
  put<uint32_t>(h, 108, b.has_versions ? 1u : 0u);
  put<uint64_t>(h, 112, b.init.seed);
  put<int64_t>(h, 120, b.capacity);
  size_t off = kSnapshotHeaderBytes;
  for (int i = 0; i < kSections; ++i) {
    const size_t e = kSectionTable + 24 * i;
    put<uint64_t>(h, e, off);
    put<uint64_t>(h, e + 8, s[i].bytes);
    put<uint32_t>(h, e + 16, with_crcs ? crc32c(s[i].data, s[i].bytes) : 0u);
    off = align64(off + s[i].bytes);
  }
  put<uint32_t>(h, kHeaderCrc, crc32c(h, kHeaderCrc));
  return off + 8;
}

[[noreturn]] void fail(const std::string& what) { throw SnapshotFormatError(what); }

// Reads `len` bytes at `off` of the source; the source checks bounds.
using ReadAt = std::function<void(size_t off, void* dst, size_t len)>;

RowBatch parse_header(const uint8_t* h, size_t total) {
  if (total < kSnapshotHeaderBytes)
    fail("truncated: " + std::to_string(total) + " bytes, less than the " + std::to_string(kSnapshotHeaderBytes) +
         "-byte header of an embedlookup snapshot");
  if (std::memcmp(h, kMagic, 8) != 0) fail("not an embedlookup checkpoint or delta (bad magic)");
  if (fmt::load_as<uint32_t>(h, 12) != kBom) fail("written on a machine of the other byte order (byte-order mark mismatch)");
  const uint32_t fv = fmt::load_as<uint32_t>(h, 8);
  if (fv == 0 || fv > kSnapshotFormatVersion)
    fail("format version " + std::to_string(fv) + " is not readable by this version (reads 1.." +
         std::to_string(kSnapshotFormatVersion) + ")");
  if (fmt::load_as<uint32_t>(h, kHeaderCrc) != crc32c(h, kHeaderCrc)) fail("corrupt: header checksum mismatch");
  const uint32_t dt = fmt::load_as<uint32_t>(h, 20);
  if (dt < kDtypeF32 || dt >= kDtypeF32 + kRowTypes || (fv < 2 && dt != kDtypeF32))
    fail("dtype code " + std::to_string(dt) + " is not supported (1 = float32; format version 2: 2 fp16, 3 bf16, "
         "4 int8, 5 int4)");
  RowBatch b;
  b.row_type = static_cast<RowType>(dt - kDtypeF32);
  const uint32_t kind = fmt::load_as<uint32_t>(h, 16);
  if (kind != kKindFull && kind != kKindDelta) fail("corrupt: unknown snapshot kind " + std::to_string(kind));
  b.full = kind == kKindFull;
  b.dim = fmt::load_as<int64_t>(h, 24);
  b.lineage = fmt::load_as<uint64_t>(h, 32);
  b.from_version = fmt::load_as<uint64_t>(h, 40);
  b.to_version = fmt::load_as<uint64_t>(h, 48);
  const int64_t n = fmt::load_as<int64_t>(h, 56), nd = fmt::load_as<int64_t>(h, 64);
  const int32_t sk = fmt::load_as<int32_t>(h, 72);
  b.state_init = fmt::load_as<float>(h, 76);
  b.state_floats = fmt::load_as<int64_t>(h, 80);
  b.step = fmt::load_as<int64_t>(h, 88);
  b.init.kind = static_cast<InitKind>(fmt::load_as<int32_t>(h, 96));
  b.init.a = fmt::load_as<float>(h, 100);
  b.init.b = fmt::load_as<float>(h, 104);
  b.has_versions = fmt::load_as<uint32_t>(h, 108) & 1u;
  b.init.seed = fmt::load_as<uint64_t>(h, 112);
  b.capacity = fmt::load_as<int64_t>(h, 120);
  if (b.dim <= 0 || b.dim > (int64_t(1) << 24)) fail("corrupt: dim " + std::to_string(b.dim));
  if (b.row_type == RowType::kI4 && b.dim % 2) fail("corrupt: int4 rows of odd dim " + std::to_string(b.dim));
  if (sk < 0 || sk > 4) fail("corrupt: optimizer kind " + std::to_string(sk));
  b.state_kind = static_cast<OptimKind>(sk);
  if (b.state_floats != state_floats(b.state_kind, b.dim)) fail("corrupt: optimizer state width");
  if (n < 0 || nd < 0 || b.from_version > b.to_version || b.step < 0 || b.capacity < 0 ||
      static_cast<int32_t>(b.init.kind) < 0 || static_cast<int32_t>(b.init.kind) > 3)
    fail("corrupt: inconsistent header fields");
  b.n_rows = static_cast<uint64_t>(n);
  b.n_dead = static_cast<uint64_t>(nd);
  const uint64_t un = static_cast<uint64_t>(n), und = static_cast<uint64_t>(nd);
  const uint64_t expect[kSections] = {un * 8, b.has_versions ? un * 8 : 0, un * b.row_floats() * 4, un * b.state_floats * 4,
                                      und * 8, und * 8};
  size_t off = kSnapshotHeaderBytes;
  for (int i = 0; i < kSections; ++i) {
    const size_t e = kSectionTable + 24 * i;
    if (un > (uint64_t(1) << 40) || und > (uint64_t(1) << 40) || fmt::load_as<uint64_t>(h, e) != off ||
        fmt::load_as<uint64_t>(h, e + 8) != expect[i])
      fail(std::string("corrupt: section '") + kSectionNames[i] + "' has the wrong offset or size");
    off = align64(off + expect[i]);
  }
  if (total != off + 8)
    fail((total < off + 8 ? "truncated: " : "corrupt: ") + std::to_string(total) + " bytes, the header describes " +
         std::to_string(off + 8));
  return b;
}

RowBatchView decode_in_place(const uint8_t* data, size_t total) {
  RowBatchView v;
  static_cast<RowBatchMeta&>(v) = parse_header(data, total);
  const uint8_t* h = data;
  const size_t n = fmt::load_as<uint64_t>(h, 56), nd = fmt::load_as<uint64_t>(h, 64);
  const uint8_t* at[kSections];
  for (int i = 0; i < kSections; ++i) {
    const size_t e = kSectionTable + 24 * i;
    at[i] = data + fmt::load_as<uint64_t>(h, e);
    if (crc32c(at[i], fmt::load_as<uint64_t>(h, e + 8)) != fmt::load_as<uint32_t>(h, e + 16))
      fail(std::string("corrupt: checksum mismatch in section '") + kSectionNames[i] + "'");
  }
  if (std::memcmp(data + total - 8, kEndMagic, 8) != 0) fail("corrupt: end marker missing");
  v.keys = {reinterpret_cast<const int64_t*>(at[0]), n};
  v.versions = {reinterpret_cast<const uint64_t*>(at[1]), v.has_versions ? n : 0};
  v.rows = {reinterpret_cast<const float*>(at[2]), n * v.row_floats()};
  v.state = {reinterpret_cast<const float*>(at[3]), n * v.state_floats};
  v.dead_keys = {reinterpret_cast<const int64_t*>(at[4]), nd};
  v.dead_versions = {reinterpret_cast<const uint64_t*>(at[5]), nd};
  for (size_t i = 1; i < n; ++i)
    if (v.keys[i] <= v.keys[i - 1]) fail("corrupt: keys are not strictly ascending");
  return v;
}

struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

[[noreturn]] void sys_fail(const std::string& what, const std::string& path) {
  throw std::runtime_error(what + " '" + path + "': " + std::strerror(errno));
}

void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd, c, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      sys_fail("cannot write", path);
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}

ReadAt file_reader(int fd, size_t total, const std::string& path) {
  return [fd, total, path](size_t off, void* dst, size_t len) {
    if (off + len > total) fail("truncated");
    char* c = static_cast<char*>(dst);
    while (len) {
      const ssize_t r = ::pread(fd, c, std::min<size_t>(len, size_t(1) << 30), static_cast<off_t>(off));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) sys_fail("cannot read", path);
      if (r == 0) fail("truncated: file ended early");
      c += r;
      off += static_cast<size_t>(r);
      len -= static_cast<size_t>(r);
    }
  };
}

int open_for_read(const std::string& path, size_t& total, uint8_t* h) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) sys_fail("cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    sys_fail("cannot stat", path);
  }
  total = static_cast<size_t>(st.st_size);
  std::memset(h, 0, kSnapshotHeaderBytes);
  try {
    if (total >= kSnapshotHeaderBytes) file_reader(fd, total, path)(0, h, kSnapshotHeaderBytes);
  } catch (...) {
    ::close(fd);
    throw;
  }
  return fd;
}

}  // namespace

size_t snapshot_bytes(const RowBatch& b) {
  Section s[kSections];
  sections_of(b, s);
  uint8_t h[kSnapshotHeaderBytes];
  return make_header(b, h, s, false);
}

void encode_snapshot(const RowBatch& b, std::vector<uint8_t>& out) {
  Section s[kSections];
  sections_of(b, s);
  uint8_t h[kSnapshotHeaderBytes];
  const size_t total = make_header(b, h, s, true);
  out.assign(total, 0);
  std::memcpy(out.data(), h, kSnapshotHeaderBytes);
  for (int i = 0; i < kSections; ++i)
    if (s[i].bytes) std::memcpy(out.data() + fmt::load_as<uint64_t>(h, kSectionTable + 24 * i), s[i].data, s[i].bytes);
  std::memcpy(out.data() + total - 8, kEndMagic, 8);
}

void write_snapshot_file(const RowBatch& b, const std::string& path) {
  Section s[kSections];
  sections_of(b, s);
  uint8_t h[kSnapshotHeaderBytes];
  const size_t total = make_header(b, h, s, true);
  const std::string tmp = path + ".tmp";
  Fd f(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (f.fd < 0) sys_fail("cannot create", tmp);
  static const uint8_t zeros[64] = {};
  write_all(f.fd, h, kSnapshotHeaderBytes, tmp);
  size_t at = kSnapshotHeaderBytes;
  for (int i = 0; i < kSections; ++i) {
    write_all(f.fd, s[i].data, s[i].bytes, tmp);
    at += s[i].bytes;
    write_all(f.fd, zeros, align64(at) - at, tmp);
    at = align64(at);
  }
  write_all(f.fd, kEndMagic, 8, tmp);
  if (at + 8 != total) throw std::logic_error("snapshot writer: size mismatch");
  if (::fsync(f.fd) != 0) sys_fail("cannot fsync", tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) sys_fail("cannot rename to", path);
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.fd >= 0) ::fsync(d.fd);  // best effort: makes the rename durable
}

RowBatch decode_snapshot_header(const uint8_t* data, size_t n) {
  uint8_t h[kSnapshotHeaderBytes] = {};
  std::memcpy(h, data, std::min(n, kSnapshotHeaderBytes));
  return parse_header(h, n);
}

RowBatchView decode_snapshot(const uint8_t* data, size_t n) {
  if (n < kSnapshotHeaderBytes) parse_header(data, n);  // throws "truncated" without reading past n
  return decode_in_place(data, n);
}

RowBatch read_snapshot_file_header(const std::string& path) {
  size_t total;
  uint8_t h[kSnapshotHeaderBytes];
  Fd f(open_for_read(path, total, h));
  return parse_header(h, total);
}

MappedSnapshot::MappedSnapshot(const std::string& path) {
  size_t total;
  uint8_t h[kSnapshotHeaderBytes];
  Fd f(open_for_read(path, total, h));
  parse_header(h, total);  // cheap checks before mapping
  void* p = ::mmap(nullptr, total, PROT_READ, MAP_PRIVATE, f.fd, 0);
  if (p == MAP_FAILED) sys_fail("cannot map", path);
  ::madvise(p, total, MADV_SEQUENTIAL);
  map_ = p;
  bytes_ = total;
  try {
    view_ = decode_in_place(static_cast<const uint8_t*>(p), total);
  } catch (...) {
    ::munmap(map_, bytes_);
    throw;
  }
}

MappedSnapshot::~MappedSnapshot() {
  if (map_) ::munmap(map_, bytes_);
}

}  // namespace embedlookup
