#include "direct_io.h"

#include <fcntl.h>
#include <linux/aio_abi.h>
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

ParallelReader::ParallelReader(const std::string& path, bool direct, int threads, size_t align, bool aio)
    : path_(path), direct_(direct), aio_(direct && aio), align_(align), pool_(threads < 1 ? 1 : threads) {
  if (align == 0 || (align & (align - 1))) throw std::invalid_argument("align: must be a power of two");
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd_ < 0) {
    const int e = errno;
    if (direct && e == EINVAL)
      throw std::invalid_argument("io: the file system of '" + path + "' does not support O_DIRECT (use io='pread')");
    throw TierIOError("tier '" + path + "': cannot open for reading: " + std::strerror(e), e);
  }
}

ParallelReader::~ParallelReader() {
  if (fd_ >= 0) ::close(fd_);
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
  if (!aio_ || write || !io_async(r, n, write, err, at)) {
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
