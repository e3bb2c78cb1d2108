#include "direct_io.h"

#include <fcntl.h>
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

ParallelReader::ParallelReader(const std::string& path, bool direct, int threads, size_t align)
    : path_(path), direct_(direct), align_(align), pool_(threads < 1 ? 1 : threads) {
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

void ParallelReader::io(const ReadRequest* r, int64_t n, bool write, bool background) {
  std::atomic<int> first_err{0};
  std::atomic<int64_t> first_at{-1};
  const std::function<void(int64_t)> one = [&](int64_t i) {
    const ReadRequest& q = r[i];
    size_t done = 0;
    int err = io_faults::take(write ? io_faults::kWrite : io_faults::kRead);
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
    if (err) {
      int zero = 0;
      if (first_err.compare_exchange_strong(zero, err)) first_at.store(i);
    }
  };
  pool_.run(n, one, background);
  if (const int e = first_err.load()) {
    const ReadRequest& q = r[first_at.load()];
    throw TierIOError("tier '" + path_ + "': " + (write ? "write" : "read") + " failed: " + std::strerror(e) + " (" + std::to_string(q.len) +
                          " bytes at offset " + std::to_string(q.off) + ")",
                      e);
  }
}

}  // namespace embedlookup
