#include "direct_io.h"

#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace embedlookup {

namespace io_faults {
namespace {
std::atomic<int64_t> g_left[3] = {{0}, {0}, {0}};
std::atomic<int> g_err[3] = {{0}, {0}, {0}};
}  // namespace

void inject(Op op, int64_t nth, int err) {
  g_err[op].store(err);
  g_left[op].store(nth < 0 ? 0 : nth);
}

int take(Op op) {
  if (g_left[op].load(std::memory_order_relaxed) == 0) return 0;
  // The call that brings the count from 1 to 0 fails; later ones do not.
  int64_t v = g_left[op].load();
  while (v > 0 && !g_left[op].compare_exchange_weak(v, v - 1)) {
  }
  return v == 1 ? g_err[op].load() : 0;
}
}  // namespace io_faults

IoPool::IoPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

IoPool::~IoPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

IoPool::Job* IoPool::pick_locked() {
  for (auto* q : {&fg_, &bg_}) {
    while (!q->empty() && q->front()->next >= q->front()->n) q->pop_front();  // all taken: its owner waits for it
    if (!q->empty()) return q->front();
  }
  return nullptr;
}

void IoPool::work() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    Job* j = nullptr;
    cv_.wait(lk, [&] { return stop_ || (j = pick_locked()) != nullptr; });
    if (stop_) return;
    const int64_t i = j->next++;
    lk.unlock();
    (*j->fn)(i);
    lk.lock();
    if (++j->done == j->n) done_cv_.notify_all();  // j is not touched again: its owner may return
  }
}

void IoPool::run(int64_t n, const std::function<void(int64_t)>& fn, bool background) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  Job job{&fn, n, 0, 0};
  std::deque<Job*>& q = background ? bg_ : fg_;
  std::unique_lock<std::mutex> lk(mu_);
  q.push_back(&job);
  cv_.notify_all();
  while (job.next < n) {
    const int64_t i = job.next++;
    lk.unlock();
    fn(i);
    lk.lock();
    ++job.done;
  }
  done_cv_.wait(lk, [&] { return job.done == n; });
  const auto it = std::find(q.begin(), q.end(), &job);  // still queued when no worker looked since its last index
  if (it != q.end()) q.erase(it);
}

ParallelReader::ParallelReader(const std::string& path, bool direct, int threads, size_t align, Engine engine)
    : path_(path), direct_(direct), engine_(direct ? engine : kThreads), align_(align), pool_(threads < 1 ? 1 : threads) {
  if (align == 0 || (align & (align - 1))) throw std::invalid_argument("align: must be a power of two");
  if (engine_ == kUring) {
    try {
      give_ring(take_ring());  // std::invalid_argument here where the kernel refuses io_uring
    } catch (...) {
      ::close(fd_);
      throw;
    }
  }
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd_ < 0) {
    const int e = errno;
    if (direct && e == EINVAL)
      throw std::invalid_argument("io: the file system of '" + path + "' does not support O_DIRECT (use io='pread')");
    throw TierIOError("tier '" + path + "': cannot open for reading: " + std::strerror(e), e);
  }
}


void ParallelReader::read(const ReadRequest* r, int64_t n, bool background) { io(r, n, false, background); }
void ParallelReader::write(const ReadRequest* r, int64_t n) { io(r, n, true, false); }

namespace {
// Linux native AIO through its system calls (no libaio needed): with O_DIRECT
// the kernel queues the requests itself, so one thread keeps `depth` of them
// in flight; no thread per request to wake (the pool's context switches and
// their CPU time, which a prefetch took from the step it overlaps).
long aio_setup(unsigned nr, aio_context_t* ctx) { return ::syscall(SYS_io_setup, nr, ctx); }
long aio_destroy(aio_context_t ctx) { return ::syscall(SYS_io_destroy, ctx); }
long aio_submit(aio_context_t ctx, long n, iocb** p) { return ::syscall(SYS_io_submit, ctx, n, p); }
long aio_getevents(aio_context_t ctx, long min_nr, long nr, io_event* ev) {
  return ::syscall(SYS_io_getevents, ctx, min_nr, nr, ev, nullptr);
}
}  // namespace

bool ParallelReader::io_async(const ReadRequest* r, int64_t n, bool write, int& first_err, int64_t& first_at) {
  const int depth = pool_.threads();
  aio_context_t ctx = 0;
  if (aio_setup(static_cast<unsigned>(depth), &ctx) < 0) return false;  // (aio-max-nr reached): the thread pool reads
  std::vector<iocb> cbs(static_cast<size_t>(n));
  std::vector<iocb*> pending;  // prepared, not yet taken by the kernel
  std::vector<io_event> ev(static_cast<size_t>(depth));
  int64_t next = 0, done = 0, inflight = 0;
  auto fail = [&](int64_t i, int e) {
    if (!first_err) {
      first_err = e;
      first_at = i;
    }
  };
  while (done < n) {
    while (next < n && inflight + static_cast<int64_t>(pending.size()) < depth) {
      const int64_t i = next++;
      if (const int e = io_faults::take(write ? io_faults::kWrite : io_faults::kRead)) {
        fail(i, e);
        ++done;
        continue;
      }
      iocb& cb = cbs[i];
      std::memset(&cb, 0, sizeof(cb));
      cb.aio_data = static_cast<uint64_t>(i);
      cb.aio_lio_opcode = write ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;
      cb.aio_fildes = static_cast<uint32_t>(fd_);
      cb.aio_buf = reinterpret_cast<uint64_t>(r[i].dst);
      cb.aio_nbytes = r[i].len;
      cb.aio_offset = static_cast<int64_t>(r[i].off);
      pending.push_back(&cb);
    }
    size_t sent = 0;
    while (sent < pending.size()) {
      const long k = aio_submit(ctx, static_cast<long>(pending.size() - sent), pending.data() + sent);
      if (k > 0) {
        sent += static_cast<size_t>(k);
        inflight += k;
      } else if (k < 0 && errno == EINTR) {
        continue;
      } else if (k < 0 && errno == EAGAIN && inflight > 0) {
        break;  // the kernel's queue is full: reap first, the rest go next round
      } else {  // this request is refused: it fails, the others go on
        fail(static_cast<int64_t>(pending[sent]->aio_data), k < 0 ? errno : EIO);
        ++done;
        ++sent;
      }
    }
    pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(sent));
    if (inflight == 0) continue;
    long got;
    do got = aio_getevents(ctx, 1, depth, ev.data());
    while (got < 0 && errno == EINTR);
    if (got < 0) {  // cannot happen with a valid context; wait for nothing more
      fail(next ? next - 1 : 0, errno);
      break;
    }
    for (long e = 0; e < got; ++e) {
      const int64_t i = static_cast<int64_t>(ev[e].data);
      const long long res = static_cast<long long>(ev[e].res);
      if (res < 0) {
        fail(i, static_cast<int>(-res));
      } else if (static_cast<uint64_t>(res) < r[i].len) {
        // short (the file's end inside the last block): the rest as the pool would
        if (const int er = io_sync(r[i], static_cast<size_t>(res), write)) fail(i, er);
      }
    }
    inflight -= got;
    done += got;
  }
  aio_destroy(ctx);
  return true;
}

// ------------------------------------------------------------------ io_uring
// One ring: its submission and completion queues mapped from the kernel
// (io_uring_setup(2)); used by one caller at a time. The caller owns the SQ
// tail and the CQ head; the kernel the SQ head and the CQ tail.
struct ParallelReader::Ring {
  int fd = -1;
  unsigned entries = 0;
  void* sq_map = nullptr;
  void* cq_map = nullptr;
  size_t sq_bytes = 0, cq_bytes = 0;
  io_uring_sqe* sqes = nullptr;
  size_t sqes_bytes = 0;
  unsigned *sq_tail = nullptr, *sq_mask = nullptr, *sq_array = nullptr;
  unsigned *cq_head = nullptr, *cq_tail = nullptr, *cq_mask = nullptr;
  io_uring_cqe* cqes = nullptr;

  explicit Ring(unsigned depth) {
    io_uring_params p;
    std::memset(&p, 0, sizeof(p));
    // COOP_TASKRUN: completions are processed when this thread next enters
    // the kernel, without interrupting it (kernels < 5.19 refuse the flag:
    // then none).
    p.flags = IORING_SETUP_COOP_TASKRUN;
    fd = static_cast<int>(::syscall(__NR_io_uring_setup, depth, &p));
    if (fd < 0 && errno == EINVAL) {
      std::memset(&p, 0, sizeof(p));
      fd = static_cast<int>(::syscall(__NR_io_uring_setup, depth, &p));
    }
    if (fd < 0) {
      const int e = errno;
      throw std::invalid_argument(std::string("io: this kernel refuses io_uring (") + std::strerror(e) +
                                  "; use io='aio' or io='direct')");
    }
    entries = p.sq_entries;
    sq_bytes = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_bytes = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    const bool single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single) sq_bytes = cq_bytes = std::max(sq_bytes, cq_bytes);
    sq_map = ::mmap(nullptr, sq_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (sq_map == MAP_FAILED) sq_map = nullptr;
    cq_map = single ? sq_map
                    : ::mmap(nullptr, cq_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
    if (cq_map == MAP_FAILED) cq_map = nullptr;
    sqes_bytes = p.sq_entries * sizeof(io_uring_sqe);
    void* s = ::mmap(nullptr, sqes_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    sqes = s == MAP_FAILED ? nullptr : static_cast<io_uring_sqe*>(s);
    if (!sq_map || !cq_map || !sqes) {
      const int e = errno;
      release();
      throw std::invalid_argument(std::string("io: cannot map an io_uring ring (") + std::strerror(e) + ")");
    }
    auto* sq = static_cast<uint8_t*>(sq_map);
    auto* cq = static_cast<uint8_t*>(cq_map);
    sq_tail = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sq_mask = reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sq_array = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    cq_head = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cq_tail = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cq_mask = reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
  }
  ~Ring() { release(); }
  void release() {
    if (sqes) ::munmap(sqes, sqes_bytes);
    if (cq_map && cq_map != sq_map) ::munmap(cq_map, cq_bytes);
    if (sq_map) ::munmap(sq_map, sq_bytes);
    if (fd >= 0) ::close(fd);
    sqes = nullptr;
    sq_map = cq_map = nullptr;
    fd = -1;
  }
  // Queues one request (the caller keeps at most `entries` unsubmitted).
  void push(int file, uint8_t op, const ReadRequest& q, uint64_t data) {
    const unsigned tail = *sq_tail;  // only this caller writes it
    const unsigned idx = tail & *sq_mask;
    io_uring_sqe& e = sqes[idx];
    std::memset(&e, 0, sizeof(e));
    e.opcode = op;
    e.fd = file;
    e.off = q.off;
    e.addr = reinterpret_cast<uint64_t>(q.dst);
    e.len = q.len;
    e.user_data = data;
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
  }
  // Submits `to_submit` queued requests and waits until `wait` completions
  // are there: the number the kernel took, or -errno.
  long enter(unsigned to_submit, unsigned wait) {
    const long k = ::syscall(__NR_io_uring_enter, fd, to_submit, wait, wait ? IORING_ENTER_GETEVENTS : 0u, nullptr, 0);
    return k < 0 ? -errno : k;
  }
};

ParallelReader::~ParallelReader() {
  for (Ring* g : rings_) delete g;
  if (fd_ >= 0) ::close(fd_);
}

ParallelReader::Ring* ParallelReader::take_ring() {
  {
    std::lock_guard<std::mutex> g(rings_mu_);
    if (!rings_.empty()) {
      Ring* r = rings_.back();
      rings_.pop_back();
      return r;
    }
  }
  return new Ring(static_cast<unsigned>(pool_.threads()));
}

void ParallelReader::give_ring(Ring* g) {
  std::lock_guard<std::mutex> lk(rings_mu_);
  rings_.push_back(g);
}

void ParallelReader::io_uring(const ReadRequest* r, int64_t n, int& first_err, int64_t& first_at) {
  struct Held {  // the ring goes back however this ends
    ParallelReader* p;
    Ring* g;
    ~Held() { p->give_ring(g); }
  } held{this, take_ring()};
  Ring& g = *held.g;
  const int64_t depth = std::min<int64_t>(g.entries, pool_.threads());
  // Completions waited for per system call: fewer wake-ups, while enough
  // requests stay queued at the device.
  const int64_t batch_wait = std::max<int64_t>(1, depth / 4);
  auto fail = [&](int64_t i, int e) {
    if (!first_err) {
      first_err = e;
      first_at = i;
    }
  };
  int64_t next = 0, done = 0, inflight = 0, queued = 0;  // queued: pushed, not yet taken by the kernel
  while (done < n) {
    while (next < n && inflight + queued < depth) {
      const int64_t i = next++;
      if (const int e = io_faults::take(io_faults::kRead)) {
        fail(i, e);
        ++done;
        continue;
      }
      g.push(fd_, IORING_OP_READ, r[i], static_cast<uint64_t>(i));
      ++queued;
    }
    if (inflight + queued == 0) continue;
    const unsigned wait = static_cast<unsigned>(std::min(inflight + queued, batch_wait));
    const long k = g.enter(static_cast<unsigned>(queued), wait);
    if (k >= 0) {
      queued -= k;
      inflight += k;
    } else if (k != -EINTR && k != -EAGAIN && k != -EBUSY) {
      // The ring itself failed (cannot happen with a valid ring): the
      // requests it did not take fail; wait for those it has.
      while (queued > 0) {  // take them back out of the SQ
        --queued;
        --*g.sq_tail;
        fail(next - 1, static_cast<int>(-k));
        ++done;
      }
      if (inflight == 0) break;
      while (g.enter(0, 1) == -EINTR) {
      }
    }
    unsigned head = *g.cq_head;
    const unsigned tail = __atomic_load_n(g.cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; ++head) {
      const io_uring_cqe& c = g.cqes[head & *g.cq_mask];
      const int64_t i = static_cast<int64_t>(c.user_data);
      if (c.res < 0) {
        fail(i, -c.res);
      } else if (static_cast<uint32_t>(c.res) < r[i].len) {
        // short (the file's end inside the last block): the rest as the pool would
        if (const int er = io_sync(r[i], static_cast<size_t>(c.res), false)) fail(i, er);
      }
      --inflight;
      ++done;
    }
    __atomic_store_n(g.cq_head, head, __ATOMIC_RELEASE);
  }
}

int ParallelReader::io_sync(const ReadRequest& q, size_t done, bool write) {
  int err = 0;
  while (!err && done < q.len) {
    const ssize_t got = write ? ::pwrite(fd_, q.dst + done, q.len - done, static_cast<off_t>(q.off + done))
                              : ::pread(fd_, q.dst + done, q.len - done, static_cast<off_t>(q.off + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      err = errno;
    } else if (got == 0) {
      if (write) {
        err = EIO;
      } else {  // the file's end inside the last block: the rest reads as zeros
        std::memset(q.dst + done, 0, q.len - done);
        done = q.len;
      }
    } else {
      done += static_cast<size_t>(got);
    }
  }
  return err;
}

void ParallelReader::io(const ReadRequest* r, int64_t n, bool write, bool background) {
  int err = 0;
  int64_t at = -1;
  if (n <= 0) return;
  // AIO for reads only: with AIO writes too, a training step's write-back
  // took 256 ms against the pool's 17 ms in one run here.
  if (engine_ == kUring && !write) {
    io_uring(r, n, err, at);
  } else if (engine_ != kAio || write || !io_async(r, n, write, err, at)) {
    std::atomic<int> first_err{0};
    std::atomic<int64_t> first_at{-1};
    const std::function<void(int64_t)> one = [&](int64_t i) {
      const int e0 = io_faults::take(write ? io_faults::kWrite : io_faults::kRead);
      const int e = e0 ? e0 : io_sync(r[i], 0, write);
      int zero = 0;
      if (e && first_err.compare_exchange_strong(zero, e)) first_at.store(i);
    };
    pool_.run(n, one, background);
    err = first_err.load();
    at = first_at.load();
  }
  if (err) {
    const ReadRequest& q = r[at];
    throw TierIOError("tier '" + path_ + "': " + (write ? "write" : "read") + " failed: " + std::strerror(err) + " (" +
                          std::to_string(q.len) + " bytes at offset " + std::to_string(q.off) + ")",
                      err);
  }
}

}  // namespace embedlookup
