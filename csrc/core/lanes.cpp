// core/lanes.cpp: the lane pool (see lanes.h).
#include "lanes.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

#include "../cpu/blas.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FUSEDRNN_PAUSE() _mm_pause()
#else
#define FUSEDRNN_PAUSE() ((void)0)
#endif

namespace fusedrnn::lanes {

namespace {

class Pool {
 public:
  void run(int n, int64_t streams, void (*fn)(void*, int), void* ctx) {
    std::lock_guard<std::mutex> one(run_mutex_);
    if (static_cast<int64_t>(counters_size_) < streams) {
      counters_.reset(new std::atomic<int64_t>[streams]);
      counters_size_ = streams;
    }
    for (int64_t i = 0; i < streams; ++i) counters_[i].store(0, std::memory_order_relaxed);
    if (n <= 1) {
      cpu::WholeCalls whole;
      fn(ctx, 0);
      return;
    }
    if (pid_ != getpid()) {  // a forked child has none of the parent's threads: start afresh
      workers_.clear();      // (the parent's std::thread objects are leaked, not joined)
      pid_ = getpid();
    }
    while (static_cast<int>(workers_.size()) < n - 1) {
      const int lane = static_cast<int>(workers_.size()) + 1;
      workers_.push_back(new std::thread([this, lane] { work(lane); }));
    }
    const int saved = cpu::set_blas_num_threads(1);
    {
      std::lock_guard<std::mutex> g(m_);
      fn_ = fn;
      ctx_ = ctx;
      lanes_ = n;
      remaining_.store(n - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    {
      cpu::WholeCalls whole;
      fn(ctx, 0);
    }
    wait_for_zero();
    cpu::set_blas_num_threads(saved);
  }

  std::atomic<int64_t>* counters() { return counters_.get(); }

 private:
  void work(int lane) {
    uint64_t seen = 0;
    for (;;) {
      // spin briefly for the next run (consecutive calls), then sleep
      for (int i = 0; i < 20000 && generation_.load(std::memory_order_acquire) == seen; ++i)
        FUSEDRNN_PAUSE();
      // The run's generation and its parameters are read together, under the lock run() writes
      // them under: read apart, a worker left out of run k (lane >= its lane count) that read
      // generation k and was then descheduled until run k+1 had started would read k+1's lane
      // count, fn and ctx, do its lane of k+1, and then, seeing generation k+1 != k, do it a
      // second time (twice the counters, and possibly after run() had returned).
      void (*fn)(void*, int);
      void* ctx;
      int lanes;
      {
        std::unique_lock<std::mutex> g(m_);
        cv_.wait(g, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_relaxed);
        fn = fn_;
        ctx = ctx_;
        lanes = lanes_;
      }
      if (lane < lanes) {
        cpu::WholeCalls whole;
        fn(ctx, lane);
        remaining_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  void wait_for_zero() {
    for (int64_t i = 0; remaining_.load(std::memory_order_acquire) != 0; ++i) {
      if (i < 100000) {
        FUSEDRNN_PAUSE();
      } else {
        std::this_thread::yield();
      }
    }
  }

  std::mutex run_mutex_;  // one run at a time
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::thread*> workers_;  // never joined: the pool lives as long as the process
  pid_t pid_ = getpid();
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> remaining_{0};
  void (*fn_)(void*, int) = nullptr;
  void* ctx_ = nullptr;
  int lanes_ = 0;
  std::unique_ptr<std::atomic<int64_t>[]> counters_;
  int64_t counters_size_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: workers may outlive static destruction order
  return *p;
}

}  // namespace

void run(int n, int64_t streams, void (*fn)(void*, int), void* ctx) {
  pool().run(n, streams, fn, ctx);
}

std::atomic<int64_t>* done() { return pool().counters(); }

void wait_for(const std::atomic<int64_t>& counter, int64_t value) {
  for (int64_t i = 0; counter.load(std::memory_order_acquire) < value; ++i) {
    if (i < 100000) {
      FUSEDRNN_PAUSE();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace fusedrnn::lanes
