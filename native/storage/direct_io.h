// Reads that reach the device on purpose: many positioned reads in flight at
// once, from a pool of threads each issuing a blocking pread (queue depth =
// the pool's threads), optionally through an O_DIRECT descriptor so the page
// cache is bypassed (buffers, offsets and lengths aligned to `align`).
//
// Three read engines (docs/storage.md, "Reading from the device"): the pool
// (a blocking pread per request and thread), Linux AIO and io_uring (both
// from the calling thread, through raw system calls: no liburing/libaio).
// io_uring costs the least CPU per read: a batch's requests go to the kernel
// in a few system calls, under one block plug (one device notification per
// submission instead of one per request), with no thread wake-ups.
//
// The I/O-fault hook (io_faults) lets tests make the Nth read, write or sync
// fail with a chosen errno at this layer; it is compiled in, off unless a test
// arms it (embedlookup._core._inject_io_fault), and costs one relaxed atomic
// load per system call.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <cstdint>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace embedlookup {

// A read, write or sync of a tier file failed (the device, a full disk):
// carries the errno. The bindings raise it as embedlookup.storage.TierIOError
// (an OSError).
class TierIOError : public std::runtime_error {
 public:
  TierIOError(const std::string& what, int code) : std::runtime_error(what), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

namespace io_faults {
enum Op { kRead = 0, kWrite = 1, kSync = 2 };
// Arms the hook: the nth (1-based) next call of kind `op` fails with errno
// `err` (and only that one). nth = 0 disarms it.
void inject(Op op, int64_t nth, int err);
// Called before each system call of kind `op`: the errno to fail with, or 0.
int take(Op op);
}  // namespace io_faults

// A fixed pool of threads running index-parallel jobs; the caller takes part
// in its own job. Jobs of several callers may run at once: the threads take
// the next index of a foreground job before any of a background one, so a
// background job (a prefetch's reads) yields the pool to a foreground one (a
// batch's own reads, a write-back) between two of its requests.
class IoPool {
 public:
  explicit IoPool(int threads);  // threads >= 1 (threads - 1 workers + the caller)
  ~IoPool();
  IoPool(const IoPool&) = delete;
  IoPool& operator=(const IoPool&) = delete;
  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  // fn(i) for every i in [0, n), spread over the threads; returns when all are
  // done. fn must not throw.
  void run(int64_t n, const std::function<void(int64_t)>& fn, bool background = false);

 private:
  struct Job {
    const std::function<void(int64_t)>* fn;
    int64_t n, next, done;
  };
  Job* pick_locked();  // the next job with an index left, foreground first (mu_ held)
  void work();
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Job*> fg_, bg_;
  bool stop_ = false;
};

// One aligned read request.
struct ReadRequest {
  uint64_t off;  // multiple of align
  uint32_t len;  // multiple of align
  uint8_t* dst;  // aligned to align
};

// Positioned reads (and whole-block writes) of one file, many in flight.
class ParallelReader {
 public:
  // How reads are issued: kThreads (the pool), kAio / kUring (O_DIRECT only:
  // from the calling thread through one Linux AIO context / io_uring ring).
  enum Engine { kThreads = 0, kAio = 1, kUring = 2 };
  // direct: open with O_DIRECT (std::invalid_argument when the file system
  // refuses it, e.g. tmpfs). threads: the queue depth.
  // engine kAio / kUring need direct (kThreads otherwise); kUring raises
  // std::invalid_argument where the kernel refuses io_uring.
  ParallelReader(const std::string& path, bool direct, int threads, size_t align, Engine engine = kThreads);
  ~ParallelReader();
  ParallelReader(const ParallelReader&) = delete;
  ParallelReader& operator=(const ParallelReader&) = delete;
  // Issues every request (in parallel); throws TierIOError naming the first
  // failure after all have finished (the buffers of failed requests are
  // undefined). Callers may overlap; background reads yield to the others.
  void read(const ReadRequest* r, int64_t n, bool background = false);
  // The same for writes (dst is the source); TierIOError on the first failure.
  void write(const ReadRequest* r, int64_t n);
  bool direct() const { return direct_; }
  Engine engine() const { return engine_; }
  int queue_depth() const { return pool_.threads(); }
  size_t align() const { return align_; }

 private:
  void io(const ReadRequest* r, int64_t n, bool write, bool background);
  // O_DIRECT: every request through one Linux AIO context, `depth` in flight,
  // from the calling thread; false when no context could be made (the pool
  // reads instead). Sets the first failure (errno, request) as io() reports it.
  bool io_async(const ReadRequest* r, int64_t n, bool write, int& first_err, int64_t& first_at);
  // io_uring: the same with a ring taken from rings_ (one per caller reading
  // at once, kept for reuse).
  void io_uring(const ReadRequest* r, int64_t n, int& first_err, int64_t& first_at);
  // One request with blocking calls from byte `done` on; the errno or 0.
  int io_sync(const ReadRequest& q, size_t done, bool write);
  std::string path_;
  int fd_ = -1;
  bool direct_;
  Engine engine_;
  size_t align_;
  IoPool pool_;
  struct Ring;
  std::mutex rings_mu_;
  std::vector<Ring*> rings_;  // idle rings (guarded by rings_mu_)
  Ring* take_ring();
  void give_ring(Ring* g);
};

}  // namespace embedlookup
